"""The catalog as one immutable snapshot of column arrays (pure: numpy, no Redis).

A :class:`CatalogSnapshot` holds every catalogued item's columns, grouped by category,
plus optional model data (CF factors, co-visitation lists, tag sets) and columns derived
from them once per snapshot. Ranking reads nothing else item-side, so a request never
touches the network for items. ``serving/catalog.py`` keeps a current snapshot fresh
from Redis; offline replays (``analysis/evaluation.py``) build snapshots from rows.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from personalization.catalog_records import CatalogItem
from serving.context_trending import (
    ContextIndex,
    ItemContexts,
    build_index,
    item_contexts,
    update_index,
)
from serving.pacing import unpaced

__all__ = [
    "COUNT_FEATURES",
    "EMPTY_SNAPSHOT",
    "CatalogSnapshot",
    "ItemRow",
    "build_snapshot",
    "decay_factors",
    "most_trending",
    "row_from_features",
]

# The item_stats counts a row carries, in the order of ``ItemRow.counts``.
COUNT_FEATURES = ("views_1h", "views_24h", "carts_1h", "carts_24h", "purchases_1h", "purchases_24h")


_EMPTY_MATRIX = np.zeros((0, 0), dtype=np.float32)
_EMPTY_MASK = np.zeros(0, dtype=bool)
_EMPTY_VECTOR = np.zeros(0, dtype=np.float32)
_EMPTY_INT = np.zeros(0, dtype=np.int64)


def decay_factors(ref_ms: np.ndarray, now_ms: int, half_life_s: float) -> np.ndarray:
    """Vectorised ``flink_jobs.items.decayed_trending``: multiply a score by this."""
    age_ms = np.maximum(now_ms - ref_ms, 0).astype(np.float64)
    return np.exp2(-age_ms / (half_life_s * 1000.0))


def symmetric_neighbours(
    sources: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    n: int,
    pace: Callable[[], None] = unpaced,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Co-visitation lists by position, each pair in both directions, weights summed.

    The job stores a pair once, at the item interacted with later (the record of that
    interaction goes there; a record to the earlier item would cost the job one more
    exchange per pair): ``b``'s row lists ``a`` when users met ``a`` before ``b``. For an
    anchor ``a`` the candidates are the items met before *and* after it, so each stored
    pair also counts from the other side; a pair stored on both sides (rows of an older
    job version) sums. Returns ``{position: (neighbour positions, weights)}``: read-only
    views into two arrays of all the pairs (a copy per list cost ~10 ms per refresh of
    a 5,000-item catalog).
    """
    if not len(sources):
        return {}
    s = np.concatenate([sources, targets])
    d = np.concatenate([targets, sources])
    w = np.concatenate([weights, weights])
    pair = s * n + d
    order = np.argsort(pair, kind="stable")
    pair, w = pair[order], w[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    summed = np.add.reduceat(w, starts)
    s, d = pair[starts] // n, pair[starts] % n
    d.flags.writeable = False
    summed.flags.writeable = False
    bounds = np.flatnonzero(np.r_[True, s[1:] != s[:-1], True]).tolist()
    positions = s[bounds[:-1]].tolist()
    pace()
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k, position in enumerate(positions):
        lo, hi = bounds[k], bounds[k + 1]
        out[position] = (d[lo:hi], summed[lo:hi])
        if not k % _PACE_EVERY:
            pace()
    return out


# Items handled between two calls of a refresh's pace (serving/pacing.py): a call per
# item cost ~5 % of a refresh; 32 items of the loops below take well under the pacer's
# work slice.
_PACE_EVERY = 32


def _factor_matrix(
    index_of: Mapping[str, int],
    n: int,
    item_factors: Mapping[str, Sequence[float] | np.ndarray],
    pace: Callable[[], None],
) -> tuple[np.ndarray, np.ndarray]:
    """The float32 ``[n, f]`` matrix of the catalogued items' factors and its row mask
    (vectors of another width than the first are left out)."""
    width = len(next(iter(item_factors.values()), ()))
    positions: list[int] = []
    vectors: list[Sequence[float] | np.ndarray] = []
    for k, (item_id, vector) in enumerate(item_factors.items()):
        i = index_of.get(item_id)
        if i is not None and len(vector) == width:
            positions.append(i)
            vectors.append(vector)
        if not k % _PACE_EVERY:
            pace()
    matrix = np.zeros((n, width), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    if positions:
        # One conversion of all rows (float32 arrays, as the catalog keeps them, stack
        # in C); a row assignment per item was most of this function's time.
        matrix[positions] = np.array(vectors, dtype=np.float32).reshape(len(positions), width)
        mask[positions] = True
    return matrix, mask


def _covisitation_pairs(
    index_of: Mapping[str, int],
    covisitation: Mapping[str, tuple[Sequence[str], Sequence[float]]],
    pace: Callable[[], None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored pairs of the catalogued items as positions: (sources, targets,
    weights), without unknown neighbours, self-pairs and weights that are not > 0.
    Ids become positions with one C-level ``map`` per item's list; a Python loop over
    every pair (150,000 on a 5,000-item catalog) was most of a refresh's time."""
    get = index_of.get
    sources: list[int] = []
    counts: list[int] = []
    targets: list[int] = []
    weights: list[float] = []
    for k, (item_id, (neighbours, item_weights)) in enumerate(covisitation.items()):
        i = get(item_id)
        m = min(len(neighbours), len(item_weights))
        if i is not None and m:
            sources.append(i)
            counts.append(m)
            targets.extend(map(get, neighbours[:m], itertools.repeat(-1, m)))
            weights.extend(item_weights[:m])
        if not k % _PACE_EVERY:
            pace()
    source = np.repeat(np.array(sources, dtype=np.int64), counts)
    pace()
    target = np.array(targets, dtype=np.int64)
    pace()
    weight = np.array(weights, dtype=np.float64)
    keep = (target >= 0) & (target != source) & (weight > 0)
    return source[keep], target[keep], weight[keep]


@dataclass(frozen=True, slots=True)
class ItemRow:
    item_id: str
    category: str = ""
    price: float = 0.0
    trending_score: float = 0.0
    trending_ref_ms: int = 0
    last_event_ms: int = 0
    counts: tuple[int, ...] = (0,) * len(COUNT_FEATURES)
    # The item's catalog record (title, path, brand, tags, stock), None when it has none.
    meta: CatalogItem | None = None
    # Popularity per context value (serving/context_trending.py), strongest first.
    contexts: ItemContexts = ()

    @property
    def available(self) -> bool:
        """May be recommended (an item without a catalog record is assumed to be)."""
        return self.meta is None or self.meta.sellable

    @property
    def created_ms(self) -> int:
        return self.meta.created_ms if self.meta is not None else 0


@dataclass(frozen=True, eq=False)
class CatalogSnapshot:
    """Immutable column arrays of the catalog; items are grouped by category.

    Items of category code ``c`` are the contiguous range
    ``category_starts[c]:category_starts[c + 1]``.
    """

    item_ids: tuple[str, ...]
    categories: tuple[str, ...]  # code -> name
    category_codes: np.ndarray  # int32 [n]
    category_starts: np.ndarray  # int64 [n_categories + 1]
    price: np.ndarray  # float64 [n]
    trending_score: np.ndarray  # float64 [n], as of trending_ref_ms
    trending_ref_ms: np.ndarray  # int64 [n]
    last_event_ms: np.ndarray  # int64 [n]
    counts: np.ndarray  # int64 [n, len(COUNT_FEATURES)]
    built_ms: int = 0
    # Catalog metadata: may be recommended (bool [n]), creation time (int64 [n], 0 =
    # unknown) and the catalog records by item id (only items that have one).
    available: np.ndarray = field(default_factory=lambda: _EMPTY_MASK)
    created_ms: np.ndarray = field(default_factory=lambda: _EMPTY_INT)
    meta: Mapping[str, CatalogItem] = field(default_factory=dict)
    index_of: dict[str, int] = field(default_factory=dict)
    code_of: dict[str, int] = field(default_factory=dict)
    # Optional model data, empty when absent (then the sources using it add nothing).
    # See :meth:`with_models`. Rows follow ``item_ids``.
    item_factors: np.ndarray = field(default_factory=lambda: _EMPTY_MATRIX)  # float32 [n, f]
    factor_mask: np.ndarray = field(default_factory=lambda: _EMPTY_MASK)  # bool [n]
    # item position -> (neighbour positions int64 [m], weights float64 [m]), strongest first
    covisitation: Mapping[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    tag_matrix: np.ndarray = field(default_factory=lambda: _EMPTY_MATRIX)  # float32 [n, tags]
    # Derived from tag_matrix once, so a request's Jaccard costs one small matmul.
    tag_columns: np.ndarray = field(default_factory=lambda: _EMPTY_MATRIX)  # [tags, n], C order
    tag_sizes: np.ndarray = field(default_factory=lambda: _EMPTY_VECTOR)  # float32 [n]
    # Popularity per context: each position's pairs, and context key -> {position: score}
    # (serving/context_trending.py), kept up to date by the refresh, read by requests.
    contexts: tuple[ItemContexts, ...] = ()
    context_index: ContextIndex = field(default_factory=dict)
    # Per-snapshot derived columns (see :meth:`trending_relative`); not copied by replace.
    _derived: dict[tuple[str, float], np.ndarray] = field(
        default_factory=dict, init=False, repr=False
    )
    # Derived structures that are not one column (see :meth:`derived`).
    _objects: dict[str, object] = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def has_factors(self) -> bool:
        return self.item_factors.shape[0] == len(self.item_ids) and bool(self.factor_mask.any())

    def with_models(
        self,
        *,
        item_factors: Mapping[str, Sequence[float] | np.ndarray] | None = None,
        covisitation: Mapping[str, tuple[Sequence[str], Sequence[float]]] | None = None,
        item_tags: Mapping[str, Iterable[str]] | None = None,
        pace: Callable[[], None] = unpaced,
    ) -> CatalogSnapshot:
        """A copy carrying item factors, co-visitation lists and/or tag sets.

        Ids not in the catalog are ignored; ``None`` keeps what the snapshot has.
        """
        n = len(self.item_ids)
        changes: dict[str, object] = {}
        if item_factors is not None:
            matrix, mask = _factor_matrix(self.index_of, n, item_factors, pace)
            changes.update(item_factors=matrix, factor_mask=mask)
        if covisitation is not None:
            sources, targets, weights = _covisitation_pairs(self.index_of, covisitation, pace)
            changes["covisitation"] = symmetric_neighbours(sources, targets, weights, n, pace)
        if item_tags is not None:
            tags = sorted({t for ts in item_tags.values() for t in ts if t})
            col = {t: c for c, t in enumerate(tags)}
            tag_matrix = np.zeros((n, len(tags)), dtype=np.float32)
            for item_id, ts in item_tags.items():
                i = self.index_of.get(item_id)
                if i is not None:
                    for t in ts:
                        if t:
                            tag_matrix[i, col[t]] = 1.0
            changes.update(
                tag_matrix=tag_matrix,
                tag_columns=np.ascontiguousarray(tag_matrix.T),
                tag_sizes=tag_matrix.sum(axis=1),
            )
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def trending_relative(self, half_life_s: float) -> np.ndarray:
        """Trending scores decayed to one common time (the newest reference in the
        snapshot), computed once per snapshot.

        Decaying every score further to "now" multiplies them all by the same factor,
        which every use in ranking divides out again (scores are normalised by a
        maximum), so requests need no per-item exponentials.
        """
        key = ("trending", half_life_s)
        cached = self._derived.get(key)
        if cached is None:
            ref = int(self.trending_ref_ms.max()) if len(self.item_ids) else 0
            cached = self.trending_score * decay_factors(self.trending_ref_ms, ref, half_life_s)
            self._derived[key] = cached
        return cached

    def category_popularity(self, half_life_s: float) -> np.ndarray:
        """Each item's relative trending score over its category's best (0..1), cached."""
        key = ("category_popularity", half_life_s)
        cached = self._derived.get(key)
        if cached is None:
            trending = self.trending_relative(half_life_s)
            if len(self.item_ids) == 0:
                cached = np.zeros(0, dtype=np.float64)
            else:
                category_max = np.maximum.reduceat(trending, self.category_starts[:-1])
                item_max = category_max[self.category_codes]
                cached = np.divide(
                    trending, item_max, out=np.zeros_like(trending), where=item_max > 0
                )
            self._derived[key] = cached
        return cached

    def columns_changed(self) -> None:
        """Forget the derived columns. Serving never mutates a snapshot (refreshes build a
        new one); an offline replay that updates columns in place must call this."""
        self._derived.clear()

    def column(self, name: str, compute: Callable[[CatalogSnapshot], np.ndarray]) -> np.ndarray:
        """A derived per-item column, computed once per snapshot."""
        key = (name, 0.0)
        cached = self._derived.get(key)
        if cached is None:
            cached = self._derived[key] = compute(self)
        return cached

    def derived(self, name: str, compute: Callable[[CatalogSnapshot], object]) -> object:
        """A derived structure (e.g. the content index), computed once per snapshot."""
        cached = self._objects.get(name)
        if cached is None:
            cached = self._objects[name] = compute(self)
        return cached

    def adopt(self, previous: CatalogSnapshot, prefix: str) -> None:
        """Take over ``previous``'s derived structures named ``prefix...``: for a snapshot
        whose positions and inputs of those structures are unchanged (the refresh knows)."""
        for name, value in previous._objects.items():
            if name.startswith(prefix):
                self._objects.setdefault(name, value)

    def unavailable_positions(self) -> np.ndarray:
        """Positions of the items that must not be recommended, cached per snapshot."""
        key = ("unavailable", 0.0)
        cached = self._derived.get(key)
        if cached is None:
            if self.available.shape[0] == len(self.item_ids):
                cached = np.flatnonzero(~self.available)
            else:
                cached = np.empty(0, dtype=np.int64)
            self._derived[key] = cached
        return cached

    def category_indices(self, category: str) -> np.ndarray:
        """Positions of the items of one category (empty for an unknown category)."""
        code = self.code_of.get(category)
        if code is None:
            return np.empty(0, dtype=np.int64)
        return np.arange(self.category_starts[code], self.category_starts[code + 1])

    def row_category(self, item_id: str) -> str:
        return self.categories[self.category_codes[self.index_of[item_id]]]

    def with_updates(
        self, rows: Iterable[ItemRow], built_ms: int, pace: Callable[[], None] = unpaced
    ) -> CatalogSnapshot:
        """A copy with the numeric columns of existing items (same category) replaced."""
        price = self.price.copy()
        trending = self.trending_score.copy()
        trending_ref = self.trending_ref_ms.copy()
        last_event = self.last_event_ms.copy()
        counts = self.counts.copy()
        available = self.available.copy()
        created = self.created_ms.copy()
        meta = dict(self.meta)
        contexts: list[ItemContexts] = (
            list(self.contexts) if self.contexts else [()] * len(self.item_ids)
        )
        context_changes = []
        for row in rows:
            i = self.index_of[row.item_id]
            context_changes.append((i, contexts[i], row.contexts))
            contexts[i] = row.contexts
            price[i] = row.price
            trending[i] = row.trending_score
            trending_ref[i] = row.trending_ref_ms
            last_event[i] = row.last_event_ms
            counts[i] = row.counts
            available[i] = row.available
            created[i] = row.created_ms
            if row.meta is not None:
                meta[row.item_id] = row.meta
            else:
                meta.pop(row.item_id, None)
            pace()
        return dataclasses.replace(
            self,
            price=price,
            trending_score=trending,
            trending_ref_ms=trending_ref,
            last_event_ms=last_event,
            counts=counts,
            available=available,
            created_ms=created,
            meta=meta,
            built_ms=built_ms,
            contexts=tuple(contexts),
            context_index=update_index(self.context_index, context_changes),
        )

    def row(self, item_id: str) -> ItemRow | None:
        i = self.index_of.get(item_id)
        if i is None:
            return None
        return ItemRow(
            item_id=item_id,
            category=self.categories[self.category_codes[i]],
            price=float(self.price[i]),
            trending_score=float(self.trending_score[i]),
            trending_ref_ms=int(self.trending_ref_ms[i]),
            last_event_ms=int(self.last_event_ms[i]),
            counts=tuple(int(c) for c in self.counts[i]),
            meta=self.meta.get(item_id),
            contexts=self.contexts[i] if self.contexts else (),
        )


def build_snapshot(
    rows: Iterable[ItemRow], built_ms: int = 0, pace: Callable[[], None] = unpaced
) -> CatalogSnapshot:
    """Column arrays from rows (pure; ``pace`` is called between the columns, each one
    pass over the rows)."""
    ordered = sorted(rows, key=lambda r: (r.category, r.item_id))
    pace()
    categories = tuple(sorted({r.category for r in ordered}))
    code_of = {name: code for code, name in enumerate(categories)}
    codes = np.fromiter((code_of[r.category] for r in ordered), dtype=np.int32, count=len(ordered))
    starts = np.searchsorted(codes, np.arange(len(categories) + 1), side="left").astype(np.int64)
    pace()
    counts = np.array([r.counts for r in ordered], dtype=np.int64).reshape(
        len(ordered), len(COUNT_FEATURES)
    )
    pace()
    item_ids = tuple(r.item_id for r in ordered)
    columns: dict[str, object] = {}
    for name, dtype in (
        ("price", np.float64),
        ("trending_score", np.float64),
        ("trending_ref_ms", np.int64),
        ("last_event_ms", np.int64),
        ("available", bool),
        ("created_ms", np.int64),
    ):
        columns[name] = np.fromiter(
            (getattr(r, name) for r in ordered), dtype=dtype, count=len(ordered)
        )
        pace()
    meta = {r.item_id: r.meta for r in ordered if r.meta is not None}
    index_of = {item_id: i for i, item_id in enumerate(item_ids)}
    pace()
    contexts = tuple(r.contexts for r in ordered)
    context_index = build_index(contexts)
    pace()
    return CatalogSnapshot(
        item_ids=item_ids,
        categories=categories,
        category_codes=codes,
        category_starts=starts,
        counts=counts,
        built_ms=built_ms,
        meta=meta,
        index_of=index_of,
        code_of=code_of,
        contexts=contexts,
        context_index=context_index,
        **columns,  # type: ignore[arg-type]
    )


EMPTY_SNAPSHOT = build_snapshot(())


def row_from_features(item_id: str, values: dict[str, object]) -> ItemRow:
    def num(name: str) -> float:
        value = values.get(name)
        return float(value) if isinstance(value, int | float) else 0.0

    return ItemRow(
        item_id=item_id,
        category=str(values.get("category") or ""),
        price=num("price"),
        trending_score=num("trending_score"),
        trending_ref_ms=int(num("trending_ref_ms")),
        last_event_ms=int(num("last_event_ms")),
        counts=tuple(int(num(name)) for name in COUNT_FEATURES),
        contexts=item_contexts(values.get("context_keys"), values.get("context_scores")),
    )


def most_trending(
    rows: Sequence[ItemRow], limit: int, now_ms: int, half_life_s: float
) -> list[ItemRow]:
    """The ``limit`` rows with the highest trending score decayed to ``now_ms``."""
    if len(rows) <= limit:
        return list(rows)
    scores = np.array([r.trending_score for r in rows], dtype=np.float64)
    refs = np.array([r.trending_ref_ms for r in rows], dtype=np.int64)
    decayed = scores * decay_factors(refs, now_ms, half_life_s)
    keep = np.argpartition(-decayed, limit - 1)[:limit]
    return [rows[i] for i in keep]
