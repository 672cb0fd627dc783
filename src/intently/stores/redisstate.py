"""The Redis store: profiles, identity links and segment history shared by many workers.

Each worker applies the events it received, in its own log order, to state that all
workers share. Two things keep that state right:

- Order and isolation per profile. An event is applied inside `exclusive(...)`: the
  worker takes short leases (`SET PX` with a random token, all or none in one script)
  on the event's identity keys, reads which profiles they are linked to, then takes the
  leases of those profiles, reading them in the same script. A merge holds both
  profiles. A worker that finds a lease taken lets go of everything it holds and tries
  again after a short random pause, so no two workers ever wait on each other in a ring.
- Atomic writes. Everything one event changed (profiles, links, the activity indexes,
  segment history, the worker's log position) is written by one Lua script, which first
  checks that every lease is still this worker's: a worker paused past its lease (a
  stop-the-world pause of seconds) has its write refused rather than overwriting a
  newer state. It also checks that Redis still holds the log position this worker last
  wrote: a Redis that came back with less (a failover to a replica that lagged, a
  restore) refuses the write, and the worker applies the missing events from its log.

A Redis that answers but refuses (full, a replica, loading, busy, ...) is handled as one
that cannot be reached (`StoreUnavailable`): the event waits in the log, never skipped.

Keys are laid out for Redis Cluster: every key of one profile (body, segment history,
lease) carries the profile id as its hash tag, every key of one identity (link, lease)
the identity key, a worker's position its worker id, and the keys every worker shares
(activity indexes, the profile count, the event and erasure streams) the tag `shared`
(`shared_key`), so that each script reads and writes keys of one slot where a Cluster
asks it to.

Reads outside a lease (a decide) are plain GETs: they see either all or none of an
event's changes, since a script is atomic.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from intently.context.profile import Profile, SegmentChange
from intently.stores.clustered import ClusterWriter, group_by_slot
from intently.stores.codec import decode_change, decode_profile, encode_change, encode_profile
from intently.stores.layout import shared_key
from intently.stores.protocol import Changes, StoreUnavailable
from intently.stores.redisops import LEASES_HELD, Ops, run_operations

log = logging.getLogger(__name__)
_to_json = msgspec.json.Encoder().encode

# Take every lease in KEYS[1..n] (n = ARGV[3]) for token ARGV[1], for ARGV[2] ms, or none
# of them (returns nil); then return the values of the remaining KEYS.
_LEASE = """
local n = tonumber(ARGV[3])
for i = 1, n do
  local held = redis.call('GET', KEYS[i])
  if held and held ~= ARGV[1] then return nil end
end
for i = 1, n do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end
local values = {}
for i = n + 1, #KEYS do values[#values + 1] = redis.call('GET', KEYS[i]) end
return values
"""

# Apply one change set. ARGV[1] token, ARGV[2] n (KEYS[1..n] are leases that must still be
# the token's), ARGV[3] "1" to release those leases after writing, ARGV[4] history cap,
# ARGV[5] the KEYS index of the worker's hash and ARGV[6] the position this worker last
# wrote there (Redis must hold at least that); then operations, each an opcode, a KEYS
# index and its arguments (stores/redisops.py). Every check comes before the first write.
_COMMIT = (
    "local token, n, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])"
    + LEASES_HELD
    + """
local held = tonumber(redis.call('HGET', KEYS[tonumber(ARGV[5])], 'applied_seq') or '0')
if held < tonumber(ARGV[6]) then
  return redis.error_reply('POSITION_LOST ' .. held)
end"""
    + run_operations(7, "PXSDZRAMEQ")
    + """
if ARGV[3] == '1' then
  for j = 1, n do redis.call('DEL', KEYS[j]) end
end
return 1
"""
)

# Release the leases in KEYS that still hold token ARGV[1].
_RELEASE = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"""


# After a failed call, calls fail at once for this long (then one tries the server again):
# a request must not wait out a connection timeout per read while Redis is gone.
_OPEN_SECONDS = 0.5

_Method = TypeVar("_Method", bound=Callable[..., Any])

# Errors of a server that answers but refuses for a while: lost connections (LOADING and
# bad credentials are among them), and a full Redis (OOM, with noeviction), a replica
# after a failover (READONLY), a script running too long (BUSY), a failed snapshot
# (MISCONF), too few replicas (NOREPLICAS), a replica whose primary is gone (MASTERDOWN),
# a cluster's states (TRYAGAIN, CLUSTERDOWN, CROSSSLOT). redis-py gives some a class of
# their own, the others arrive as a ResponseError starting with their code; Redis 6.2
# wraps the refusal of a command inside a script in its own error ("... -READONLY ...").
_UNAVAILABLE_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,  # (and MasterDownError)
    redis.exceptions.ClusterCrossSlotError,
)
_UNAVAILABLE_CODES = re.compile(
    r"(?:^|-)(OOM|READONLY|BUSY|LOADING|MISCONF|NOREPLICAS|MASTERDOWN|TRYAGAIN|CLUSTERDOWN"
    r"|CROSSSLOT)\b"
)


# What a Cluster's client raises outside `redis.RedisError`: no node reachable, slots no
# node serves (a primary down before its failover), ... Raised by any call on a Cluster,
# caught wherever `redis.RedisError` is (as `REDIS_ERRORS`).
REDIS_ERRORS = (redis.RedisError, RedisClusterException)


def is_unavailable(error: BaseException) -> bool:
    """Whether a Redis error is the server refusing for a while (so asking again later
    can succeed), rather than a command it will always refuse."""
    if isinstance(error, (*_UNAVAILABLE_ERRORS, RedisClusterException)):
        return True
    return isinstance(error, redis.ResponseError) and bool(_UNAVAILABLE_CODES.search(str(error)))


def _guarded(method: _Method) -> _Method:
    """Turn every Redis error into `StoreUnavailable`: an event is then kept in the log
    and applied later, never taken for a bug and skipped (an acknowledged event must not
    be lost because Redis was full). A server unreachable or refusing for a while also
    opens the circuit: until `_OPEN_SECONDS` pass, calls fail at once without touching
    the network."""

    @functools.wraps(method)
    def call(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() < self._closed_after:
            raise StoreUnavailable(f"Redis at {self.where} is unavailable (retrying)")
        try:
            return method(self, *args, **kwargs)
        except REDIS_ERRORS as error:
            raise self._unavailable(error) from error

    return call  # type: ignore[return-value]


class LeaseLost(StoreUnavailable):
    """A write was refused: this worker's lease on a profile had run out (it paused for
    longer than the lease), so another worker may have changed the profile since. Nothing
    was written: the event is applied again from the log, under new leases."""


class PositionLost(StoreUnavailable):
    """A write was refused: Redis holds an older log position for this worker than the
    worker wrote (it lost writes: a failover to a replica that lagged, a restore). Nothing
    was written: the events from Redis's position on are applied again from the log."""


class LeaseTimeout(StoreUnavailable):
    """The leases an event needs stayed taken for longer than the wait allows (a worker
    killed while holding them: they run out after `lease_ms`). Handled as an outage: the
    event waits in the log and is applied by the next recovery."""


class RedisStore:
    """`StateStore` in Redis, shared by every worker given the same server and prefix.

    `worker` names this worker's event log: the store keeps how far each worker's log
    has been applied, so a worker that restarts re-applies only its own unapplied
    events.
    """

    name = "redis"
    # Each profile a sweep changes costs a lease and a commit (measured: 4,000 changes in
    # 0.51 s on loopback), all on the event loop: a few at a time, often.
    sweep_limit = 256

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "intently:",
        worker: str = "default",
        lease_ms: int = 2_000,
        # Longer than a lease: a dead worker's leases run out within one wait.
        lease_wait_seconds: float = 2.5,
        history_cap: int = 200,
        stream_length: int = 100_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.worker = worker
        self.lease_ms = lease_ms
        self.lease_wait_seconds = lease_wait_seconds
        self.history_cap = history_cap
        # Applied events are published to a stream (about this many kept; 0: none) for
        # consumers downstream (stores/stream.py).
        self.stream_length = stream_length
        self.stream_key = shared_key(prefix, "events")
        self.before_write: list[Callable[[], None]] = []
        self._lease = client.register_script(_LEASE)
        self._commit = client.register_script(_COMMIT)
        self._release = client.register_script(_RELEASE)
        self._worker_key = f"{prefix}worker:{{{worker}}}"
        self._count_key = shared_key(prefix, "profile-count")
        self._live_key = shared_key(prefix, "live-sessions")
        self._anonymous_key = shared_key(prefix, "anonymous-profiles")
        # While inside `exclusive`: the lease token, the leases held, and what was read
        # under them (a profile read twice is the same object, as the caller changes it).
        self._token: str | None = None
        self._held: list[str] = []
        self._profiles: dict[str, Profile | None] = {}
        self._links: dict[str, str | None] = {}
        self._applied_seq = self._watermark_ms = 0
        # On a Redis Cluster an event's changes are written slot by slot, to a plan
        # (stores/clustered.py); one this worker left unfinished is finished first.
        self.cluster = is_cluster_client(client)
        self._writer = ClusterWriter(self) if self.cluster else None
        if self._writer is not None:
            self._writer.finish()
        self._read_position()
        self.lease_retries = 0  # times a lease was found taken (contention)
        self.failures = 0  # calls that found Redis unreachable (or refusing for a while)
        self._closed_after = 0.0  # the circuit: calls fail at once until then
        self._unreachable = False  # what opened it: no connection (or a refusal)
        self.where = _where(client)

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        if is_unavailable(error):
            self._closed_after = time.monotonic() + _OPEN_SECONDS
            self._unreachable = isinstance(
                error, (redis.ConnectionError, redis.TimeoutError, RedisClusterException)
            )
            self.failures += 1
            return StoreUnavailable(f"Redis at {self.where} is unavailable: {error}")
        # Refused for good (a key of the wrong type, a script's bug): not a reason to stop
        # calling, but still no event may be skipped for it.
        return StoreUnavailable(f"Redis at {self.where} refused a command: {error}")

    def _read_position(self) -> None:
        meta = self.client.hgetall(self._worker_key)
        self._applied_seq = int(meta.get(b"applied_seq", 0))
        self._watermark_ms = int(meta.get(b"watermark_ms", 0))

    def recover(self) -> bool:
        self._closed_after = 0.0
        written = self._applied_seq
        try:
            if self._writer is not None:
                self._writer.finish()
            self._read_position()
        except REDIS_ERRORS as error:
            self._unavailable(error)
            return False
        if self._applied_seq < written:
            log.warning(
                "Redis at %s holds this worker's log position %d, but it wrote %d (a "
                "failover or a restore lost writes): the events after %d are applied again",
                self.where, self._applied_seq, written, self._applied_seq,
            )  # fmt: skip
        return True

    @_guarded
    def bind_log(self, log_id: str) -> bool:
        """Tie this worker's position to the event log `log_id`, kept beside it. False
        when the position was another log's (the same worker id on a new data dir): it
        starts over at 0, or the new log's first events would be taken for applied ones."""
        stored = _text(self.client.hget(self._worker_key, "log_id"))
        if stored == log_id:
            return True
        if stored is None:  # written before logs had ids, or a Redis that lost it all
            self.client.hsetnx(self._worker_key, "log_id", log_id)
            return True
        # One command: a crash in between cannot leave the new id with the old position.
        self.client.hset(self._worker_key, mapping={"log_id": log_id, "applied_seq": 0})
        self._applied_seq = 0
        return False

    # -- key layout ----------------------------------------------------------------------------

    def profile_key(self, profile_id: str) -> str:
        return f"{self.prefix}{{{profile_id}}}:profile"

    def history_key(self, profile_id: str) -> str:
        return f"{self.prefix}{{{profile_id}}}:history"

    def link_key(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}:link"

    def lease_key(self, key_or_profile_id: str) -> str:
        return f"{self.prefix}{{{key_or_profile_id}}}:lease"

    def shared_key(self, name: str) -> str:
        return shared_key(self.prefix, name)

    @property
    def worker_key(self) -> str:
        return self._worker_key

    @property
    def count_key(self) -> str:
        return self._count_key

    @property
    def live_key(self) -> str:
        return self._live_key

    @property
    def anonymous_key(self) -> str:
        return self._anonymous_key

    # -- leases --------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self, keys: Collection[str], profile_ids: Collection[str] = ()) -> Iterator[None]:
        if self._token is not None:  # nested: the outer block holds what it needs
            yield
            return
        deadline = time.monotonic() + self.lease_wait_seconds
        self._token = secrets.token_hex(12)
        try:
            pause = 0.0005
            while not self._take(sorted(set(keys)), profile_ids):
                self._let_go()
                self.lease_retries += 1
                if time.monotonic() >= deadline:
                    raise LeaseTimeout(
                        f"identities {sorted(keys)} stayed leased by other workers for "
                        f"{self.lease_wait_seconds} s"
                    )
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 0.02)
            yield
        finally:
            self._let_go()
            self._token = None

    def _take(self, keys: list[str], profile_ids: Collection[str]) -> bool:
        """Lease the identity keys, then every profile they link to (and `profile_ids`),
        following links that moved while we waited; False if any lease was taken."""
        token = self._token
        assert token is not None
        leases = [self.lease_key(key) for key in keys]
        values = self._lease_and_read(leases, [self.link_key(key) for key in keys])
        if values is None:
            return False
        links = {key: _text(value) for key, value in zip(keys, values, strict=True)}
        wanted = set(profile_ids) | {target for target in links.values() if target}
        leased: set[str] = set()
        while wanted - leased:
            new = sorted(wanted - leased)
            new_leases = [self.lease_key(profile_id) for profile_id in new]
            reads = [self.profile_key(p) for p in new] + [self.link_key(k) for k in keys]
            values = self._lease_and_read(new_leases, reads)
            if values is None:
                return False
            leased.update(new)
            for profile_id, body in zip(new, values, strict=False):
                self._profiles[profile_id] = decode_profile(body) if body is not None else None
            # A merge by another worker may have moved a link while we waited for it.
            for key, value in zip(keys, values[len(new) :], strict=True):
                links[key] = target = _text(value)
                if target:
                    wanted.add(target)
        self._links.update(links)
        return True

    @_guarded
    def _lease_and_read(self, leases: list[str], reads: list[str]) -> list[bytes | None] | None:
        """Take `leases` and read `reads` (under them): None, when a lease was taken by
        another. The leases taken go into `_held`."""
        if not leases:
            return [_optional(self.client.get(key)) for key in reads]
        token = self._token or ""
        if not self.cluster:
            answer = self._lease(keys=leases + reads, args=[token, self.lease_ms, len(leases)])
            if answer is None:
                return None
            self._held.extend(leases)
            return list(answer)
        # A Cluster: a script per slot, each with the reads of its slot (a lease and what
        # it guards share one); the reads of other slots after, under the leases.
        values: dict[str, bytes | None] = {}
        reads_by_slot = group_by_slot(reads)
        for slot, slot_leases in group_by_slot(leases).items():
            slot_reads = reads_by_slot.pop(slot, [])
            answer = self._lease(keys=slot_leases + slot_reads,
                                 args=[token, self.lease_ms, len(slot_leases)])  # fmt: skip
            if answer is None:
                return None
            self._held.extend(slot_leases)
            values.update(zip(slot_reads, answer, strict=True))
        for slot_reads in reads_by_slot.values():
            for key in slot_reads:
                values[key] = _optional(self.client.get(key))
        return [values[key] for key in reads]

    def release_leases(self, leases: list[str], token: str) -> None:
        """Release those of `leases` that still hold `token` (raises `redis.RedisError`)."""
        groups = group_by_slot(leases).values() if self.cluster else [leases]
        for group in groups:
            self._release(keys=group, args=[token])

    def _let_go(self) -> None:
        """Release every lease held (those a commit has not released already)."""
        if self._held and self._unreachable and time.monotonic() < self._closed_after:
            # Redis is gone: they run out on their own. (One that refused, full or busy,
            # is asked: else the catch-up would wait for this worker's leases to run out.)
            self._held = []
        elif self._held:
            held, self._held = self._held, []
            try:
                self.release_leases(held, self._token or "")
            except REDIS_ERRORS:  # they run out on their own
                log.warning("releasing %d leases failed; they expire in %d ms",
                            len(held), self.lease_ms)  # fmt: skip
        self._profiles.clear()
        self._links.clear()

    # -- reading -------------------------------------------------------------------------------

    @_guarded
    def get(self, profile_id: str) -> Profile | None:
        if profile_id in self._profiles:
            return self._profiles[profile_id]
        body = self.client.get(self.profile_key(profile_id))
        profile = None if body is None else decode_profile(_raw(body))
        if self._token is not None:
            self._profiles[profile_id] = profile
        return profile

    @_guarded
    def resolve(self, key: str) -> str | None:
        if key in self._links:
            return self._links[key]
        return _text(self.client.get(self.link_key(key)))

    @property
    def commits_finished(self) -> int:
        """Commits left unfinished and finished later (a Cluster's; 0 on one primary)."""
        return 0 if self._writer is None else self._writer.unfinished

    @property
    def commits_unresolved(self) -> int:
        return 0 if self._writer is None else self._writer.unresolved

    @property
    def applied_seq(self) -> int:
        return self._applied_seq

    @property
    def watermark_ms(self) -> int:
        return self._watermark_ms

    @_guarded
    def segment_history(self, profile_id: str, limit: int) -> list[SegmentChange]:
        rows = self.client.lrange(self.history_key(profile_id), 0, -1)
        changes = [decode_change(_raw(row)) for row in rows]
        changes.sort(key=lambda change: change.at_ms)  # stable: equal times keep their order
        return changes[-limit:] if limit > 0 else []

    @_guarded
    def profile_count(self) -> int:
        return int(self.client.get(self._count_key) or 0)

    def profiles(self) -> Iterator[Profile]:
        """Every profile, read in pages (a scan: another worker's writes may or may not
        be seen)."""
        pattern = f"{self.prefix}{{*}}:profile"
        page: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            page.append(key)
            if len(page) >= 500:
                yield from self._read_page(page)
                page = []
        if page:
            yield from self._read_page(page)

    def _read_page(self, keys: list[bytes]) -> Iterator[Profile]:
        read = self.client.mget_nonatomic if self.cluster else self.client.mget  # type: ignore[attr-defined]
        for body in read(keys):
            if body is not None:
                yield decode_profile(_raw(body))

    def links(self) -> dict[str, str]:
        found: dict[str, str] = {}
        start = len(self.prefix) + 1
        for key in self.client.scan_iter(match=f"{self.prefix}{{*}}:link", count=1000):
            target = self.client.get(key)
            if target is not None:
                found[_raw(key).decode()[start : -len("}:link")]] = _raw(target).decode()
        return found

    @_guarded
    def live_sessions(self, since_ms: int) -> int:
        return int(self.client.zcount(self._live_key, since_ms, "+inf"))

    @_guarded
    def idle_sessions(self, before_ms: int, limit: int) -> list[str]:
        return self._oldest(self._live_key, before_ms, limit)

    @_guarded
    def idle_anonymous(self, before_ms: int, limit: int) -> list[str]:
        return self._oldest(self._anonymous_key, before_ms, limit)

    def _oldest(self, index: str, before_ms: int, limit: int) -> list[str]:
        found = self.client.zrangebyscore(index, "-inf", f"({before_ms}", start=0, num=limit)
        return [_raw(member).decode() for member in found]

    # -- writing -------------------------------------------------------------------------------

    @_guarded
    def commit(self, changes: Changes) -> None:
        if self._writer is not None:
            self._commit_slot_by_slot(self._writer, changes)
        else:
            self._commit_at_once(changes)
        if changes.seq > self._applied_seq:
            self._applied_seq = changes.seq
        if changes.watermark_ms > self._watermark_ms:
            self._watermark_ms = changes.watermark_ms

    def _commit_slot_by_slot(self, writer: ClusterWriter, changes: Changes) -> None:
        # Every profile written is leased, a new one too (on one primary the commit script
        # is atomic; here a slot's leases are what its script checks, and what tells a
        # finishing plan whether the slot was written).
        touched = {*changes.profiles, *changes.removed, *changes.merged.values()}
        touched.update(change.profile_id for change in changes.transitions)
        held = set(self._held)
        unleased = sorted(p for p in touched if self.lease_key(p) not in held)
        if unleased and self._token is None:  # a commit outside `exclusive`: its own leases
            self._token = secrets.token_hex(12)
            try:
                self._commit_leased(writer, changes, unleased)
            finally:
                self._let_go()
                self._token = None
        else:
            self._commit_leased(writer, changes, unleased)

    def _commit_leased(self, writer: ClusterWriter, changes: Changes, unleased: list[str]) -> None:
        """Lease the profiles in `unleased`, reading them under the leases (whether each
        existed, for the profile count), then write the plan."""
        if unleased:
            leases = [self.lease_key(profile_id) for profile_id in unleased]
            bodies = self._lease_and_read(leases, [self.profile_key(p) for p in unleased])
            if bodies is None:
                raise LeaseLost(f"profiles {unleased} are leased by another worker")
            for profile_id, body in zip(unleased, bodies, strict=True):
                self._profiles.setdefault(
                    profile_id, None if body is None else decode_profile(body)
                )
        plan = writer.plan(changes, self._token or "", self._held)
        try:
            writer.commit(plan, self._applied_seq)
        except redis.ResponseError as error:
            self._refused(error)
            raise
        finally:
            if writer.prepared:  # its leases are released by the plan's scripts (or `finish`)
                self._held = []
            if writer.pending:  # cut off half way: finished now if Redis lets us, else at
                self._finish_quietly(writer)  # the next tick or recovery

    def _finish_quietly(self, writer: ClusterWriter) -> None:
        try:
            writer.finish()
        except REDIS_ERRORS as error:
            log.info("finishing a commit cut off half way waits for Redis: %s", error)

    def forget_plan(self) -> None:
        self.client.hdel(self._worker_key, "plan", "plan_prepared")

    def existed(self, profile_id: str) -> bool:
        """Whether Redis held the profile before this commit (read under its lease)."""
        if profile_id in self._profiles:
            return self._profiles[profile_id] is not None
        return bool(self.client.exists(self.profile_key(profile_id)))

    def history_entries(self, profile_id: str) -> list[bytes]:
        return [_raw(row) for row in self.client.lrange(self.history_key(profile_id), 0, -1)]

    def encode_event(self, event: object) -> bytes:
        return _to_json(event)

    def index_ops(self, ops: Ops, profile: Profile) -> None:
        self._index(ops, profile)

    def _refused(self, error: redis.ResponseError) -> None:
        text = str(error)
        if "LEASE_LOST" in text:
            raise LeaseLost(text) from None
        if "POSITION_LOST" in text:
            raise PositionLost(
                f"Redis at {self.where} holds log position {text.split()[-1]} for this "
                f"worker, which wrote {self._applied_seq}: it lost writes"
            ) from None

    def _commit_at_once(self, changes: Changes) -> None:
        ops = Ops(self._held)
        position = ops.key(self._worker_key)
        for profile_id, profile in changes.profiles.items():
            ops.add("P", self.profile_key(profile_id), encode_profile(profile),
                    ops.key(self._count_key))  # fmt: skip
            self._index(ops, profile)
        if not changes.only_profiles:
            self._commit_rest(ops, changes)
        if changes.event is not None and self.stream_length > 0:
            ops.add("E", self.stream_key, self.stream_length, self.worker, changes.seq,
                    _to_json(changes.event))  # fmt: skip
        ops.add("Q", self._worker_key, changes.seq, changes.watermark_ms)
        # Inside `exclusive` the leases go with the write (one round trip less).
        release = "1" if self._held else "0"
        args: list[str | bytes | int] = [self._token or "", len(self._held), release]
        args += (self.history_cap, position, self._applied_seq, *ops.args)
        try:
            self._commit(keys=ops.keys, args=args)
        except redis.ResponseError as error:
            self._refused(error)
            raise
        if release == "1":
            self._held = []

    def _index(self, ops: Ops, profile: Profile) -> None:
        profile_id = profile.id
        if profile.session is not None:
            ops.add("Z", self._live_key, profile_id, profile.session.last_ms)
        else:
            ops.add("R", self._live_key, profile_id)
        if profile.user_ids:
            ops.add("R", self._anonymous_key, profile_id)
        else:
            ops.add("Z", self._anonymous_key, profile_id, profile.last_ms)

    def _commit_rest(self, ops: Ops, changes: Changes) -> None:
        # In the embedded store's order: entries and exits, then merged histories follow
        # their profile, then removed profiles (and what is left of their history) go.
        for change in changes.transitions:
            ops.add("A", self.history_key(change.profile_id), encode_change(change))
        for old, into in changes.merged.items():
            ops.add("M", self.history_key(old), ops.key(self.history_key(into)))
        for profile_id in changes.removed:
            ops.add("X", self.profile_key(profile_id), ops.key(self._count_key))
            ops.add("D", self.history_key(profile_id))
            ops.add("R", self._live_key, profile_id)
            ops.add("R", self._anonymous_key, profile_id)
        for key, profile_id in changes.links.items():
            ops.add("S", self.link_key(key), profile_id)
        for key in changes.unlinked:
            ops.add("D", self.link_key(key))

    def compact(self) -> Future[None]:
        """Nothing deleted stays readable in Redis's memory; its append-only file keeps
        deleted values until rewritten, so a rewrite is started when the file is on."""
        done: Future[None] = Future()
        for server in self._servers():
            try:
                if server.config_get("appendonly").get("appendonly") == "yes":
                    server.bgrewriteaof()
            except redis.ResponseError as error:  # a rewrite already running, or CONFIG renamed
                log.info("AOF rewrite after an erasure not started: %s", error)
        done.set_result(None)
        return done

    def _servers(self) -> list[redis.Redis]:
        """A client of each server holding data: the one, or each primary of a Cluster."""
        if not self.cluster:
            return [self.client]
        cluster: Any = self.client
        return [cluster.get_redis_connection(node) for node in cluster.get_primaries()]

    def tick(self) -> None:
        # A Cluster's commit cut off half way, not finished since: its profiles wait.
        if self._writer is not None and self._writer.pending:
            self._finish_quietly(self._writer)
        # Every commit is written at once; logs derived from events (experiments) are
        # made durable about once a second (docs/operations.md, "Scale-out").
        for wait in self.before_write:
            wait()

    def flush(self) -> None:
        for wait in self.before_write:
            wait()

    def close(self) -> None:
        self.flush()
        self.client.close()


def is_cluster_client(client: redis.Redis) -> bool:
    """Whether `client` is a Redis Cluster's (stores/connect.py hands one over typed as
    a plain client: it has the same commands, for keys of one slot at a time)."""
    return isinstance(client, RedisCluster)


def _text(value: Any) -> str | None:
    return None if value is None else _raw(value).decode()


def _where(client: redis.Redis) -> str:
    """host:port (or the socket path) of the client's server, for messages."""
    if is_cluster_client(client):
        node: Any = client.get_default_node()  # type: ignore[attr-defined]
        return f"{node.host}:{node.port} (a Redis Cluster node)"
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _raw(value: object) -> bytes:
    """A reply's bytes (the client never decodes replies to text)."""
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes from Redis, got {type(value).__name__}")
    return value


def _optional(value: object) -> bytes | None:
    return None if value is None else _raw(value)
