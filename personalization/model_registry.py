"""Model versions in Redis: published by the job, followed by serving, rolled back by ops.

Layout per model name (``<project>`` is the Feast project, so stacks never mix)::

    pz:<project>:model:{<name>}:versions  HASH  version id -> version record (JSON)
    pz:<project>:model:{<name>}:order     ZSET  version id scored by its creation time
    pz:<project>:model:{<name>}:active    STRING {"version", "pinned", "by", "at_ms"}
    pz:<project>:model:{<name>}:shards    HASH  shard -> newest version of that shard

A model trained by keyed shards (``personalization/model_versions.py``) publishes one
version per shard; the registry keeps the newest of each in ``shards`` and publishes
their example-weighted average as the model's version, so serving and ops only ever
see whole-model versions.

The braces are a Redis Cluster hash tag: the three keys of a model hash to one slot, so
the publish script (one EVAL over all three) also runs on a cluster. Keys of the layout
before the tag (``pz:<project>:model:<name>:...``) are renamed on first use of the model
on a single-node Redis.

The job publishes versions (through the ``feature_updates`` changelog and the
online-store writer, so a version is only published once its training examples are
checkpointed); a new version becomes active unless the active one is *pinned*. Rolling
back pins an earlier version; ``promote`` activates a version (default: the newest) and
unpins, so new versions are followed again. Serving polls the active pointer
(:class:`serving.propensity.ModelWatcher`) and swaps models between requests.

Publishing the same version id twice (a replay after a job restore) rewrites the same
record: harmless. Old versions beyond ``keep`` are pruned, never the active one.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass

import redis
import redis.cluster

from personalization.model_versions import ModelVersion, averaged, shard_of

# Atomic "publish and follow unless pinned": a rollback in between cannot be overridden.
_PUBLISH = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local active = redis.call('GET', KEYS[3])
local follow = true
if active then
  local pointer = cjson.decode(active)
  if pointer['pinned'] then follow = false end
  local current = redis.call('ZSCORE', KEYS[2], pointer['version'])
  if current and tonumber(current) > tonumber(ARGV[3]) then follow = false end
end
if follow then redis.call('SET', KEYS[3], ARGV[4]) end
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if excess > 0 then
  local keep_active = nil
  local now_active = redis.call('GET', KEYS[3])
  if now_active then keep_active = cjson.decode(now_active)['version'] end
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess - 1)) do
    if old ~= keep_active then
      redis.call('ZREM', KEYS[2], old)
      redis.call('HDEL', KEYS[1], old)
    end
  end
end
if follow then return 1 else return 0 end
"""


# Atomic "move the active pointer": the target is resolved and set in one step, so a
# version the job publishes meanwhile cannot slip between reading the pointer and moving
# it (a rollback would then step back from the version the operator saw, not the active
# one, or find the active version missing from a listing read a moment earlier).
# ARGV: mode ("previous" | "newest" | "exact"), version (exact only), pinned, by, at_ms.
# Returns {"ok", version set} or {"error", message}.
_MOVE = """
local raw = redis.call('GET', KEYS[3])
local current = false
if raw then current = cjson.decode(raw)['version'] end
local target
if ARGV[1] == 'exact' then
  target = ARGV[2]
elseif ARGV[1] == 'newest' then
  target = redis.call('ZRANGE', KEYS[2], -1, -1)[1]
  if not target then return {'error', 'has no versions'} end
else
  local rank = false
  if current then rank = redis.call('ZRANK', KEYS[2], current) end
  if not rank then return {'error', 'has no active version to roll back from'} end
  if rank == 0 then return {'error', current .. ' is the oldest kept version'} end
  target = redis.call('ZRANGE', KEYS[2], rank - 1, rank - 1)[1]
end
-- In the order but without a record (a key half migrated, a record deleted by hand):
-- never point at it.
if redis.call('HEXISTS', KEYS[1], target) == 0 then
  return {'error', 'has no version ' .. target}
end
redis.call('SET', KEYS[3], '{"version":' .. cjson.encode(target) .. ',"pinned":' .. ARGV[3]
  .. ',"by":' .. cjson.encode(ARGV[4]) .. ',"at_ms":' .. ARGV[5] .. '}')
return {'ok', target}
"""


# Keep a shard's version unless the stored one has learnt more (a replay after a restore
# re-sends older versions); returns every stored shard version.
_PUBLISH_SHARD = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if (not stored) or tonumber(cjson.decode(stored)['examples']) <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return redis.call('HVALS', KEYS[1])
"""


# Every kept version's record, oldest first, read in one step: a publish prunes the
# oldest versions beyond ``keep``, and a burst of publishes between a ZRANGE and an HMGET
# sent apart (the job publishes hundreds at once after a slow checkpoint) would leave
# the ids read first without their records, even all of them.
_VERSIONS = """
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(ids))
"""


class UnknownVersion(KeyError):
    """No such model version in the registry."""


@dataclass(frozen=True, slots=True)
class ActivePointer:
    version: str
    pinned: bool
    by: str  # "publish" | "rollback" | "promote"
    at_ms: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


class ModelRegistry:
    def __init__(self, client: redis.Redis, project: str, keep: int = 50) -> None:
        self._redis = client
        self._prefix = f"pz:{project}:model:"
        self._keep = keep
        self._migrated: set[str] = set()
        self._publish = client.register_script(_PUBLISH)
        self._publish_shard = client.register_script(_PUBLISH_SHARD)
        self._move_script = client.register_script(_MOVE)
        self._versions_script = client.register_script(_VERSIONS)

    def _keys(self, model: str) -> tuple[str, str, str]:
        base = f"{self._prefix}{{{model}}}"
        keys = f"{base}:versions", f"{base}:order", f"{base}:active"
        if model not in self._migrated:
            self._migrate(model, keys)
        return keys

    def _migrate(self, model: str, keys: tuple[str, str, str]) -> None:
        """Rename the untagged keys of ``model`` (single node only: a cluster could never
        run the publish script over them, so it holds none)."""
        if not isinstance(self._redis, redis.cluster.RedisCluster):
            legacy = self._prefix + model
            for suffix, key in zip(("versions", "order", "active"), keys, strict=True):
                # "no such key": nothing to migrate.
                with contextlib.suppress(redis.ResponseError):
                    self._redis.renamenx(f"{legacy}:{suffix}", key)
        self._migrated.add(model)

    def publish(self, version: ModelVersion) -> bool:
        """Store ``version``; True when it became the active one (nothing pinned).

        A shard's version is kept as its shard's newest, and the average of the newest
        versions of every shard (of the same shard count) is what gets published."""
        shard = shard_of(version)
        if shard is not None:
            version = self._merge_shard(version, *shard)
        versions, order, active = self._keys(version.model)
        pointer = ActivePointer(version.version, False, "publish", int(time.time() * 1000))
        followed = self._publish(
            keys=[versions, order, active],
            args=[
                version.version,
                version.to_json(),
                version.created_ms,
                pointer.to_json(),
                self._keep,
            ],
        )
        return bool(followed)

    def _merge_shard(self, version: ModelVersion, shard: int, shards: int) -> ModelVersion:
        base = f"{self._prefix}{{{version.model}}}"
        stored = self._publish_shard(
            keys=[f"{base}:shards"], args=[str(shard), version.to_json(), version.examples]
        )
        latest = [ModelVersion.from_json(raw) for raw in stored]  # type: ignore[union-attr]
        # Shards of another shard count are of an earlier job configuration: left out.
        return averaged([v for v in latest if (shard_of(v) or (0, 0))[1] == shards])

    def active(self, model: str) -> ActivePointer | None:
        raw = self._redis.get(self._keys(model)[2])
        if raw is None:
            return None
        data = json.loads(raw)  # type: ignore[arg-type]
        return ActivePointer(
            str(data["version"]), bool(data["pinned"]), str(data["by"]), int(data["at_ms"])
        )

    def get(self, model: str, version: str) -> ModelVersion:
        raw = self._redis.hget(self._keys(model)[0], version)
        if raw is None:
            raise UnknownVersion(f"{model} has no version {version!r}")
        return ModelVersion.from_json(raw)  # type: ignore[arg-type]

    def active_version(self, model: str) -> ModelVersion | None:
        pointer = self.active(model)
        if pointer is None:
            return None
        try:
            return self.get(model, pointer.version)
        except UnknownVersion:
            return None

    def versions(self, model: str) -> list[ModelVersion]:
        """All kept versions, oldest first (one consistent read: see ``_VERSIONS``)."""
        versions, order, _ = self._keys(model)
        raws = self._versions_script(keys=[versions, order])
        return [ModelVersion.from_json(raw) for raw in raws if raw is not None]  # type: ignore[union-attr]

    def _move(self, model: str, mode: str, version: str, *, pinned: bool, by: str) -> ActivePointer:
        at_ms = int(time.time() * 1000)
        reply = self._move_script(
            keys=list(self._keys(model)),
            args=[mode, version, "true" if pinned else "false", by, at_ms],
        )
        status, detail = (part.decode() for part in reply)  # type: ignore[union-attr]
        if status != "ok":
            raise UnknownVersion(f"{model} {detail}")
        return ActivePointer(detail, pinned, by, at_ms)

    def rollback(self, model: str, version: str | None = None) -> ActivePointer:
        """Activate and pin ``version`` (default: the one before the active version)."""
        if version is None:
            return self._move(model, "previous", "", pinned=True, by="rollback")
        return self._move(model, "exact", version, pinned=True, by="rollback")

    def promote(self, model: str, version: str | None = None) -> ActivePointer:
        """Activate ``version`` (default: the newest) and follow new versions again."""
        if version is None:
            return self._move(model, "newest", "", pinned=False, by="promote")
        return self._move(model, "exact", version, pinned=False, by="promote")
