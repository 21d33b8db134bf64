"""The item catalog held in process, refreshed from Redis by a background thread.

The online-store writer keeps ``{project}:item_index``, a Redis sorted set of item ids
scored by the ``last_event_ms`` of the ``item_stats`` row it last wrote, and its catalog
consumer ``{project}:catalog_index``, scored by the time it applied an item's catalog
record (``writer/catalog.py``). A background thread reads each index from its own
high-water mark (minus an overlap for rows written out of order), fetches those items
with pipelined HMGETs of Feast's own hashes (item_stats, item_cf and item_catalog
fields in one) and merges them. An item's category is its events' category when it has
events (what users' interests are keyed by), else its catalog leaf category.

Each refresh builds a new immutable :class:`CatalogSnapshot` (the pure column arrays of
``serving/catalog_snapshot.py``) and swaps one attribute, so request threads read a
consistent snapshot without taking a lock.

The snapshot's names are re-exported here because callers have always found them here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis

from feature_repo.names import ITEM_CATALOG, ITEM_CF, ITEM_STATS
from personalization.catalog_records import item_from_features
from personalization.feature_store import (
    catalog_index_key,
    decode_fields,
    feature_kinds,
    field_key,
    item_index_key,
    redis_key,
)
from personalization.redis_client import REDIS_ERRORS, redis_client
from personalization.settings import Settings
from personalization.thread_names import NamedThread
from serving.catalog_snapshot import (
    COUNT_FEATURES,
    EMPTY_SNAPSHOT,
    CatalogSnapshot,
    ItemRow,
    build_snapshot,
    decay_factors,
    most_trending,
    row_from_features,
)
from serving.cold_start import content_weights
from serving.item_content import CONTENT_INDEX, item_content
from serving.pacing import Pacer, unpaced

__all__ = [
    "COUNT_FEATURES",
    "EMPTY_SNAPSHOT",
    "CatalogHealth",
    "CatalogSnapshot",
    "ItemCatalog",
    "ItemRow",
    "build_snapshot",
    "decay_factors",
    "most_trending",
    "row_from_features",
]

log = logging.getLogger(__name__)

VIEW = ITEM_STATS
CF_VIEW = ITEM_CF
META_VIEW = ITEM_CATALOG


class _IndexCursor:
    """Where the refresh is in one sorted-set index: its high-water mark and the score
    of every member fetched (owned by the refreshing thread)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.high_water_ms = 0
        self.indexed: dict[str, float] = {}


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
        self._cursors = (
            _IndexCursor(item_index_key(self._project)),
            _IndexCursor(catalog_index_key(self._project)),
        )
        # Its own pool with the refresh's timeout (serving.catalog_read_timeout_s), off
        # the request path: a page of item rows takes longer than a request may wait.
        # A pool it made is its own to close (stop); a client it was given is not.
        self._owns_client = client is None
        self._client = (
            client
            if client is not None
            else redis_client(
                settings.redis, request_path=False, timeout_s=cfg.catalog_read_timeout_s
            )
        )
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
        # The item's catalog record (title, path, brand, tags, stock) is in the same hash.
        self._meta_names = tuple(feature_kinds(META_VIEW))
        self._fields.extend(field_key(META_VIEW, name) for name in self._meta_names)
        self._content_weights = content_weights(settings)
        # Model data per item, attached to every snapshot (see CatalogSnapshot.with_models).
        self._factors: dict[str, np.ndarray] = {}
        self._covisit: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {}
        self._models_every_ms = int(cfg.catalog_models_refresh_s * 1000)
        self._models_built_ms = 0
        # Rows read since the models were last built (their models may differ).
        self._models_pending = False
        self._now_ms = clock_ms if callable(clock_ms) else lambda: int(time.time() * 1000)
        # The background refresh gives the GIL back to the request loop at short
        # intervals (serving/pacing.py; a rest of 0 never rests); a refresh called
        # directly runs unpaced.
        self._pacer = Pacer(cfg.catalog_refresh_work_ms / 1000, cfg.catalog_refresh_rest_ms / 1000)

        self._snapshot: CatalogSnapshot = EMPTY_SNAPSHOT
        self._rows: dict[str, ItemRow] = {}  # owned by the refreshing thread
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
            high_water_ms=self._cursors[0].high_water_ms,
        )

    # --- refresh --------------------------------------------------------------------

    def refresh_once(
        self, pace: Callable[[], None] = unpaced, *, defer_models: bool = False
    ) -> int:
        """One incremental (or periodic full) refresh; returns rows read. ``pace`` is
        called inside its loops (the background thread's :class:`Pacer`). With
        ``defer_models`` (the background thread), a refresh that moves no item keeps
        the snapshot's CF factors and co-visitation lists unless
        ``serving.catalog_models_refresh_s`` has passed since they were built.

        Raises ``redis.RedisError`` on failure (the background loop records it).
        """
        with self._refresh_lock:
            now_ms = self._now_ms()
            self._last_attempt_ms = now_ms
            try:
                read = self._refresh_locked(now_ms, pace, defer_models)
            except REDIS_ERRORS as exc:
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                raise
            self._failures = 0
            self._last_error = ""
            self._last_success_ms = now_ms
            return read

    def _changed_ids(
        self, cursor: _IndexCursor, full: bool, pace: Callable[[], None]
    ) -> tuple[list[str], dict[str, float]]:
        """Ids whose index score moved since they were fetched (all on a full pass), and
        the scores seen; advances the cursor's high-water mark."""
        low = -math.inf if full else float(cursor.high_water_ms - self._overlap_ms)
        ids: list[str] = []
        seen: dict[str, float] = {}
        high_water = cursor.high_water_ms
        # Page by score, not by rank: members whose score rises while we page move
        # behind us and shift ranks, which would make a rank offset skip members.
        offset = 0  # members already read that carry exactly the score ``low``
        while True:
            page: list[tuple[bytes, float]] = self._client.zrangebyscore(  # type: ignore[assignment]
                cursor.key, low, "+inf", start=offset, num=self._batch, withscores=True
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
            for member, score in page:
                item_id = member.decode() if isinstance(member, bytes) else str(member)
                seen[item_id] = score
                if full or cursor.indexed.get(item_id) != score:
                    ids.append(item_id)
            pace()
            if len(page) < self._batch:
                break
        cursor.high_water_ms = high_water
        return ids, seen

    def _refresh_locked(
        self, now_ms: int, pace: Callable[[], None], defer_models: bool = False
    ) -> int:
        full = self._last_full_ms == 0 or now_ms - self._last_full_ms >= self._full_resync_ms
        wanted: dict[str, None] = {}
        seen_by_cursor = []
        for cursor in self._cursors:
            ids, seen = self._changed_ids(cursor, full, pace)
            wanted.update(dict.fromkeys(ids))
            seen_by_cursor.append(seen)
        fresh: dict[str, ItemRow] = {}
        gone: list[str] = []
        ids = list(wanted)
        n_stats = len(self._names)
        for lo in range(0, len(ids), self._batch):
            chunk = ids[lo : lo + self._batch]
            with self._client.pipeline(transaction=False) as pipe:
                for item_id in chunk:
                    key = redis_key(self._project, VIEW, item_id)
                    pipe.execute_command("HMGET", key, *self._fields)
                replies = pipe.execute()
            for item_id, values in zip(chunk, replies, strict=True):
                if all(v is None for v in values):
                    gone.append(item_id)  # indexed but the row expired or was deleted
                    continue
                features = decode_fields(VIEW, self._names, values[:n_stats])
                meta = item_from_features(
                    item_id, decode_fields(META_VIEW, self._meta_names, values[n_stats + 1 :])
                )
                row = row_from_features(item_id, features)
                if meta is not None:
                    # Events name the category users' interests are keyed by; an item
                    # no event has reached yet takes its catalog leaf category.
                    row = dataclasses.replace(
                        row, category=row.category or meta.category, meta=meta
                    )
                fresh[item_id] = row
                self._remember_models(item_id, features, values[n_stats])
                pace()
        if full:
            for cursor, seen in zip(self._cursors, seen_by_cursor, strict=True):
                cursor.indexed = seen
            self._last_full_ms = now_ms
            self._install(fresh, now_ms, rebuild=True, pace=pace)
            return len(fresh)
        for cursor, seen in zip(self._cursors, seen_by_cursor, strict=True):
            cursor.indexed.update(seen)
        changed = {i: row for i, row in fresh.items() if self._rows.get(i) != row}
        removed = [i for i in gone if i in self._rows]
        if not changed and not removed:
            if self._models_pending and self._models_due(now_ms, defer_models):
                # Models read (or deferred) since they were built, and no row moved.
                previous = self._snapshot
                snapshot = self._with_models(previous, now_ms, pace)
                snapshot.adopt(previous, CONTENT_INDEX)  # no item or record changed
                self._snapshot = snapshot
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
        self._install(
            rows,
            now_ms,
            rebuild=not in_place,
            changed=changed,
            pace=pace,
            defer_models=defer_models,
        )
        return len(fresh)

    def _remember_models(
        self, item_id: str, features: dict[str, object], cf_raw: bytes | None
    ) -> None:
        # A fetched item's models may have moved with its row unchanged (its item_cf
        # row lands after the item_stats row the index is scored by): the next
        # refresh builds them when due even if no row changes.
        self._models_pending = True
        neighbours = features.get("covisit_items")
        if isinstance(neighbours, list) and neighbours:
            scores = features.get("covisit_scores")
            # Tuples: of strings or floats only, the cyclic GC stops tracking them once
            # collected (lists it walks on every full collection: 10,000 of them on a
            # 5,000-item catalog made a full collection, a pause of the request loop,
            # take 7-11 ms instead of 0.5-2).
            self._covisit[item_id] = (
                tuple(neighbours),
                tuple(scores) if isinstance(scores, list) else (),
            )
        if cf_raw:
            vector = decode_fields(CF_VIEW, ("cf_vector",), [cf_raw]).get("cf_vector")
            if vector:
                # As float32 once, here: the snapshot's factor matrix then stacks the
                # catalog's arrays in C (serving/catalog_snapshot.py, _factor_matrix).
                self._factors[item_id] = np.asarray(vector, dtype=np.float32)

    def _install(
        self,
        rows: dict[str, ItemRow],
        now_ms: int,
        *,
        rebuild: bool,
        changed: dict[str, ItemRow] | None = None,
        pace: Callable[[], None] = unpaced,
        defer_models: bool = False,
    ) -> None:
        """Swap in a new snapshot (copy-on-write: readers keep the one they hold)."""
        if len(rows) > self._capacity:
            kept = most_trending(list(rows.values()), self._capacity, now_ms, self._half_life_s)
            rows = {r.item_id: r for r in kept}
            rebuild = True
        self._rows = rows
        # Readers see only the finished snapshot (models and content index included).
        previous = self._snapshot
        if rebuild or changed is None:
            snapshot = build_snapshot(rows.values(), built_ms=now_ms, pace=pace)
        else:
            # Same items in the same categories: copy the columns and patch changed
            # rows, which costs far less than re-sorting the whole catalog.
            snapshot = self._snapshot.with_updates(changed.values(), built_ms=now_ms, pace=pace)
        # Patched in place, the snapshot keeps every item at its position, so the
        # previous snapshot's factors and co-visitation lists still line up with it:
        # they may wait for catalog_models_refresh_s. Building them is half of a
        # refresh of a busy catalog (5,000 items with 30 neighbours each, 1,500 of
        # them changed: ~65 of ~130 ms of CPU), and their meaning moves slowly
        # (decayed pair weights, factors learnt over many events).
        # (Not built: they stay pending, as every fetch of a row marks them.)
        if rebuild or changed is None or self._models_due(now_ms, defer_models):
            snapshot = self._with_models(snapshot, now_ms, pace)
        # The content index (cold start, content similarity, SimilarItems) is built here,
        # in the refresh thread, not by the first request that needs it; a patch that
        # moved no item and changed no catalog record keeps the previous one.
        if (
            not rebuild
            and changed is not None
            and all(previous.meta.get(i) == row.meta for i, row in changed.items())
        ):
            snapshot.adopt(previous, CONTENT_INDEX)
        item_content(snapshot, self._content_weights)
        self._snapshot = snapshot

    def _models_due(self, now_ms: int, defer_models: bool) -> bool:
        return not defer_models or now_ms - self._models_built_ms >= self._models_every_ms

    def _with_models(
        self, snapshot: CatalogSnapshot, now_ms: int, pace: Callable[[], None]
    ) -> CatalogSnapshot:
        """``snapshot`` with the factors and co-visitation lists of the rows read so far
        (called once the refresh has read its rows: pending again only from the next)."""
        self._models_built_ms = now_ms
        self._models_pending = False
        if not (self._factors or self._covisit):
            return snapshot
        return snapshot.with_models(
            item_factors=self._factors or None,
            covisitation=self._covisit or None,
            pace=pace,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._pacer.restart()
                self.refresh_once(self._pacer, defer_models=True)
            except REDIS_ERRORS as exc:
                log.warning("catalog refresh failed: %s", exc)
            except Exception:  # keep refreshing whatever a bad row did
                log.exception("catalog refresh crashed")
                self._failures += 1
            self._stop.wait(self._refresh_s)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = NamedThread(target=self._run, name="catalog-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._owns_client:
            # Disconnects the pool; a later refresh (start again) reconnects.
            self._client.close()
