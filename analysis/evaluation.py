"""Offline replay evaluation: the streaming learners and the serving ranker, test-then-train.

Protocol (issue 3): events are replayed in event-time order. For each event, every
method ranks the catalog for the event's user *before* anything learns from it, with
every item the user has already interacted with excluded; the event's item counts as
a hit when it is in the top ``k`` (HitRate@k) and scores ``1 / log2(rank + 2)``
(NDCG@k with one relevant item). Then the event is learnt, by the same code the job
runs: :class:`flink_jobs.learning.OnlineMF`, :class:`flink_jobs.covisitation.CoVisitation`,
the per-user profile (:func:`flink_jobs.profile.apply_event`, for interests) and a
decayed popularity per item (the ``trending_score`` of ``flink_jobs.items``). Ranking
is :func:`serving.ranking.rank` over a :class:`serving.catalog.CatalogSnapshot` whose
columns (trending, item factors, co-visitation lists) are kept current in place, i.e.
exactly what serving would see with an instantly refreshed catalog.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flink_jobs import profile
from flink_jobs.covisitation import CoVisitation, CoVisitConfig
from flink_jobs.learning import LearnerConfig, OnlineMF, interaction_weight, rating_of
from personalization.decay import decay_factor
from personalization.events import Event, EventRejected, validate_event
from personalization.settings import FeatureSettings
from serving.catalog import CatalogSnapshot, ItemRow, build_snapshot
from serving.online_features import UserFeatures
from serving.ranking import RankingParams, rank
from traffic.replay import _movielens_genres, iter_events

__all__ = [
    "EvaluationResult",
    "MethodScore",
    "evaluate",
    "hit_and_ndcg",
    "load_events",
    "movielens_item_tags",
    "rating_of",
]


def hit_and_ndcg(ranked: Sequence[str], target: str, k: int) -> tuple[int, float]:
    """(1, 1/log2(rank+2)) when ``target`` is in the top ``k`` of ``ranked``, else (0, 0)."""
    for position, item in enumerate(ranked[:k]):
        if item == target:
            return 1, 1.0 / math.log2(position + 2)
    return 0, 0.0


@dataclass(slots=True)
class MethodScore:
    name: str
    events: int = 0
    hits: int = 0
    ndcg_sum: float = 0.0
    rank_seconds: float = 0.0

    def add(self, hit: int, gain: float) -> None:
        self.events += 1
        self.hits += hit
        self.ndcg_sum += gain

    @property
    def hit_rate(self) -> float:
        return self.hits / self.events if self.events else 0.0

    @property
    def ndcg(self) -> float:
        return self.ndcg_sum / self.events if self.events else 0.0

    @property
    def rank_us(self) -> float:
        return 1e6 * self.rank_seconds / self.events if self.events else 0.0


@dataclass(slots=True)
class EvaluationResult:
    k: int
    events: int = 0
    methods: dict[str, MethodScore] = field(default_factory=dict)
    seconds: float = 0.0
    learn_seconds: float = 0.0  # OnlineMF.learn_one only
    cf_updates: int = 0
    covisit_seconds: float = 0.0

    @property
    def cf_updates_per_s(self) -> float:
        return self.cf_updates / self.learn_seconds if self.learn_seconds else 0.0

    def table(self) -> str:
        lines = [
            f"{'method':<14} {'HitRate@' + str(self.k):>10} {'NDCG@' + str(self.k):>9} "
            f"{'rank µs/event':>14}"
        ]
        for m in self.methods.values():
            lines.append(f"{m.name:<14} {m.hit_rate:>10.4f} {m.ndcg:>9.4f} {m.rank_us:>14.0f}")
        return "\n".join(lines)


# --- data -----------------------------------------------------------------------------


def load_events(path: str | Path, limit: int | None = None) -> list[Event]:
    """Validated events of a replay file, in event-time order (stable)."""
    out = []
    for raw in iter_events(path, limit=limit, sort_by_time=True, demographics=False):
        try:
            out.append(validate_event(raw, now_ms=int(raw.get("event_time") or 0)))
        except EventRejected:
            continue
    return out


def movielens_item_tags(folder: str | Path) -> dict[str, list[str]]:
    """movie id → all its genres (lower case) from ``u.item``; {} if absent."""
    folder = Path(folder)
    item_file = folder / "u.item"
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
    """Co-visitation lists of a :class:`CoVisitation`, by catalog position, on demand."""

    def __init__(self, cv: CoVisitation, catalog: CatalogSnapshot, n: int) -> None:
        self._cv, self._catalog, self._n = cv, catalog, n

    def __getitem__(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        top = self._cv.neighbors(self._catalog.item_ids[position], self._n)
        if not top:
            raise KeyError(position)
        index_of = self._catalog.index_of
        return (
            np.fromiter((index_of[i] for i, _ in top), dtype=np.int64, count=len(top)),
            np.fromiter((w for _, w in top), dtype=np.float64, count=len(top)),
        )

    def __iter__(self) -> Iterator[int]:
        index_of = self._catalog.index_of
        return (index_of[i] for i in self._cv if i in index_of)

    def __len__(self) -> int:
        return len(self._cv.items)


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
) -> EvaluationResult:
    """Test-then-train replay of ``events`` (in order) for every ranking in ``methods``.

    ``popularity_half_life_s`` decays the per-item popularity (the catalog's trending
    score); ``math.inf`` (the default) keeps plain counts.
    """
    started = time.perf_counter()
    learner = learner or LearnerConfig()
    mf = OnlineMF(learner)
    cv = CoVisitation(covisit or CoVisitConfig())
    features = features or FeatureSettings()
    catalog = _catalog(events, learner.factors, item_tags)
    catalog = dataclasses.replace(
        catalog, covisitation=_LiveNeighbours(cv, catalog, cv.cfg.neighbors)
    )
    params = {
        name: dataclasses.replace(p, half_life_s=popularity_half_life_s, exploration_share=0.0)
        for name, p in methods.items()
    }
    result = EvaluationResult(k=k, methods={name: MethodScore(name) for name in methods})
    users: dict[str, profile.UserState] = {}
    interacted: dict[str, set[str]] = {}

    for event in events:
        item, user_id, t = event.item_id, event.user_id, event.event_time_ms
        weight = interaction_weight(event.event_type, rating_of(event))
        if not item or weight <= 0:
            continue
        state = users.get(user_id)
        if state is None:
            state = users[user_id] = profile.new_state(user_id)
        mine = interacted.setdefault(user_id, set())
        vector = mf.user_vector(user_id)
        user = UserFeatures(
            user_id=user_id,
            interests=profile.top_interests(state, features.max_interest_categories),
            interest_ref_ms=state.interest_ref_ms,
            recent_items=cv.recent(user_id),
            cf_vector=vector.tolist() if vector is not None else [],
        )
        for name, p in params.items():
            t0 = time.perf_counter()
            ranking = rank(user, catalog, k, t, exclude=mine, params=p)
            score = result.methods[name]
            score.rank_seconds += time.perf_counter() - t0
            score.add(*hit_and_ndcg([r.item_id for r in ranking.items], item, k))
        result.events += 1

        # --- learn the event (the job's code paths) ---
        t0 = time.perf_counter()
        mf.learn_one(user_id, item, weight, t)
        result.learn_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        cv.learn_one(user_id, item, weight, t)
        result.covisit_seconds += time.perf_counter() - t0
        profile.apply_event(state, event, features)
        mine.add(item)
        position = catalog.index_of[item]
        ref = int(catalog.trending_ref_ms[position])
        decay = decay_factor(t - ref, popularity_half_life_s) if t > ref else 1.0
        catalog.trending_score[position] = catalog.trending_score[position] * decay + 1.0
        catalog.trending_ref_ms[position] = max(t, ref)
        catalog.columns_changed()  # columns mutated in place: drop the derived ones
        _, dirty = mf.drain_dirty()
        for changed in dirty:
            i = catalog.index_of.get(changed)
            vec = mf.item_vector(changed)
            if i is not None and vec is not None:
                catalog.item_factors[i] = vec
                catalog.factor_mask[i] = True
    result.cf_updates = mf.updates
    result.seconds = time.perf_counter() - started
    return result
