"""The item catalog held in process, as numpy arrays for vectorised scoring.

The online-store writer keeps ``{project}:item_index``, a Redis sorted set of item ids
scored by the ``last_event_ms`` of the ``item_stats`` row it last wrote. A background
thread reads the index from its high-water mark (minus an overlap for rows written out
of order), fetches those rows with pipelined HMGETs of Feast's own hashes and merges
them. Each refresh builds a new immutable :class:`CatalogSnapshot` and swaps one
attribute, so request threads read a consistent snapshot without taking a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from feature_repo.names import ITEM_CF, ITEM_STATS
from personalization.feature_store import (
    decode_fields,
    feature_kinds,
    field_key,
    item_index_key,
    redis_key,
)
from personalization.settings import Settings
from serving.online_features import redis_client

log = logging.getLogger(__name__)

VIEW = ITEM_STATS
CF_VIEW = ITEM_CF
COUNT_FEATURES = ("views_1h", "views_24h", "carts_1h", "carts_24h", "purchases_1h", "purchases_24h")


_EMPTY_MATRIX = np.zeros((0, 0), dtype=np.float32)
_EMPTY_MASK = np.zeros(0, dtype=bool)
_EMPTY_VECTOR = np.zeros(0, dtype=np.float32)


def decay_factors(ref_ms: np.ndarray, now_ms: int, half_life_s: float) -> np.ndarray:
    """Vectorised ``flink_jobs.items.decayed_trending``: multiply a score by this."""
    age_ms = np.maximum(now_ms - ref_ms, 0).astype(np.float64)
    return np.exp2(-age_ms / (half_life_s * 1000.0))


@dataclass(frozen=True, slots=True)
class ItemRow:
    item_id: str
    category: str = ""
    price: float = 0.0
    trending_score: float = 0.0
    trending_ref_ms: int = 0
    last_event_ms: int = 0
    counts: tuple[int, ...] = (0,) * len(COUNT_FEATURES)


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
    # Per-snapshot derived columns (see :meth:`trending_relative`); not copied by replace.
    _derived: dict[tuple[str, float], np.ndarray] = field(
        default_factory=dict, init=False, repr=False
    )

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def has_factors(self) -> bool:
        return self.item_factors.shape[0] == len(self.item_ids) and bool(self.factor_mask.any())

    def with_models(
        self,
        *,
        item_factors: Mapping[str, Sequence[float]] | None = None,
        covisitation: Mapping[str, tuple[Sequence[str], Sequence[float]]] | None = None,
        item_tags: Mapping[str, Iterable[str]] | None = None,
    ) -> CatalogSnapshot:
        """A copy carrying item factors, co-visitation lists and/or tag sets.

        Ids not in the catalog are ignored; ``None`` keeps what the snapshot has.
        """
        n = len(self.item_ids)
        changes: dict[str, object] = {}
        if item_factors is not None:
            width = len(next(iter(item_factors.values()), ()))
            matrix = np.zeros((n, width), dtype=np.float32)
            mask = np.zeros(n, dtype=bool)
            for item_id, vector in item_factors.items():
                i = self.index_of.get(item_id)
                if i is not None and len(vector) == width:
                    matrix[i] = vector
                    mask[i] = True
            changes.update(item_factors=matrix, factor_mask=mask)
        if covisitation is not None:
            lists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            for item_id, (neighbours, weights) in covisitation.items():
                i = self.index_of.get(item_id)
                if i is None:
                    continue
                pairs = [
                    (self.index_of[nb], float(w))
                    for nb, w in zip(neighbours, weights, strict=False)
                    if nb in self.index_of and w > 0
                ]
                if pairs:
                    lists[i] = (
                        np.array([p for p, _ in pairs], dtype=np.int64),
                        np.array([w for _, w in pairs], dtype=np.float64),
                    )
            changes["covisitation"] = lists
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

    def category_indices(self, category: str) -> np.ndarray:
        """Positions of the items of one category (empty for an unknown category)."""
        code = self.code_of.get(category)
        if code is None:
            return np.empty(0, dtype=np.int64)
        return np.arange(self.category_starts[code], self.category_starts[code + 1])

    def row_category(self, item_id: str) -> str:
        return self.categories[self.category_codes[self.index_of[item_id]]]

    def with_updates(self, rows: Iterable[ItemRow], built_ms: int) -> CatalogSnapshot:
        """A copy with the numeric columns of existing items (same category) replaced."""
        price = self.price.copy()
        trending = self.trending_score.copy()
        trending_ref = self.trending_ref_ms.copy()
        last_event = self.last_event_ms.copy()
        counts = self.counts.copy()
        for row in rows:
            i = self.index_of[row.item_id]
            price[i] = row.price
            trending[i] = row.trending_score
            trending_ref[i] = row.trending_ref_ms
            last_event[i] = row.last_event_ms
            counts[i] = row.counts
        return dataclasses.replace(
            self,
            price=price,
            trending_score=trending,
            trending_ref_ms=trending_ref,
            last_event_ms=last_event,
            counts=counts,
            built_ms=built_ms,
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
        )


def build_snapshot(rows: Iterable[ItemRow], built_ms: int = 0) -> CatalogSnapshot:
    """Column arrays from rows (pure)."""
    ordered = sorted(rows, key=lambda r: (r.category, r.item_id))
    categories = tuple(sorted({r.category for r in ordered}))
    code_of = {name: code for code, name in enumerate(categories)}
    codes = np.fromiter((code_of[r.category] for r in ordered), dtype=np.int32, count=len(ordered))
    starts = np.searchsorted(codes, np.arange(len(categories) + 1), side="left").astype(np.int64)
    counts = np.array([r.counts for r in ordered], dtype=np.int64).reshape(
        len(ordered), len(COUNT_FEATURES)
    )
    item_ids = tuple(r.item_id for r in ordered)
    return CatalogSnapshot(
        item_ids=item_ids,
        categories=categories,
        category_codes=codes,
        category_starts=starts,
        price=np.array([r.price for r in ordered], dtype=np.float64),
        trending_score=np.array([r.trending_score for r in ordered], dtype=np.float64),
        trending_ref_ms=np.array([r.trending_ref_ms for r in ordered], dtype=np.int64),
        last_event_ms=np.array([r.last_event_ms for r in ordered], dtype=np.int64),
        counts=counts,
        built_ms=built_ms,
        index_of={item_id: i for i, item_id in enumerate(item_ids)},
        code_of=code_of,
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
    )


def most_trending(rows: Sequence[ItemRow], limit: int, now_ms: int, half_life_s: float) -> list:
    """The ``limit`` rows with the highest trending score decayed to ``now_ms``."""
    if len(rows) <= limit:
        return list(rows)
    scores = np.array([r.trending_score for r in rows], dtype=np.float64)
    refs = np.array([r.trending_ref_ms for r in rows], dtype=np.int64)
    decayed = scores * decay_factors(refs, now_ms, half_life_s)
    keep = np.argpartition(-decayed, limit - 1)[:limit]
    return [rows[i] for i in keep]


@dataclass(frozen=True, slots=True)
class CatalogHealth:
    size: int
    last_attempt_ms: int
    last_success_ms: int
    last_error: str
    consecutive_failures: int
    high_water_ms: int

    @property
    def ok(self) -> bool:
        return self.last_success_ms > 0 and self.consecutive_failures == 0


class ItemCatalog:
    """Items held in process, refreshed from Redis in a background thread."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        *,
        clock_ms: object = None,
    ) -> None:
        cfg = settings.serving
        self._project = settings.feast.project
        self._index_key = item_index_key(self._project)
        self._client = client if client is not None else redis_client(settings)
        self._refresh_s = cfg.catalog_refresh_s
        self._capacity = cfg.catalog_size
        self._overlap_ms = int(cfg.catalog_index_overlap_s * 1000)
        self._full_resync_ms = int(cfg.catalog_full_resync_s * 1000)
        self._batch = max(1, cfg.catalog_fetch_batch)
        self._half_life_s = settings.features.trending_half_life_s
        self._names = tuple(feature_kinds(VIEW))
        # The item's CF factors live in view item_cf of the same Redis hash: one HMGET.
        self._fields = [field_key(VIEW, name) for name in self._names]
        self._fields.append(field_key(CF_VIEW, "cf_vector"))
        # Model data per item, attached to every snapshot (see CatalogSnapshot.with_models).
        self._factors: dict[str, list[float]] = {}
        self._covisit: dict[str, tuple[list[str], list[float]]] = {}
        self._now_ms = clock_ms if callable(clock_ms) else lambda: int(time.time() * 1000)

        self._snapshot: CatalogSnapshot = EMPTY_SNAPSHOT
        self._rows: dict[str, ItemRow] = {}  # owned by the refreshing thread
        self._indexed: dict[str, float] = {}  # index score of each fetched row
        self._high_water_ms = 0
        self._last_full_ms = 0
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_attempt_ms = 0
        self._last_success_ms = 0
        self._last_error = ""
        self._failures = 0

    # --- readers (any thread, lock-free) --------------------------------------------

    @property
    def snapshot(self) -> CatalogSnapshot:
        return self._snapshot

    def health(self) -> CatalogHealth:
        return CatalogHealth(
            size=len(self._snapshot),
            last_attempt_ms=self._last_attempt_ms,
            last_success_ms=self._last_success_ms,
            last_error=self._last_error,
            consecutive_failures=self._failures,
            high_water_ms=self._high_water_ms,
        )

    # --- refresh --------------------------------------------------------------------

    def refresh_once(self) -> int:
        """One incremental (or periodic full) refresh; returns rows read.

        Raises ``redis.RedisError`` on failure (the background loop records it).
        """
        with self._refresh_lock:
            now_ms = self._now_ms()
            self._last_attempt_ms = now_ms
            try:
                read = self._refresh_locked(now_ms)
            except redis.RedisError as exc:
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                raise
            self._failures = 0
            self._last_error = ""
            self._last_success_ms = now_ms
            return read

    def _refresh_locked(self, now_ms: int) -> int:
        full = self._last_full_ms == 0 or now_ms - self._last_full_ms >= self._full_resync_ms
        low = -math.inf if full else float(self._high_water_ms - self._overlap_ms)
        fresh: dict[str, ItemRow] = {}
        gone: list[str] = []
        seen: dict[str, float] = {}
        high_water = self._high_water_ms
        # Page by score, not by rank: members whose score rises while we page move
        # behind us and shift ranks, which would make a rank offset skip members.
        offset = 0  # members already read that carry exactly the score ``low``
        while True:
            page: list[tuple[bytes, float]] = self._client.zrangebyscore(  # type: ignore[assignment]
                self._index_key, low, "+inf", start=offset, num=self._batch, withscores=True
            )
            if not page:
                break
            last_score = page[-1][1]
            high_water = max(high_water, int(last_score))
            same = sum(1 for _, score in page if score == last_score)
            if last_score == low:
                offset += same
            else:
                low, offset = last_score, same
            # The overlap window re-lists recently indexed items on every refresh; a
            # member whose score did not move since we fetched it has no newer row, so
            # only new (member, score) pairs cost an HMGET (all of them on a full pass).
            ids = []
            for member, score in page:
                item_id = member.decode() if isinstance(member, bytes) else str(member)
                seen[item_id] = score
                if full or self._indexed.get(item_id) != score:
                    ids.append(item_id)
            if ids:
                with self._client.pipeline(transaction=False) as pipe:
                    for item_id in ids:
                        key = redis_key(self._project, VIEW, item_id)
                        pipe.execute_command("HMGET", key, *self._fields)
                    replies = pipe.execute()
                for item_id, values in zip(ids, replies, strict=True):
                    if all(v is None for v in values):
                        gone.append(item_id)  # indexed but the row expired or was deleted
                        continue
                    features = decode_fields(VIEW, self._names, values[:-1])
                    fresh[item_id] = row_from_features(item_id, features)
                    self._remember_models(item_id, features, values[-1])
            if len(page) < self._batch:
                break
        self._high_water_ms = high_water
        if full:
            self._indexed = seen
            self._last_full_ms = now_ms
            self._install(fresh, now_ms, rebuild=True)
            return len(fresh)
        self._indexed.update(seen)
        changed = {i: row for i, row in fresh.items() if self._rows.get(i) != row}
        removed = [i for i in gone if i in self._rows]
        if not changed and not removed:
            return len(fresh)
        rows = dict(self._rows)
        for item_id in removed:
            rows.pop(item_id, None)
        rows.update(changed)
        snapshot = self._snapshot
        in_place = not removed and all(
            i in snapshot.index_of and snapshot.row_category(i) == row.category
            for i, row in changed.items()
        )
        self._install(rows, now_ms, rebuild=not in_place, changed=changed)
        return len(fresh)

    def _remember_models(
        self, item_id: str, features: dict[str, object], cf_raw: bytes | None
    ) -> None:
        neighbours = features.get("covisit_items")
        if isinstance(neighbours, list) and neighbours:
            scores = features.get("covisit_scores")
            self._covisit[item_id] = (neighbours, list(scores) if isinstance(scores, list) else [])
        if cf_raw:
            vector = decode_fields(CF_VIEW, ("cf_vector",), [cf_raw]).get("cf_vector")
            if vector:
                self._factors[item_id] = vector

    def _install(
        self,
        rows: dict[str, ItemRow],
        now_ms: int,
        *,
        rebuild: bool,
        changed: dict[str, ItemRow] | None = None,
    ) -> None:
        """Swap in a new snapshot (copy-on-write: readers keep the one they hold)."""
        if len(rows) > self._capacity:
            kept = most_trending(list(rows.values()), self._capacity, now_ms, self._half_life_s)
            rows = {r.item_id: r for r in kept}
            rebuild = True
        self._rows = rows
        if rebuild or changed is None:
            self._snapshot = build_snapshot(rows.values(), built_ms=now_ms)
        else:
            # Same items in the same categories: copy the columns and patch changed
            # rows, which costs far less than re-sorting the whole catalog.
            self._snapshot = self._snapshot.with_updates(changed.values(), built_ms=now_ms)
        if self._factors or self._covisit:
            self._snapshot = self._snapshot.with_models(
                item_factors=self._factors or None, covisitation=self._covisit or None
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh_once()
            except redis.RedisError as exc:
                log.warning("catalog refresh failed: %s", exc)
            except Exception:  # keep refreshing whatever a bad row did
                log.exception("catalog refresh crashed")
                self._failures += 1
            self._stop.wait(self._refresh_s)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="catalog-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
