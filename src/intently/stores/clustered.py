"""Writing an event's changes on a Redis Cluster, where a script may only use keys of
one slot.

On one primary an event's changes are one script (stores/redisstate.py). On a Cluster
they span slots: the profiles', the identities', the shared keys' and the worker's. So
the commit is a plan of one script per slot, written down before any of them runs, and
carried out to the end by whoever finds it unfinished:

1. intend: the plan goes into the worker's hash (one script, which first checks the log
   position Redis holds, as on one primary);
2. prepare: every lease the event holds is checked to still be this worker's and
   lengthened to `COMMIT_LEASE_MS`, slot by slot; a lost one stops the commit here, with
   nothing written (the plan is dropped, the event applied again from the log);
3. the plan is marked prepared: from here it is carried out to the end, never redone
   from the log;
4. the links of identities the event does not lease (a merge moves them), in their
   slots: written while every profile involved is still leased, so nobody else can
   change them meanwhile;
5. each leased slot: its leases checked, its profiles, histories and links written, its
   leases released, in one script. A released lease is how a later look tells this
   slot was written;
6. the shared keys (activity indexes, the profile count, the event stream) in one
   script, stamped with the commit's id, so it runs once however often it is asked to;
7. done: the worker's position moves to the event and the plan is deleted, in one script.

A worker that stops anywhere in 4-7 (killed, Redis gone for a while) finishes the plan
when it starts again or Redis returns (`finish`): still-leased slots are written
(their leases, lengthened to a minute, keep everyone else out until then), released
ones were, step 6 is stamped and 7 is idempotent. A plan found unprepared is dropped
and its event applied again from the log, as nothing of it was written. What a Cluster
cannot give: reads outside a lease (a decide) may see an event's slots written one
after another for the milliseconds between them; a worker stopped for longer than
`COMMIT_LEASE_MS` in the middle of step 5 may find a slot leased and changed by another
worker since (it writes nothing there, and logs it).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec
import redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from intently.stores.codec import encode_change, encode_profile
from intently.stores.protocol import Changes
from intently.stores.redisops import LEASES_HELD, Ops, Value, run_operations

if TYPE_CHECKING:
    from intently.stores.redisstate import RedisStore

log = logging.getLogger(__name__)

# How long the leases of a commit in progress hold: past a restart of the worker that
# was killed in the middle of one, which then finishes it.
COMMIT_LEASE_MS = 60_000

# Check that every lease in KEYS[1..n] (n = ARGV[2]) holds token ARGV[1]; lengthen them
# to ARGV[3] ms.
_PREPARE = (
    "local token, n = ARGV[1], tonumber(ARGV[2])"
    + LEASES_HELD
    + """
for i = 1, n do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return 1
"""
)

# One slot's data. ARGV[1] token, ARGV[2] n (KEYS[1..n] are leases that must hold it, and
# are released after writing), ARGV[3] history cap; then operations: S key value (SET),
# D key (DEL), A key value (append to a history, keeping the last cap).
_DATA = (
    "local token, n, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])"
    + LEASES_HELD
    + run_operations(4, "SDA")
    + """
for j = 1, n do redis.call('DEL', KEYS[j]) end
return 1
"""
)

# The shared keys' part, once per commit: KEYS[1] the stamps (worker -> last commit id),
# KEYS[2] the profile count; ARGV[1] worker, ARGV[2] commit id, ARGV[3] count change;
# then operations: Z key member score (ZADD), R key member (ZREM), E key maxlen worker seq
# event (XADD).
_SHARED = (
    """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
local change = tonumber(ARGV[3])
if change ~= 0 then redis.call('INCRBY', KEYS[2], change) end"""
    + run_operations(4, "ZRE")
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)

# Write the plan ARGV[2] into the worker's hash KEYS[1], unprepared, if Redis holds at
# least the position ARGV[1] this worker last wrote, and no plan is there still (one a
# failed commit left: it is finished first).
_INTEND = """
if redis.call('HEXISTS', KEYS[1], 'plan') == 1 then
  return redis.error_reply('PLAN_UNFINISHED')
end
local held = tonumber(redis.call('HGET', KEYS[1], 'applied_seq') or '0')
if held < tonumber(ARGV[1]) then
  return redis.error_reply('POSITION_LOST ' .. held)
end
redis.call('HSET', KEYS[1], 'plan', ARGV[2], 'plan_prepared', '0')
return 1
"""

# The end of a plan: the position (a Q operation, as on one primary: never back) and the
# plan gone. KEYS[1] the worker's hash; ARGV: Q 1 seq watermark.
_DONE = (
    run_operations(1, "Q")
    + """
redis.call('HDEL', KEYS[1], 'plan', 'plan_prepared')
return 1
"""
)


class Call(msgspec.Struct, array_like=True):
    """One script's keys and arguments; the first `leases` keys are leases."""

    keys: list[str]
    args: list[Any]  # (str, bytes and int: msgpack keeps them apart, msgspec's types cannot)
    leases: int = 0


class Plan(msgspec.Struct, array_like=True):
    commit_id: str
    made_ms: int
    seq: int
    watermark_ms: int
    token: str
    free: list[Call]  # links of identities not leased (step 4)
    leased: list[Call]  # one per leased slot (step 5)
    shared: Call | None  # step 6


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Plan).decode


class ClusterWriter:
    """Commits of a `RedisStore` whose client is a Redis Cluster's."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        client = store.client
        self._prepare = client.register_script(_PREPARE)
        self._data = client.register_script(_DATA)
        self._shared = client.register_script(_SHARED)
        self._intend = client.register_script(_INTEND)
        self._done = client.register_script(_DONE)
        self.stamps_key = store.shared_key("commits")
        self.unfinished = 0  # plans found unfinished and finished (a restart, an outage)
        self.unresolved = 0  # slots a finishing plan found changed by another worker

    # -- planning -------------------------------------------------------------------------

    def plan(self, changes: Changes, token: str, held: list[str]) -> Plan:
        store = self.store
        leased = {key_slot(lease.encode()): Ops() for lease in held}
        for lease in held:
            leased[key_slot(lease.encode())].key(lease)
        leases_of = {slot: len(group.keys) for slot, group in leased.items()}
        free: dict[int, Ops] = {}

        def data(op: str, key: str, *values: Value) -> None:
            slot = key_slot(key.encode())
            group = leased.get(slot)
            if group is None:
                group = free.setdefault(slot, Ops())
            group.add(op, key, *values)

        shared = Ops([self.stamps_key, store.count_key])
        count = 0
        for profile_id, profile in changes.profiles.items():
            if not store.existed(profile_id):
                count += 1
            data("S", store.profile_key(profile_id), encode_profile(profile))
            store.index_ops(shared, profile)
        if not changes.only_profiles:
            for change in changes.transitions:
                data("A", store.history_key(change.profile_id), encode_change(change))
            for old, into in changes.merged.items():
                for entry in store.history_entries(old):  # (read under the lease of old)
                    data("A", store.history_key(into), entry)
            for profile_id in changes.removed:
                if store.existed(profile_id):
                    count -= 1
                data("D", store.profile_key(profile_id))
                data("D", store.history_key(profile_id))
                shared.add("R", store.live_key, profile_id)
                shared.add("R", store.anonymous_key, profile_id)
            for key, profile_id in changes.links.items():
                data("S", store.link_key(key), profile_id)
            for key in changes.unlinked:
                data("D", store.link_key(key))
        if changes.event is not None and store.stream_length > 0:
            shared.add("E", store.stream_key, store.stream_length, store.worker, changes.seq,
                       store.encode_event(changes.event))  # fmt: skip
        commit_id = secrets.token_hex(8)
        shared_call = Call(shared.keys, [store.worker, commit_id, count, *shared.args])
        cap = store.history_cap
        return Plan(
            commit_id, int(time.time() * 1000), changes.seq, changes.watermark_ms, token,
            [Call(group.keys, ["", 0, cap, *group.args]) for group in free.values()],
            [Call(group.keys, [token, leases_of[slot], cap, *group.args], leases_of[slot])
             for slot, group in leased.items()],
            shared_call if len(shared.args) or count else None,
        )  # fmt: skip

    # -- carrying out ---------------------------------------------------------------------

    def commit(self, plan: Plan, position: int) -> None:
        """Steps 1-7. Raises `redis.ResponseError` with LEASE_LOST (nothing written, the
        plan dropped) or POSITION_LOST; any other error once `prepared` leaves the plan
        for `finish`."""
        store = self.store
        worker_key = store.worker_key
        self.prepared = False
        body = _encode(plan)
        try:
            self._intend(keys=[worker_key], args=[position, body])
        except redis.ResponseError as error:
            if "PLAN_UNFINISHED" not in str(error):
                raise
            # A commit outside the event pipeline (an erasure, a segment's page) failed
            # half way and nothing finished it yet: its plan goes first.
            self.finish()
            self._intend(keys=[worker_key], args=[position, body])
        try:
            for call in plan.leased:
                self._prepare(keys=call.keys[: call.leases],
                              args=[plan.token, call.leases, COMMIT_LEASE_MS])  # fmt: skip
        except Exception:
            # Nothing written: the plan goes, and the leases lengthened so far are let go
            # now rather than in a minute (if Redis lets us; else `finish` does it).
            try:
                for call in plan.leased:
                    store.release_leases(call.keys[: call.leases], plan.token)
                store.forget_plan()
            except (redis.RedisError, RedisClusterException):
                pass
            raise
        store.client.hset(worker_key, "plan_prepared", "1")
        self.prepared = self.pending = True
        self._carry_out(plan, links=True, finishing=False)
        self.pending = False

    # Whether a commit failed after its plan was prepared, and no `finish` has ended it
    # yet: its leases keep its profiles from everyone (this worker too) until then.
    pending = False

    prepared = False  # whether the latest commit got past step 3 (then `finish` ends it)

    def _carry_out(self, plan: Plan, *, links: bool, finishing: bool) -> None:
        if links:
            for call in plan.free:
                self._data(keys=call.keys, args=call.args)
        for call in plan.leased:
            try:
                self._data(keys=call.keys, args=call.args)
            except redis.ResponseError as error:
                if not finishing or "LEASE_LOST" not in str(error):
                    raise
                # Written already (its leases went with it); or, after a stop longer
                # than COMMIT_LEASE_MS, leased by another worker since: not written over.
                if time.time() * 1000 - plan.made_ms > COMMIT_LEASE_MS:
                    self.unresolved += 1
                    log.error(
                        "the unfinished commit of event %d is older than its leases: slot "
                        "%s may have changed since and is not written", plan.seq,
                        call.keys[0],
                    )  # fmt: skip
        if plan.shared is not None:
            self._shared(keys=plan.shared.keys, args=plan.shared.args)
        self._done(keys=[self.store.worker_key], args=["Q", 1, plan.seq, plan.watermark_ms])

    def finish(self) -> bool:
        """Carry out the plan this worker left unfinished, if any (at start, and when
        Redis is back); whether there was one. Raises `redis.RedisError`."""
        client = self.store.client
        worker_key = self.store.worker_key
        body, prepared = client.hmget(worker_key, ["plan", "plan_prepared"])
        if body is None:
            self.pending = False
            return False
        assert isinstance(body, bytes)
        plan = _decode(body)
        if prepared != b"1":  # nothing of it written: let go, the log applies it again
            for call in plan.leased:
                self.store.release_leases(call.keys[: call.leases], plan.token)
            self.store.forget_plan()
            return True
        # The unleased links only while every leased slot is still unwritten: once one is
        # written, they were (they come first), and the profiles may have moved on since.
        untouched = all(
            client.get(lease) == plan.token.encode()
            for call in plan.leased
            for lease in call.keys[: call.leases]
        )
        self._carry_out(plan, links=untouched, finishing=True)
        self.unfinished += 1  # (once it is finished: a try that fails is tried again)
        self.pending = False
        log.warning("finished the commit of event %d that this worker left unfinished",
                    plan.seq)  # fmt: skip
        return True


def group_by_slot(keys: Iterable[str]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for key in keys:
        found.setdefault(key_slot(key.encode()), []).append(key)
    return found
