"""State durability: a clean restart, a crash that leaves `state.db` stale and a kill -9 of a
real server all bring back exactly the profiles that were served before; an erasure leaves
no byte of the person on disk and is not undone by a restart or by a replay of the log."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from intently import Engine, ManualClock
from intently.context import stage
from intently.context.settings import ContextSettings
from support import (
    IPHONE,
    SECRET_KEY,
    START,
    WRITE_KEY,
    client_for,
    free_port,
    make_settings,
    track,
    wait_ready,
)

Event = dict[str, Any]

# -- a varied story: anonymous visitors, products, searches, identify, alias -----------------

ALICE, BOB, CAROL, ERIN = "u-alice", "u-bob", "u-carol", "u-erin"
A1, A2, B1, C1, D1 = "anon-a1", "anon-a2", "anon-b1", "anon-c1", "anon-d1"
PEOPLE = [ALICE, A1, A2, BOB, B1, CAROL, C1, D1, ERIN]


def product(sku: str, category: str, brand: str, price: float, **more: Any) -> dict[str, Any]:
    return {"product_id": sku, "category": category, "brand": brand, "price": price, **more}


def story(base: datetime) -> tuple[list[Event], list[Event]]:
    """Two phases of events, timestamped `base` + minutes. Phase 2 merges profiles that
    phase 1 created (identify, alias), so a state store persisted between the phases holds
    profiles that phase 2 removes."""

    def event(ids: dict[str, str], minute: float, **fields: Any) -> Event:
        context: dict[str, Any] = {"ip": "8.8.8.8", "userAgent": IPHONE}
        context.update(fields.pop("context", {}))
        at = (base + timedelta(minutes=minute)).isoformat()
        return {**fields, **ids, "timestamp": at, "context": context}

    def anon(anonymous_id: str) -> dict[str, str]:
        return {"anonymousId": anonymous_id}

    def user(user_id: str) -> dict[str, str]:
        return {"userId": user_id}

    def page(ids: dict[str, str], minute: float, path: str, name: str) -> Event:
        return event(ids, minute, type="page", name=name, context={"page": {"path": path}})

    def act(ids: dict[str, str], minute: float, name: str, properties: Any, **more: Any) -> Event:
        return event(ids, minute, type="track", event=name, properties=properties, **more)

    def identify(anonymous_id: str, user_id: str, minute: float, traits: Any) -> Event:
        ids = {"anonymousId": anonymous_id, "userId": user_id}
        return event(ids, minute, type="identify", traits=traits)

    def alias(previous_id: str, user_id: str, minute: float) -> Event:
        return event({"previousId": previous_id, "userId": user_id}, minute, type="alias")

    yoga_1 = product("sku-yoga-1", "yoga", "Lululemon", 88.0, quantity=1)
    phase_1 = [
        page(anon(A1), 0, "/", "Home"),
        act(anon(A1), 1, "Product Viewed", product("sku-run-1", "running", "Nike", 120.0)),
        act(anon(A1), 2, "Products Searched", {"query": "Trail  Shoes"}),
        identify(A1, ALICE, 3, {"email": "alice@example.test", "name": "Alice", "plan": "gold"}),
        act(anon(B1), 30, "Product Viewed", product("sku-hike-1", "hiking", "Salomon", 150.0)),
        page(anon(B1), 31, "/shipping-and-returns", "Shipping"),
        act(user(CAROL), 40, "Product Viewed", product("sku-yoga-1", "yoga", "Lululemon", 88.0)),
        act(user(CAROL), 45, "Order Completed", {"order_id": "o-1", "products": [yoga_1]}),
        act(anon(D1), 50, "Products Searched", {"query": "yoga mat"}),
        page(anon(D1), 51, "/yoga", "Yoga"),
        act(anon(A2), 600, "Product Viewed", product("sku-run-2", "running", "Asics", 95.5)),
        act(anon(A2), 601, "Product Added", product("sku-run-2", "running", "Asics", 95.5,
                                                    quantity=2)),
        act(anon(C1), 1500, "Product Viewed", product("sku-yoga-2", "yoga", "Manduka", 60.0)),
    ]  # fmt: skip
    phase_2 = [
        identify(A2, ALICE, 602, {}),  # merges the phone's anonymous profile into Alice's
        alias(B1, BOB, 1600),  # a new userId for an anonymous profile
        alias(C1, CAROL, 1601),  # merges two existing profiles
        act(user(ALICE), 2000, "Product Viewed", product("sku-trail-3", "trail", "Hoka", 140.0)),
        act(user(ALICE), 2001, "Product Added", product("sku-trail-3", "trail", "Hoka", 140.0,
                                                        quantity=1)),
        act(user(BOB), 2002, "Products Searched", {"query": "Hiking Poles"}),
        # Alice's laptop, another user, no reset: an identity conflict, a new person.
        identify(A1, ERIN, 2003, {"email": "erin@example.test"}),
        act(anon(D1), 2004, "Product Viewed", product("sku-yoga-9", "yoga", "Jade", 70.0),
            context={"consent": {"categoryPreferences": {"personalization": False}}}),
        act(anon(D1), 2005, "Product Viewed", product("sku-yoga-10", "pilates", "Jade", 30.0)),
    ]  # fmt: skip
    for number, item in enumerate(phase_1 + phase_2):
        item["messageId"] = f"story-{number:03d}"
    return phase_1, phase_2


def check_story(bodies: dict[str, Any], merged_away: Iterable[str]) -> None:
    """The story did what it says, so comparing its state after a restart means something."""
    alice, bob, carol, dave, erin = (bodies[i] for i in (ALICE, BOB, CAROL, D1, ERIN))
    assert (alice["user_ids"], alice["anonymous_ids"]) == ([ALICE], [A1, A2])
    assert bodies[A1]["id"] == bodies[A2]["id"] == alice["id"]
    assert alice["counts"]["Product Added"] == 2
    assert set(alice["categories"]) == {"running", "trail"}
    assert alice["session"]["cart"]["count"] == 1
    assert alice["traits"]["email"] == "alice@example.test"
    assert (bob["user_ids"], bob["anonymous_ids"]) == ([BOB], [B1])
    assert (carol["user_ids"], carol["anonymous_ids"]) == ([CAROL], [C1])
    assert carol["purchases"]["count"] == 1
    assert bodies[C1]["id"] == carol["id"]
    assert (erin["user_ids"], erin["anonymous_ids"]) == ([ERIN], [])
    assert erin["id"] != alice["id"]
    assert dave["user_ids"] == []
    assert dave["consent"]["personalization"] is False
    assert dave["categories"] == {}
    assert len({alice["id"], bob["id"], carol["id"], dave["id"], erin["id"]}) == 5
    for profile_id in merged_away:
        assert profile_id not in bodies


# -- test 1: in-process restart, clean and after a crash ------------------------------------

# What survives a crash: the log (WAL mode, so with its -wal) and the state store.
DURABLE_FILES = ("events.db", "events.db-wal", "state.db", "state.db-wal", "keys.json")


def copy_as_crashed(source: Path, target: Path) -> None:
    """What a kill -9 of the engine would leave: its files as they are now, without a
    flush or a checkpoint (and without the -shm index, which SQLite rebuilds from the
    WAL). Nothing is being written meanwhile: every request was answered."""
    target.mkdir()
    for name in DURABLE_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)


async def served(engine: Engine, ids: Iterable[str]) -> dict[str, tuple[int, str]]:
    """GET /v1/profiles/{id} for each id: (status, raw JSON)."""
    async with client_for(engine, SECRET_KEY) as admin:
        answers = {}
        for any_id in ids:
            response = await admin.get(f"/v1/profiles/{any_id}")
            answers[any_id] = (response.status_code, response.text)
        return answers


def stored_state(engine: Engine) -> dict[str, Any]:
    store = engine.store
    return {
        "applied_seq": store.applied_seq,
        "profile_count": store.profile_count(),
        "profiles": {p.id: msgspec.to_builtins(p) for p in store.profiles()},
        "links": store.links(),
    }


async def post_all(engine: Engine, events: list[Event]) -> None:
    async with client_for(engine) as client:
        response = await client.post("/v1/events", json={"batch": events})
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": len(events)}


@pytest.mark.anyio
@pytest.mark.parametrize("shutdown", ["close", "crash"])
async def test_restart_restores_the_state_it_served(
    tmp_path: Path, clock: ManualClock, shutdown: str
) -> None:
    phase_1, phase_2 = story(START - timedelta(days=3))
    data_dir = tmp_path / "data"
    # The store writes state.db only when told to (flush, close): the test decides what
    # it holds. In production it writes about once a second.
    settings = make_settings(data_dir, state_flush_seconds=3600)
    engine = Engine(settings, clock=clock)
    try:
        await post_all(engine, phase_1)
        merged_away = [engine.context.lookup(i).id for i in (A2, C1)]  # type: ignore[union-attr]
        engine.store.flush()  # state.db now reflects phase 1 ...
        assert engine.store.applied_seq == len(phase_1)
        await post_all(engine, phase_2)  # ... and not phase 2, which only the log holds
        assert engine.log.last_seq == engine.store.applied_seq == len(phase_1) + len(phase_2)

        people = await served(engine, PEOPLE)
        bodies = {i: msgspec.json.decode(text) for i, (status, text) in people.items()}
        assert {status for status, _ in people.values()} == {200}
        check_story(bodies, merged_away)
        # Ask by every id: userIds, anonymousIds, canonical ids, and the canonical ids of
        # the profiles merged away (404, and they must stay gone).
        ids = [*PEOPLE, *sorted({body["id"] for body in bodies.values()}), *merged_away]
        before = await served(engine, ids)
        assert [before[i][0] for i in merged_away] == [404, 404]
        state_before = stored_state(engine)
        assert state_before["profile_count"] == 5

        if shutdown == "crash":
            reopen_dir = tmp_path / "crashed"
            copy_as_crashed(data_dir, reopen_dir)
    finally:
        engine.close()
    if shutdown == "close":
        reopen_dir = data_dir

    for attempt in ("first", "second"):
        reopened = Engine(make_settings(reopen_dir, state_flush_seconds=3600), clock=clock)
        try:
            # After a clean close state.db is current; after the crash it is at the end of
            # phase 1, and the engine re-applies exactly phase 2 from the log. (The second
            # opening follows a clean close of the first: nothing left to re-apply.)
            stale = shutdown == "crash" and attempt == "first"
            assert reopened.context.applied == (len(phase_2) if stale else 0)
            assert reopened.log.unclean_shutdown is stale
            assert stored_state(reopened) == state_before
            assert await served(reopened, ids) == before
        finally:
            reopened.close()


@pytest.mark.anyio
async def test_crash_recovery_expires_what_the_crashed_run_expired(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Expiry sweeps run at fixed log positions with the event-time watermark saved in the
    state: the crashed run swept (and forgot an idle visitor) at an event that the
    recovering run re-applies, so recovery must forget the visitor at the same point and
    the returning visit must not be added to the old history. (Found as a defect: sweeps
    were once counted in memory from each start.)"""
    data_dir = tmp_path / "data"
    engine = Engine(make_settings(data_dir, state_flush_seconds=3600), clock=clock)
    retention = timedelta(milliseconds=ContextSettings().anonymous_retention_ms)
    old = START - retention - timedelta(days=2)
    try:
        # A visitor, then silence beyond the anonymous retention while another visitor is
        # active: the sweep at the run's _SWEEP_EVERY-th event forgets the first one, who
        # then returns as a new anonymous profile.
        await post_all(engine, [track(anonymousId="x", timestamp=old.isoformat())])
        engine.store.flush()  # state.db: seq 1, the visitor's old profile
        fillers = [track(anonymousId="f") for _ in range(stage._SWEEP_EVERY - 1)]
        for start in range(0, len(fillers), 500):
            await post_all(engine, fillers[start : start + 500])
        await post_all(engine, [track(anonymousId="x")])
        before = await served(engine, ["x", "f"])
        state_before = stored_state(engine)
        body = msgspec.json.decode(before["x"][1])
        if body["counts"] != {"Product Viewed": 1} or body["first_seen"] != engine.now_ms():
            pytest.fail(f"precondition: the idle visitor was not expired before the crash: {body}")
        copy_as_crashed(data_dir, tmp_path / "crashed")
    finally:
        engine.close()
    reopened = Engine(make_settings(tmp_path / "crashed", state_flush_seconds=3600), clock=clock)
    try:
        if reopened.context.applied != stage._SWEEP_EVERY:  # the tail after seq 1
            pytest.fail(f"precondition: re-applied {reopened.context.applied} events")
        after = await served(reopened, ["x", "f"])
        # Today: {"Product Viewed": 2}, first_seen 32 days ago, 2 sessions.
        assert msgspec.json.decode(after["x"][1])["counts"] == {"Product Viewed": 1}
        assert after == before
        assert stored_state(reopened) == state_before
    finally:
        reopened.close()


# -- test 2: kill -9 of a real server -----------------------------------------------------------


@dataclass
class Read:
    status: int
    body: Any
    # Bounds of the server's "now" for this read (wall clock, ms).
    start_ms: int
    end_ms: int


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Server:
    """`intently serve` in a subprocess, its output in a file."""

    def __init__(self, data_dir: Path, output: Path) -> None:
        self.port = free_port()
        self.output = output
        environment = {k: v for k, v in os.environ.items() if not k.startswith("INTENTLY_")}
        environment.update(
            INTENTLY_WRITE_KEY=WRITE_KEY,
            INTENTLY_SECRET_KEY=SECRET_KEY,
            # The store then writes state.db only on a clean shutdown: at the kill, state.db
            # is deterministically stale, and the restart must re-apply the log tail.
            INTENTLY_STATE_FLUSH_SECONDS="3600",
        )
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "intently", "serve", "--port", str(self.port),
                 "--data-dir", str(data_dir), "--log-level", "info"],
                env=environment, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_ready(self.port, self.process)
        except BaseException:
            self.kill()
            raise
        self.writer = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {WRITE_KEY}"},
            timeout=10,
        )
        self.admin = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
            timeout=10,
        )

    def post(self, body: Any) -> Any:
        response = self.writer.post("/v1/events", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def read(self, ids: Iterable[str]) -> dict[str, Read]:
        reads = {}
        for any_id in ids:
            start = now_ms()
            response = self.admin.get(f"/v1/profiles/{any_id}")
            reads[any_id] = Read(response.status_code, response.json(), start, now_ms())
        return reads

    def log_text(self) -> str:
        return self.output.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._close_clients()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self._close_clients()
        assert self.process.returncode in (0, -signal.SIGTERM), self.log_text()

    def _close_clients(self) -> None:
        for client in (getattr(self, "writer", None), getattr(self, "admin", None)):
            if client is not None:
                client.close()


# describe() reads some fields at the server's "now", the wall clock at request time:
# - scores.churn_risk.value and .idle_ms grow with the time since last_seen; idle_ms must
#   grow by the time between the two reads, and value is 1 - 2**(-idle/expected_return);
# - categories and brands (profile, 30-day half-life) and session.categories and
#   session.brands (10-minute half-life) are forward-decayed: every entry of one map is
#   divided by the same 2**(age / half_life), so keys, order and ratios are fixed and the
#   common factor must match the time between the reads;
# - blended.categories and .brands normalize those maps, so the factor cancels: equal up
#   to float rounding.
# Everything else depends on the events only and must be identical.
SETTINGS = ContextSettings()
DECAYED = {
    ("categories",): SETTINGS.profile_half_life_ms,
    ("brands",): SETTINGS.profile_half_life_ms,
    ("session", "categories"): SETTINGS.session_half_life_ms,
    ("session", "brands"): SETTINGS.session_half_life_ms,
}
BLENDED = (("blended", "categories"), ("blended", "brands"))


def _pop(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    return parent.pop(path[-1])


def assert_same_profile(any_id: str, before: Read, after: Read) -> None:
    assert after.status == before.status, (any_id, after.body)
    if before.status != 200:
        assert after.body == before.body
        return
    exact_before, exact_after = copy.deepcopy(before.body), copy.deepcopy(after.body)
    # The time between the two reads, as bounds on the server's two "now"s (+-1 ms for
    # the truncation to ms; two reads can fall in one millisecond, and the server's "now"
    # does not go back).
    least = max(0, after.start_ms - before.end_ms - 1)
    most = after.end_ms - before.start_ms + 1

    churn_before = _pop(exact_before, ("scores", "churn_risk"))
    churn_after = _pop(exact_after, ("scores", "churn_risk"))
    assert churn_after["expected_return_ms"] == churn_before["expected_return_ms"]
    assert least <= churn_after["idle_ms"] - churn_before["idle_ms"] <= most, any_id
    for churn in (churn_before, churn_after):
        expected = 1.0 - 2.0 ** (-churn["idle_ms"] / churn["expected_return_ms"])
        assert churn["value"] == pytest.approx(expected, rel=1e-12)

    for path, half_life in DECAYED.items():
        old, new = _pop(exact_before, path), _pop(exact_after, path)
        assert list(new) == list(old), (any_id, path)
        factors = [new[key] / old[key] for key in old]
        for factor in factors:
            assert factor == pytest.approx(factors[0], rel=1e-12), (any_id, path)
            assert 2.0 ** (-most / half_life) * (1 - 1e-12) <= factor, (any_id, path)
            assert factor <= 2.0 ** (-least / half_life) * (1 + 1e-12), (any_id, path)
    for path in BLENDED:
        old, new = _pop(exact_before, path), _pop(exact_after, path)
        assert list(new) == list(old), (any_id, path)
        assert new == pytest.approx(old, rel=1e-12), (any_id, path)

    assert exact_after == exact_before, any_id


def assert_same_profiles(before: dict[str, Read], after: dict[str, Read]) -> None:
    assert after.keys() == before.keys()
    for any_id in before:
        assert_same_profile(any_id, before[any_id], after[any_id])


@pytest.mark.slow
def test_kill_9_of_the_server_keeps_every_profile(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    phase_1, phase_2 = story(base)

    # Run 1: phase 1, then a clean shutdown, which writes the state store.
    server = Server(data_dir, tmp_path / "run-1.log")
    try:
        assert server.post({"batch": phase_1}) == {"accepted": len(phase_1)}
        merged_away = [server.read([i])[i].body["id"] for i in (A2, C1)]
        first = server.read([*PEOPLE, *merged_away])
    finally:
        server.stop()

    # Run 2: phase 1 comes back from state.db alone; phase 2 goes to the log (state.db
    # is not written again before the kill).
    server = Server(data_dir, tmp_path / "run-2.log")
    try:
        assert "re-applied" not in server.log_text()
        assert_same_profiles(first, server.read(first))
        assert server.post({"batch": phase_2}) == {"accepted": len(phase_2)}
        people = server.read(PEOPLE)
        check_story({i: read.body for i, read in people.items()}, merged_away)
        canonical = sorted({read.body["id"] for read in people.values()})
        before_kill = server.read([*PEOPLE, *canonical, *merged_away])
        assert [before_kill[i].status for i in merged_away] == [404, 404]
    finally:
        server.kill()
    assert server.process.returncode == -signal.SIGKILL

    # Run 3: state.db is at the end of phase 1; the log tail (phase 2) is re-applied.
    server = Server(data_dir, tmp_path / "run-3.log")
    try:
        output = server.log_text()
        assert "did not close cleanly" in output
        assert f"re-applied {len(phase_2)} logged events" in output, output
        assert_same_profiles(before_kill, server.read(before_kill))

        # A retry of an event from before the kill is known (the log primes deduplication)
        # and changes nothing.
        retried = server.read([ALICE])
        assert server.post(phase_2[4]) == {"accepted": 0, "duplicates": 1}
        assert_same_profiles(retried, server.read([ALICE]))

        # A new event after the restart is applied on top of the recovered state.
        alice = before_kill[ALICE].body
        new = product("sku-climb-1", "climbing", "Black Diamond", 60.0)
        at = datetime.now(UTC).isoformat()
        event = {"type": "track", "event": "Product Viewed", "userId": ALICE,
                 "timestamp": at, "properties": new}  # fmt: skip
        assert server.post(event) == {"accepted": 1}
        updated = server.read([ALICE, A1, A2])
        body = updated[ALICE].body
        assert updated[A1].body["id"] == updated[A2].body["id"] == body["id"]
        assert body["id"] == alice["id"]
        assert body["counts"]["Product Viewed"] == alice["counts"]["Product Viewed"] + 1
        assert body["counts"]["Product Added"] == alice["counts"]["Product Added"]
        assert "climbing" in body["categories"]
        assert "climbing" in body["session"]["categories"]
        assert body["last_seen"] > alice["last_seen"]
        assert body["sessions"] == alice["sessions"] + 1  # days later: a new session
        assert body["session"]["recent_products"] == ["sku-climb-1"]
        assert body["traits"] == alice["traits"]
    finally:
        server.stop()


# -- test 3: erasure ----------------------------------------------------------------------------

ERASE_ANON = "anon-ERASEME-7f3a"
ERASE_USER = "user-ERASEME-91c2"
ERASE_EMAIL = "eraseme-91c2@example.test"
ERASE_SKU = "sku-ERASEME-0b7d"
ERASE_QUERY = "eraseme-5d1e-boots"
KEEP_ANON, KEEP_USER = "anon-keeper-1", "user-keeper-1"


def files_holding(data_dir: Path, needles: Iterable[str]) -> dict[str, list[str]]:
    """needle -> the files under `data_dir` (recursively) whose bytes contain it."""
    found: dict[str, list[str]] = {}
    for path in sorted(data_dir.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                if needle.encode() in data:
                    found.setdefault(needle, []).append(str(path.relative_to(data_dir)))
    return found


def checkpoint(database: Path) -> None:
    """Move the WAL into the database file, as the engine's checkpoints do sooner or later,
    so the person is in the main files, not only in WALs that erasure truncates."""
    connection = sqlite3.connect(database)
    try:
        # Busy while the engine's own checkpointer is at work: poll until it is done.
        deadline = time.monotonic() + 10
        while connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
            assert time.monotonic() < deadline, f"{database}: the WAL stays busy"
            time.sleep(0.01)
    finally:
        connection.close()


def act(ids: dict[str, str], name: str, properties: dict[str, Any]) -> Event:
    context = {"ip": "8.8.8.8", "userAgent": IPHONE}
    return {"type": "track", "event": name, **ids, "properties": properties, "context": context}


def erasure_rounds() -> list[list[Event]]:
    """The person to erase, a person to keep and bystanders, interleaved over three rounds
    (so the person's rows share pages with others' and the store rewrites them)."""
    boots = product(ERASE_SKU, "boots", "Zamberlan", 210.0, name="the erased person's boots")
    erase_anon, erase_user = {"anonymousId": ERASE_ANON}, {"userId": ERASE_USER}
    erased = [
        [
            act(erase_anon, "Product Viewed", boots),
            act(erase_anon, "Products Searched", {"query": ERASE_QUERY}),
            {"type": "page", "anonymousId": ERASE_ANON, "name": "Boots"},
        ],
        [
            {"type": "identify", **erase_anon, **erase_user, "traits": {"email": ERASE_EMAIL}},
            act(erase_user, "Product Added", boots),
        ],
        [act(erase_user, "Order Completed", {"order_id": "o-ERASEME", "products": [boots]})],
    ]
    tent = product("sku-keeper-1", "tents", "MSR", 300.0)
    kept = [
        [act({"anonymousId": KEEP_ANON}, "Product Viewed", tent)],
        [
            {"type": "identify", "anonymousId": KEEP_ANON, "userId": KEEP_USER,
             "traits": {"email": "keeper@example.test"}},
            act({"userId": KEEP_USER}, "Product Added", tent),
        ],
        [act({"userId": KEEP_USER}, "Product Viewed", tent)],
    ]  # fmt: skip
    rounds = []
    for number in range(3):
        batch = [
            act({"anonymousId": f"bystander-{b}"}, "Product Viewed", product(
                f"sku-b{b}-{number}", f"cat-{b % 4}", f"brand-{b % 3}", 10.0 + b,
                name="a bystander's product " * 8))
            for b in range(20)
        ]  # fmt: skip
        for offset, event in enumerate(erased[number]):
            batch.insert(2 + 6 * offset, event)
        for offset, event in enumerate(kept[number]):
            batch.insert(5 + 6 * offset, event)
        rounds.append(batch)
    return rounds


ERASED_EVENTS = 7  # 3 + 2 + 1 above, and the consent update sent through the API


@pytest.mark.anyio
async def test_erasure_leaves_nothing_on_disk(tmp_path: Path, clock: ManualClock) -> None:
    data_dir = tmp_path / "data"
    engine = Engine(make_settings(data_dir), clock=clock)
    try:
        for batch in erasure_rounds():
            await post_all(engine, batch)
            clock.advance(timedelta(minutes=5))
            engine.store.flush()  # several versions of the profile reach state.db
        async with client_for(engine, SECRET_KEY) as admin:
            consent = await admin.put(f"/v1/profiles/{ERASE_ANON}/consent",
                                      json={"marketing": False})  # fmt: skip
            assert consent.status_code == 200
            canonical = engine.context.lookup(ERASE_USER).id  # type: ignore[union-attr]
            assert engine.context.lookup(ERASE_ANON).id == canonical  # type: ignore[union-attr]
            keeper_export = (await admin.get(f"/v1/profiles/{KEEP_USER}/export")).json()
            keeper_profile = (await admin.get(f"/v1/profiles/{KEEP_ANON}")).text
            # A decision for the person, logged with their ids and features.
            decided = await admin.post("/v1/decide", json={
                "anonymousId": ERASE_ANON, "placements": [{"id": "pdp_recs"}],
                "context": {"product_id": ERASE_SKU}})  # fmt: skip
            assert decided.status_code == 200
            engine.decisions.flush()
        assert len(keeper_export["events"]) == 4
        assert keeper_export["identities"] == {
            "user_ids": [KEEP_USER],
            "anonymous_ids": [KEEP_ANON],
        }
        profiles, events = engine.store.profile_count(), engine.log.count()

        needles = [ERASE_ANON, ERASE_USER, ERASE_EMAIL, ERASE_SKU, ERASE_QUERY, canonical]
        # The scan can see the person: in both databases' main files, before erasure.
        engine.store.flush()
        checkpoint(data_dir / "events.db")
        checkpoint(data_dir / "state.db")
        checkpoint(data_dir / "decisions.db")
        held = files_holding(data_dir, needles)
        for needle in needles:
            where = set(held.get(needle, []))
            assert "state.db" in where, needle
            assert needle == canonical or "events.db" in where, needle
        assert "decisions.db" in held[ERASE_ANON]

        async with client_for(engine, SECRET_KEY) as admin:
            erased = await admin.delete(f"/v1/profiles/{ERASE_USER}")
            assert erased.status_code == 200, erased.text
            assert erased.json() == {"profile": canonical, "events": ERASED_EVENTS,
                                     "identities": 2, "decisions": 1}  # fmt: skip
            for any_id in (ERASE_USER, ERASE_ANON, canonical):
                assert (await admin.get(f"/v1/profiles/{any_id}")).status_code == 404
                assert (await admin.get(f"/v1/profiles/{any_id}/export")).status_code == 404
            assert (await admin.get(f"/v1/profiles/{KEEP_ANON}")).text == keeper_profile
            assert (await admin.get(f"/v1/profiles/{KEEP_USER}/export")).json() == keeper_export
        assert engine.store.profile_count() == profiles - 1
        assert engine.log.count() == events - ERASED_EVENTS

        # Gone from disk while the engine runs: erasure does not wait for a shutdown.
        running = {p.name for p in data_dir.iterdir()}
        assert {"events.db", "state.db"} <= running
        assert files_holding(data_dir, needles) == {}
    finally:
        engine.close()
    assert files_holding(data_dir, needles) == {}

    # Not brought back by a restart (state.db + log tail) ...
    for rebuild in (False, True):
        if rebuild:  # ... nor by rebuilding the whole state from the log.
            for name in ("state.db", "state.db-wal", "state.db-shm"):
                (data_dir / name).unlink(missing_ok=True)
        reopened = Engine(make_settings(data_dir), clock=clock)
        try:
            assert reopened.context.applied == (events - ERASED_EVENTS if rebuild else 0)
            assert reopened.store.profile_count() == profiles - 1
            async with client_for(reopened, SECRET_KEY) as admin:
                for any_id in (ERASE_USER, ERASE_ANON, canonical):
                    assert (await admin.get(f"/v1/profiles/{any_id}")).status_code == 404
                assert (await admin.get(f"/v1/profiles/{KEEP_ANON}")).text == keeper_profile
                export = (await admin.get(f"/v1/profiles/{KEEP_USER}/export")).json()
                assert export == keeper_export
        finally:
            reopened.close()
        assert files_holding(data_dir, needles) == {}


@pytest.mark.anyio
async def test_a_trait_beyond_64_bits_is_written_and_read_back(
    tmp_path: Path, clock: ManualClock
) -> None:
    """MessagePack cannot hold an integer beyond 64 bits; free-form traits can (as events
    can). Such a profile is kept as JSON: before, it failed every later write of the
    store, and an unrelated erasure, which writes the store, answered 500."""
    data_dir = tmp_path / "data"
    engine = Engine(make_settings(data_dir), clock=clock)
    traits = {"big": 2**70, "small": -(2**70), "plain": 3}
    try:
        async with client_for(engine) as client:
            identify = {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": traits}
            assert (await client.post("/v1/events", json=identify)).status_code == 200
            other = track(anonymousId="other")
            assert (await client.post("/v1/events", json=other)).status_code == 200
        async with client_for(engine, SECRET_KEY) as admin:
            assert (await admin.delete("/v1/profiles/other")).status_code == 200
    finally:
        engine.close()
    reopened = Engine(make_settings(data_dir), clock=clock)
    try:
        profile = reopened.context.lookup("u1")
        assert profile is not None
        assert profile.traits == traits
    finally:
        reopened.close()
