"""Failures found in review of the Redis store, each kept from coming back:

- a Redis that answers but refuses (full, a replica, busy) drops no acknowledged event;
- a commit refused for a lease that ran out (a pause) is applied again, exactly once;
- the event log never hands out a log position twice, and a worker whose log is new (a
  replaced volume) starts its position over instead of skipping its new events;
- an event dated far in the future cannot end every other visitor's session and forget
  them;
- a Redis Cluster is refused at start;
- a Redis that came back with less than this worker had written (a failover to a replica
  that lagged, a restore) gets the missing events applied again from the log.

Everything runs against real servers: the shared Redis (tests/services.py) or a private
redis-server a test may fill up, demote, restart or start in cluster mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from intently import Engine, ManualClock
from intently.config import Settings
from intently.configfile import ConfigError
from intently.context.facts import Facts
from intently.context.profile import Profile, ProfileRules
from intently.context.settings import ContextSettings
from intently.log.eventlog import EventLog, LogRow
from intently.stores.connect import BackendUnavailable, open_state_store
from intently.stores.embedded import EmbeddedStore
from intently.stores.layout import shared_key
from intently.stores.protocol import Changes, StoreUnavailable
from intently.stores.redisstate import RedisStore, is_unavailable
from services import REDIS_URL, PrivateRedis, redis_namespace
from support import SECRET_KEY, START, client_for, free_port, make_settings

pytestmark = pytest.mark.anyio

ServerFactory = Callable[..., PrivateRedis]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[ServerFactory]:
    """Starts redis-servers of the test's own with the given arguments (stopped after)."""
    servers: list[PrivateRedis] = []

    def start(*args: str) -> PrivateRedis:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = PrivateRedis(directory, *args)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def view(n: int, visitor: str = "v1", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "anonymousId": visitor,
            "messageId": f"{visitor}-m{n}",
            "properties": {"product_id": f"p{n}", "category": "running", "price": 10},
            **fields}  # fmt: skip


async def post(engine: Engine, *events: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with client_for(engine) as client:
        answer = await client.post("/v1/events", json={"batch": list(events)})
    return answer.status_code, answer.json()


async def views_of(engine: Engine, visitor: str) -> int | None:
    """How many views the visitor's profile counts (None: no profile)."""
    async with client_for(engine, SECRET_KEY) as admin:
        answer = await admin.get(f"/v1/profiles/{visitor}")
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return int(answer.json()["counts"].get("Product Viewed", 0))


def redis_engine(data_dir: Path, url: str, **overrides: Any) -> Engine:
    return Engine(make_settings(data_dir, state_store=url, **overrides), clock=ManualClock(START))


def assert_kept_for_later(status: int, body: dict[str, Any]) -> None:
    assert status == 503, body
    assert body["type"].endswith(":state-unavailable")
    assert "kept and applied" in body["detail"]


def stream_seqs(client: redis.Redis, prefix: str = "intently:") -> list[int]:
    """The log positions the event stream holds, in stream order."""
    entries: Any = client.xrange(shared_key(prefix, "events"))
    return [int(fields[b"seq"]) for _, fields in entries]


def is_view_of(facts: Facts | None, product_id: str) -> bool:
    product = None if facts is None else facts.product
    return product is not None and product.product_id == product_id


# -- A1: a Redis that answers but refuses ------------------------------------------------------


def fill(client: redis.Redis) -> int:
    """Write filler keys until a Redis with `maxmemory` (and noeviction) refuses even a
    small write (a large one is refused sooner: its request counts while it is read);
    then hold it full: its memory in use moves a little by itself (buffers), and a
    write that fits again by chance would make the test flaky (seen in CI)."""
    n = 0
    for size in (20_000, 1_000, 10):
        while True:
            try:
                client.set(f"filler:{n}", b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
            n += 1
    client.config_set("maxmemory", 1)  # (0 would be no limit)
    return n


def empty(client: redis.Redis, filled: int) -> None:
    client.delete(*[f"filler:{n}" for n in range(filled + 1)])
    client.config_set("maxmemory", "3mb")  # (as `private_redis` was started)


async def test_a_full_redis_keeps_the_event_and_applies_it_once_memory_is_back(
    private_redis: ServerFactory, tmp_path: Path
) -> None:
    server = private_redis("--maxmemory", "3mb")  # noeviction: Redis's default
    client = redis.Redis(port=server.port)
    engine = redis_engine(tmp_path / "data", server.url)
    try:
        assert await post(engine, view(0), view(1)) == (200, {"accepted": 2})
        filled = fill(client)
        # Found when the leases are taken: nothing applied, the event kept in the log.
        assert_kept_for_later(*await post(engine, view(2)))
        assert engine.context.behind
        assert engine.context.recover(engine.log) == 0  # still full
        empty(client, filled)
        assert engine.context.recover(engine.log) == 1
        assert await views_of(engine, "v1") == 3
        assert await post(engine, view(3)) == (200, {"accepted": 1})
        assert await views_of(engine, "v1") == 4
        assert stream_seqs(client) == [1, 2, 3, 4]
    finally:
        engine.close()
    # A restart applies nothing twice and finds nothing missing.
    again = redis_engine(tmp_path / "data", server.url)
    try:
        assert await views_of(again, "v1") == 4
    finally:
        again.close()
        client.close()


async def test_a_commit_refused_by_a_full_redis_is_never_skipped(
    private_redis: ServerFactory, tmp_path: Path
) -> None:
    # Redis fills up between the leases and the commit (another worker's writes): the
    # commit is refused, and the next commit must not move the position past the event.
    server = private_redis("--maxmemory", "3mb")
    client = redis.Redis(port=server.port)
    engine = redis_engine(tmp_path / "data", server.url)
    filled: list[int] = []

    def fill_once(profile: Profile, facts: Facts | None, changes: Changes) -> None:
        if is_view_of(facts, "p1") and not filled:
            filled.append(fill(client))

    engine.context.hooks.insert(0, fill_once)
    try:
        assert await post(engine, view(0)) == (200, {"accepted": 1})
        assert_kept_for_later(*await post(engine, view(1)))
        empty(client, filled[0])
        assert engine.context.recover(engine.log) == 1
        assert await post(engine, view(2)) == (200, {"accepted": 1})
        assert await views_of(engine, "v1") == 3
        assert stream_seqs(client) == [1, 2, 3]
    finally:
        engine.close()
        client.close()


async def test_a_redis_demoted_to_a_replica_keeps_the_event_until_it_is_writable(
    private_redis: ServerFactory, tmp_path: Path
) -> None:
    server = private_redis()
    nowhere = private_redis()  # a primary that is then gone: the replica keeps its data
    client = redis.Redis(port=server.port)
    engine = redis_engine(tmp_path / "data", server.url)
    try:
        assert await post(engine, view(0)) == (200, {"accepted": 1})
        nowhere.stop()
        client.replicaof("127.0.0.1", nowhere.port)  # READONLY to every write
        assert_kept_for_later(*await post(engine, view(1)))
        assert engine.context.recover(engine.log) == 0
        client.replicaof("NO", "ONE")  # promoted again
        assert engine.context.recover(engine.log) == 1
        assert await views_of(engine, "v1") == 2
    finally:
        engine.close()
        client.close()


def run_forever(client: redis.Redis) -> None:
    """A script that runs until killed (Redis answers BUSY to everything meanwhile)."""
    with pytest.raises(redis.ResponseError, match="killed"):
        client.eval("while true do end", 0)


async def test_a_busy_redis_keeps_the_event_until_the_script_is_killed(
    private_redis: ServerFactory, tmp_path: Path
) -> None:
    server = private_redis("--lua-time-limit", "50")  # (busy-reply-threshold since 7.0)
    client = redis.Redis(port=server.port)
    engine = redis_engine(tmp_path / "data", server.url)
    try:
        assert await post(engine, view(0)) == (200, {"accepted": 1})
        blocker = redis.Redis(port=server.port)
        busy = threading.Thread(target=run_forever, args=(blocker,))
        busy.start()
        time.sleep(0.3)  # past the threshold: every other command is answered BUSY
        assert_kept_for_later(*await post(engine, view(1)))
        client.script_kill()
        busy.join(timeout=10)
        blocker.close()
        assert engine.context.recover(engine.log) == 1
        assert await views_of(engine, "v1") == 2
    finally:
        engine.close()
        client.close()


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.ResponseError("BUSY Redis is busy running a script."),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."),
        redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
        redis.exceptions.MasterDownError("Link with MASTER is down"),
        redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
        redis.exceptions.ClusterDownError("The cluster is down"),
        redis.exceptions.ClusterCrossSlotError("Keys in request don't hash to the same slot"),
        # Redis 6.2 wraps a command's error inside a script's:
        redis.ResponseError(
            "Error running script (call to f_0): @user_script:12: -READONLY You can't write"
        ),
    ],
)
def test_server_states_that_refuse_for_a_while_are_unavailability(error: Exception) -> None:
    # (Those the tests above cannot bring about on one local server.)
    assert is_unavailable(error)


def test_a_bug_is_not_unavailability() -> None:
    assert not is_unavailable(redis.ResponseError("WRONGTYPE Operation against a key"))
    assert not is_unavailable(redis.ResponseError("LEASE_LOST intently:{a:OOM}:lease"))


# -- A2: a commit refused for a lease that ran out -------------------------------------------


async def test_an_event_whose_lease_ran_out_is_applied_again_exactly_once(
    private_redis: ServerFactory, tmp_path: Path
) -> None:
    server = private_redis()
    client = redis.Redis(port=server.port)
    engine = redis_engine(tmp_path / "data", server.url)
    assert isinstance(engine.store, RedisStore)
    engine.store.lease_ms = 200
    paused: list[int] = []

    def pause_once(profile: Profile, facts: Facts | None, changes: Changes) -> None:
        if is_view_of(facts, "p1") and not paused:
            paused.append(changes.seq)
            time.sleep(0.3)  # a stop-the-world pause longer than the lease

    engine.context.hooks.insert(0, pause_once)
    try:
        assert await post(engine, view(0)) == (200, {"accepted": 1})
        assert_kept_for_later(*await post(engine, view(1)))
        assert engine.context.recover(engine.log) == 1
        assert await post(engine, view(2)) == (200, {"accepted": 1})
        assert await views_of(engine, "v1") == 3
        assert stream_seqs(client) == [1, 2, 3]
    finally:
        engine.close()
        client.close()


# -- A3: log positions are never handed out twice ----------------------------------------------


def row(n: int, visitor: str) -> LogRow:
    return LogRow(f"m{n}", n, n, "track", visitor, None, b"{}")


def test_the_log_never_hands_out_an_erased_position_again(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = EventLog.open(path)
    assert log.append_sync([row(1, "a"), row(2, "a"), row(3, "b"), row(4, "b")]) == 1
    assert log.erase(["b"], []) == 2  # the last rows of the log
    log.close()
    again = EventLog.open(path)
    try:
        assert again.last_seq == 4
        assert again.append_sync([row(5, "c")]) == 5
    finally:
        again.close()


def test_every_log_has_an_id_of_its_own_kept_across_opens(tmp_path: Path) -> None:
    first = EventLog.open(tmp_path / "a" / "events.db")
    other = EventLog.open(tmp_path / "b" / "events.db")
    try:
        assert first.log_id() is not None
        assert first.log_id() != other.log_id()
        kept = first.log_id()
    finally:
        first.close()
        other.close()
    again = EventLog.open(tmp_path / "a" / "events.db")
    try:
        assert again.log_id() == kept
    finally:
        again.close()


@pytest.fixture(params=["embedded", "redis"])
def store_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Settings naming the store under test (Redis: a prefix of the test's own)."""
    if request.param == "embedded":
        yield {}
        return
    with redis_namespace() as prefix:
        yield {"state_store": REDIS_URL, "redis_prefix": prefix, "worker_id": "w1"}


def engine_on(data_dir: Path, overrides: dict[str, Any]) -> Engine:
    return Engine(make_settings(data_dir, **overrides), clock=ManualClock(START))


async def test_events_after_erasing_the_end_of_the_log_are_applied_after_a_restart(
    store_settings: dict[str, Any], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    engine = engine_on(data_dir, store_settings)
    try:
        assert await post(engine, view(0, "stays"), view(0, "goes"), view(1, "goes"))
        async with client_for(engine, SECRET_KEY) as admin:
            assert (await admin.delete("/v1/profiles/goes")).status_code == 200
    finally:
        engine.close()
    engine = engine_on(data_dir, store_settings)
    try:
        assert await post(engine, view(0, "new")) == (200, {"accepted": 1})
        assert await views_of(engine, "new") == 1
    finally:
        engine.close()
    engine = engine_on(data_dir, store_settings)  # and once more: still applied once
    try:
        assert await views_of(engine, "new") == 1
        assert await views_of(engine, "stays") == 1
    finally:
        engine.close()


async def test_a_worker_with_a_new_data_dir_applies_its_new_log_from_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The same worker id on a new volume: Redis still holds the old log's position.
    with redis_namespace() as prefix:
        overrides = {"state_store": REDIS_URL, "redis_prefix": prefix, "worker_id": "w1"}
        old = engine_on(tmp_path / "old-volume", overrides)
        try:
            assert await post(old, *(view(n, "before") for n in range(5)))
        finally:
            old.close()
        with caplog.at_level(logging.WARNING, logger="intently.context.stage"):
            new = engine_on(tmp_path / "new-volume", overrides)
        try:
            assert await post(new, view(0, "after"), view(1, "after")) == (200, {"accepted": 2})
            assert await views_of(new, "after") == 2
            assert await views_of(new, "before") == 5
            assert "belongs to another event log" in caplog.text
        finally:
            new.close()
        again = engine_on(tmp_path / "new-volume", overrides)  # a restart replays nothing
        try:
            assert await views_of(again, "after") == 2
        finally:
            again.close()


async def test_an_embedded_store_whose_log_was_replaced_applies_the_new_log(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    engine = engine_on(data_dir, {})
    try:
        assert await post(engine, *(view(n, "before") for n in range(5)))
        settings: Settings = engine.settings
    finally:
        engine.close()
    for suffix in ("", "-wal", "-shm"):  # the log alone is lost (state.db is kept)
        Path(f"{settings.event_log_path}{suffix}").unlink(missing_ok=True)
    engine = engine_on(data_dir, {})
    try:
        assert isinstance(engine.store, EmbeddedStore)
        assert await post(engine, view(0, "after")) == (200, {"accepted": 1})
        assert await views_of(engine, "after") == 1
        assert await views_of(engine, "before") == 5
    finally:
        engine.close()


# -- D20: an event dated in the future ---------------------------------------------------------


async def test_an_event_dated_far_in_the_future_does_not_expire_other_visitors(
    store_settings: dict[str, Any], tmp_path: Path
) -> None:
    engine = engine_on(tmp_path / "data", store_settings)
    try:
        assert await post(engine, view(0, "regular"))
        # Accepted with the public write key; without sentAt its time is kept as sent.
        future = view(0, "time-traveller", timestamp="2199-01-01T00:00:00Z")
        assert await post(engine, future) == (200, {"accepted": 1})
        # Enough events for an expiry sweep (every 1,024 log positions).
        for start in range(0, 1500, 500):
            await post(engine, *(view(n, f"filler-{n}") for n in range(start, start + 500)))
        store = engine.store
        assert store.applied_seq > 1024
        # Nobody was forgotten, and no session ended.
        assert store.profile_count() == 1502
        assert store.live_sessions(0) == 1502
        assert await views_of(engine, "regular") == 1
        assert engine.context.watermark_ms <= int(START.timestamp() * 1000) + 10 * 60_000
    finally:
        engine.close()


# -- E: Redis Cluster --------------------------------------------------------------------------


def test_a_redis_cluster_without_its_slots_assigned_is_reported_at_start(
    private_redis: ServerFactory, tmp_path: Path
) -> None:
    # A node in cluster mode that no cluster was made of yet: nothing serves the slots.
    # (The cluster bus port is given: by default the port + 10000, past 65535 for some.)
    server = private_redis("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                           "--cluster-port", str(free_port()))  # fmt: skip
    with pytest.raises(BackendUnavailable) as raised:
        open_state_store(server.url, state_path=tmp_path / "state.db", flush_seconds=1,
                         worker="w1")  # fmt: skip
    message = str(raised.value)
    assert "Cluster" in message
    assert f"127.0.0.1:{server.port}" in message


def test_a_redis_cluster_is_used_slot_by_slot(redis_cluster: Any, tmp_path: Path) -> None:
    prefix = f"t-{tmp_path.name}:"
    store = open_state_store(redis_cluster.url, state_path=tmp_path / "state.db",
                             flush_seconds=1, worker="w1", prefix=prefix)  # fmt: skip
    try:
        assert isinstance(store, RedisStore)
        assert store.cluster
        assert "Redis Cluster node" in store.where
    finally:
        store.close()


def test_a_redis_cluster_database_other_than_0_is_a_config_error(
    redis_cluster: Any, tmp_path: Path
) -> None:
    url = redis_cluster.url.removesuffix("/0") + "/3"
    with pytest.raises(ConfigError, match="database 0 only"):
        open_state_store(url, state_path=tmp_path / "state.db", flush_seconds=1, worker="w1")


# -- Redis came back with less than this worker wrote -----------------------------------------


async def test_events_a_restored_redis_lost_are_applied_again_from_the_log(
    private_redis: ServerFactory, tmp_path: Path
) -> None:
    # As after a failover to a replica that had not yet received the last writes: Redis
    # comes back (the client reconnects by itself) holding an older state.
    server = private_redis()
    client = redis.Redis(port=server.port)
    engine = redis_engine(tmp_path / "data", server.url)
    try:
        assert await post(engine, view(0), view(1)) == (200, {"accepted": 2})
        client.save()  # the snapshot the "replica" comes back with
        assert await post(engine, view(2), view(3)) == (200, {"accepted": 2})
        server.stop()
        server.start()  # loads the snapshot: events 3 and 4 are gone from Redis
        client.close()
        client = redis.Redis(port=server.port)
        assert stream_seqs(client) == [1, 2]
        assert_kept_for_later(*await post(engine, view(4)))
        assert engine.context.recover(engine.log) == 3
        assert await views_of(engine, "v1") == 5
        assert stream_seqs(client) == [1, 2, 3, 4, 5]
    finally:
        engine.close()
        client.close()


def test_a_commit_over_a_lost_position_is_refused_before_writing(tmp_path: Path) -> None:
    with redis_namespace() as prefix:
        store = RedisStore(redis.Redis.from_url(REDIS_URL), prefix=prefix, worker="w1")
        try:
            store.commit(Changes(1))
            store.commit(Changes(2))
            store.client.hset(f"{prefix}worker:{{w1}}", "applied_seq", 1)  # lost: 2
            changes = Changes(3)
            changes.put(ProfileRules(ContextSettings()).new("p_late", 1_000))
            with pytest.raises(StoreUnavailable, match="lost writes"):
                store.commit(changes)
            assert store.get("p_late") is None  # nothing written
            assert store.recover()
            assert store.applied_seq == 1
            store.commit(Changes(2))  # what the catch-up does: from Redis's position on
            store.commit(changes)
            assert store.get("p_late") is not None
        finally:
            store.close()
