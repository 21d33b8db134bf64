"""Offline replay evaluation: the streaming learners and the serving ranker, test-then-train.

Protocol (issue 3): events are replayed in event-time order. For each event, every
method ranks the catalog for the event's user *before* anything learns from it, with
every item the user has already interacted with excluded; the event's item counts as
a hit when it is in the top ``k`` (HitRate@k) and scores ``1 / log2(rank + 2)``
(NDCG@k with one relevant item). Then the event is learnt, by the same code the job
runs: its steps (``flink_jobs/steps.py``, wired in process by ``flink_jobs/local.py``):
the user profile, the item's popularity and co-visitation neighbours, the online MF.
The user is what serving would read (the job's ``user_profile`` row decoded by
``serving.online_features.features_from_row``, with the user's CF factors); ranking is
:func:`serving.ranking.rank` over a :class:`serving.catalog.CatalogSnapshot` whose
columns (trending, item factors, co-visitation lists) are kept current in place, i.e.
exactly what serving would see with an instantly refreshed catalog.

Besides HitRate@k and NDCG@k each method reports the catalog coverage of its top k (the
share of catalogued items shown at least once) and the share of each candidate source
among the items it showed (``RankedItem.source``). ``learned_v1`` methods rank with a
head trained test-then-train on the same stream (:mod:`analysis.blend_learner`).
``session_gap_s`` restricts the test to events whose user interacted within that gap
before (next item within a session, for logs of one-visit users); every event is still
learnt.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.blend_learner import BlendLearner
from flink_jobs import profile
from flink_jobs.covisitation import CoVisitConfig
from flink_jobs.learning import (
    LearnerConfig,
    PrequentialReport,
    interaction_weight,
    rating_of,
)
from flink_jobs.local import LocalPipeline
from personalization.events import Event, EventRejected, validate_event
from personalization.settings import (
    FeatureSettings,
    LearningSettings,
    PrivacySettings,
    Settings,
)
from serving.catalog import CatalogSnapshot, ItemRow, build_snapshot
from serving.online_features import UserFeatures, features_from_row
from serving.ranking import LEARNED, RankedItem, RankingParams, rank
from traffic.replay import BadRows, EventReader, _movielens_genres, iter_events

__all__ = [
    "EvaluationResult",
    "MethodScore",
    "coverage",
    "evaluate",
    "hit_and_ndcg",
    "load_events",
    "movielens_item_tags",
    "rating_of",
    "source_shares",
]


def hit_and_ndcg(ranked: Sequence[str], target: str, k: int) -> tuple[int, float]:
    """(1, 1/log2(rank+2)) when ``target`` is in the top ``k`` of ``ranked``, else (0, 0)."""
    for position, item in enumerate(ranked[:k]):
        if item == target:
            return 1, 1.0 / math.log2(position + 2)
    return 0, 0.0


def coverage(shown: Collection[str], catalog_items: int) -> float:
    """Share of the catalog's items that were in some top k."""
    return len(shown) / catalog_items if catalog_items else 0.0


def source_shares(sources: Mapping[str, int]) -> dict[str, float]:
    """Each source's share of the items shown (they sum to 1), largest first."""
    total = sum(sources.values())
    if not total:
        return {}
    return {name: count / total for name, count in sorted(sources.items(), key=lambda p: -p[1])}


@dataclass(slots=True)
class MethodScore(PrequentialReport):
    """One ranking method's HitRate@k / NDCG@k (the job's prequential accumulator), the
    items and sources it showed, and the time it spent ranking."""

    name: str = ""
    rank_seconds: float = 0.0
    shown: set[str] = field(default_factory=set)
    sources: Counter[str] = field(default_factory=Counter)

    @property
    def rank_us(self) -> float:
        return 1e6 * self.rank_seconds / self.events if self.events else 0.0

    def add_shown(self, items: Sequence[RankedItem]) -> None:
        for item in items:
            self.shown.add(item.item_id)
            self.sources[item.source] += 1


@dataclass(slots=True)
class EvaluationResult:
    k: int
    events: int = 0
    catalog_items: int = 0
    methods: dict[str, MethodScore] = field(default_factory=dict)
    seconds: float = 0.0
    cf_updates: int = 0
    # The job's steps on every event: profile, popularity, co-visitation, both halves of
    # the online MF (with its prequential check) and the item-factor feed.
    steps_seconds: float = 0.0

    def coverage(self, method: str) -> float:
        return coverage(self.methods[method].shown, self.catalog_items)

    def table(self) -> str:
        k = str(self.k)
        lines = [
            f"{'method':<14} {'HitRate@' + k:>10} {'NDCG@' + k:>9} {'coverage@' + k:>11} "
            f"{'rank µs/event':>14}  sources shown"
        ]
        for m in self.methods.values():
            shares = ", ".join(f"{s} {v:.0%}" for s, v in source_shares(m.sources).items())
            lines.append(
                f"{m.name:<14} {m.hit_rate:>10.4f} {m.ndcg:>9.4f} "
                f"{self.coverage(m.name):>11.3f} {m.rank_us:>14.0f}  {shares}"
            )
        return "\n".join(lines)


# --- data -----------------------------------------------------------------------------


def load_events(
    path: str | Path, limit: int | None = None, reader: EventReader | None = None
) -> list[Event]:
    """Validated events of a replay file (any format ``traffic.replay`` reads, or
    through ``reader``, e.g. a mapped CSV), in event-time order (stable)."""
    out = []
    for raw in iter_events(
        path,
        limit=limit,
        sort_by_time=True,
        demographics=False,
        reader=reader,
        bad_rows=BadRows() if reader is not None else None,
    ):
        try:
            out.append(validate_event(raw, now_ms=int(raw.get("event_time") or 0)))
        except EventRejected:
            continue
    return out


def movielens_item_tags(folder: str | Path) -> dict[str, list[str]]:
    """movie id → all its genres (lower case) from ``u.item`` (MovieLens 100K) or
    ``movies.csv`` (MovieLens latest); {} if neither is there."""
    folder = Path(folder)
    item_file = folder / "u.item"
    movies = folder / "movies.csv"
    if not item_file.is_file() and movies.is_file():
        with movies.open(encoding="utf-8", newline="") as fh:
            return {
                rec["movieId"]: [
                    g.strip().lower()
                    for g in (rec.get("genres") or "").split("|")
                    if g.strip() and g.strip() != "(no genres listed)"
                ]
                for rec in csv.DictReader(fh)
            }
    if not item_file.is_file():
        return {}
    genres = [g.lower() for g in _movielens_genres(folder)]
    out: dict[str, list[str]] = {}
    with item_file.open(encoding="latin-1") as fh:
        for line in fh:
            fields = line.rstrip("\r\n").split("|")
            if len(fields) >= 5 + len(genres):
                flags = fields[5 : 5 + len(genres)]
                out[fields[0].strip()] = [g for g, f in zip(genres, flags, strict=True) if f == "1"]
    return out


# --- the live catalog -----------------------------------------------------------------


class _LiveNeighbours(Mapping[int, tuple[np.ndarray, np.ndarray]]):
    """The job's co-visitation neighbours (the item step's state), by catalog position,
    decayed to the replay's current time, on demand.

    The job stores each pair once, at the later item; like serving's catalog
    (``serving/catalog_snapshot.py``) this adds the other direction, summing the two.
    """

    def __init__(self, pipeline: LocalPipeline, catalog: CatalogSnapshot, n: int) -> None:
        self._pipeline, self._catalog, self._n = pipeline, catalog, n
        self.now_ms = 0

    def __getitem__(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        pipeline, index_of = self._pipeline, self._catalog.index_of
        item = self._catalog.item_ids[position]
        covisit = pipeline.item_step.covisit
        now, half_life = self.now_ms, covisit.half_life_s
        weights: dict[str, float] = {}
        state = pipeline.item_neighbors(item)
        if state is not None:
            weights.update(state.top(min(self._n, covisit.neighbors), now, half_life))
        for other in pipeline.linked_from.get(item, ()):
            holder = pipeline.item_neighbors(other)
            if holder is not None:
                weights[other] = weights.get(other, 0.0) + holder.weight_of(item, now, half_life)
        pairs = [(index_of[i], w) for i, w in weights.items() if i in index_of and w > 0]
        if not pairs:
            raise KeyError(position)
        return (
            np.fromiter((p for p, _ in pairs), dtype=np.int64, count=len(pairs)),
            np.fromiter((w for _, w in pairs), dtype=np.float64, count=len(pairs)),
        )

    def __iter__(self) -> Iterator[int]:
        index_of, pipeline = self._catalog.index_of, self._pipeline
        held = set(pipeline.neighbors.data) | set(pipeline.linked_from)
        return (index_of[i] for i in held if i in index_of)

    def __len__(self) -> int:
        return len(set(self._pipeline.neighbors.data) | set(self._pipeline.linked_from))


def _catalog(
    events: Sequence[Event], factors: int, item_tags: Mapping[str, Iterable[str]] | None
) -> CatalogSnapshot:
    categories: dict[str, str] = {}
    for e in events:
        if e.item_id and e.item_id not in categories:
            categories[e.item_id] = e.category
    base = build_snapshot(ItemRow(item_id=i, category=c) for i, c in categories.items())
    if item_tags:
        base = base.with_models(item_tags={i: item_tags.get(i, ()) for i in categories})
    n = len(base)
    return dataclasses.replace(
        base,
        item_factors=np.zeros((n, factors), dtype=np.float32),
        factor_mask=np.zeros(n, dtype=bool),
    )


def _user_features(pipeline: LocalPipeline, user_id: str, now_ms: int) -> UserFeatures | None:
    """What serving would read for the user: the job's row, decoded by serving's code."""
    state = pipeline.user_state(user_id)
    if state is None:
        return None
    row = profile.user_feature_row(state, pipeline.user_step.cfg)
    vector = pipeline.user_factors(user_id)
    if vector is not None:
        row["cf_vector"] = vector
    return features_from_row(user_id, row, None, now_ms)


# --- the replay -----------------------------------------------------------------------


def evaluate(
    events: Sequence[Event],
    methods: Mapping[str, RankingParams],
    *,
    k: int = 10,
    learner: LearnerConfig | None = None,
    covisit: CoVisitConfig | None = None,
    features: FeatureSettings | None = None,
    popularity_half_life_s: float = math.inf,
    item_tags: Mapping[str, Iterable[str]] | None = None,
    head: LearningSettings | None = None,
    session_gap_s: float = 0.0,
) -> EvaluationResult:
    """Test-then-train replay of ``events`` (in order) for every ranking in ``methods``.

    Every event is learnt by the job's steps (``flink_jobs/local.py``); the interactions
    (an item and a positive learning weight) are ranked first. ``popularity_half_life_s``
    is the item step's trending half-life; ``math.inf`` (the default) keeps plain counts.
    ``head`` configures the learner of ``learned_v1`` methods (default: the defaults);
    ``session_gap_s`` > 0 tests only events within that gap of the user's previous
    interaction.
    """
    started = time.perf_counter()
    learner = learner or LearnerConfig()
    features = (features or FeatureSettings()).model_copy(
        update={"trending_half_life_s": popularity_half_life_s}
    )
    # No retention: a dataset spans months of event time, and forgetting users inactive
    # for privacy.retention_days would measure the privacy setting, not the recommender.
    pipeline = LocalPipeline(
        Settings(features=features, privacy=PrivacySettings(retention_days=0)),
        learner=learner,
        covisit=covisit,
        keep_rows=False,
    )
    steps_seconds = 0.0
    catalog = _catalog(events, learner.factors, item_tags)
    neighbours = _LiveNeighbours(pipeline, catalog, pipeline.item_step.covisit.neighbors)
    catalog = dataclasses.replace(catalog, covisitation=neighbours)
    params = {
        name: dataclasses.replace(p, half_life_s=popularity_half_life_s, exploration_share=0.0)
        for name, p in methods.items()
    }
    result = EvaluationResult(
        k=k,
        catalog_items=len(catalog),
        methods={name: MethodScore(k, name=name) for name in methods},
    )
    head = head or LearningSettings()
    learners = {
        name: BlendLearner.from_settings(head, dict(p.weights), k)
        for name, p in params.items()
        if p.strategy == LEARNED
    }
    interacted: dict[str, set[str]] = {}
    interacted_at: dict[str, set[int]] = {}  # the same, as catalog positions
    last_interaction: dict[str, int] = {}
    gap_ms = session_gap_s * 1000.0

    for event in events:
        item, user_id, t = event.item_id, event.user_id, event.event_time_ms
        neighbours.now_ms = max(neighbours.now_ms, t)
        interaction = bool(item) and interaction_weight(event.event_type, rating_of(event)) > 0
        previous = last_interaction.get(user_id)
        tested = interaction and (gap_ms <= 0 or (previous is not None and t - previous <= gap_ms))
        if interaction:
            last_interaction[user_id] = t
        mine = interacted.setdefault(user_id, set())
        mine_at = interacted_at.setdefault(user_id, set())
        if tested:
            user = _user_features(pipeline, user_id, t)
            target = catalog.index_of[item]
            for name, p in params.items():
                blend = learners.get(name)
                t0 = time.perf_counter()
                ranking = rank(
                    user,
                    catalog,
                    k,
                    t,
                    exclude=mine,
                    params=p,
                    propensity=blend.head if blend is not None else None,
                )
                score = result.methods[name]
                score.rank_seconds += time.perf_counter() - t0
                score.add_hit(*hit_and_ndcg([r.item_id for r in ranking.items], item, k))
                score.add_shown(ranking.items)
                if blend is not None:
                    shown = [catalog.index_of[r.item_id] for r in ranking.items]
                    blend.learn(ranking, target, shown, mine_at)
            result.events += 1
        if interaction:
            mine.add(item)
            mine_at.add(catalog.index_of[item])

        # --- learn the event: the job's own steps ---
        pipeline.last_learned_item = ""
        t0 = time.perf_counter()
        pipeline.event(event)
        steps_seconds += time.perf_counter() - t0
        state = pipeline.item_state(item) if item else None
        position = catalog.index_of.get(item) if item else None
        if state is not None and position is not None:
            catalog.trending_score[position] = state.trending
            catalog.trending_ref_ms[position] = state.trending_ref_ms
        if pipeline.last_learned_item:
            i = catalog.index_of.get(pipeline.last_learned_item)
            vec = pipeline.item_factors(pipeline.last_learned_item)
            if i is not None and vec is not None:
                catalog.item_factors[i] = vec
                catalog.factor_mask[i] = True
        catalog.columns_changed()  # columns mutated in place: drop the derived ones
    result.cf_updates = pipeline.cf_updates
    result.steps_seconds = steps_seconds
    result.seconds = time.perf_counter() - started
    return result
