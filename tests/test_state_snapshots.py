"""The embedded store writes consistent cuts without stopping the world: what `state.db`
holds at any moment is exactly the state as it was after one committed change, although
the profiles of a cut are encoded a few at a time while later changes go on.

Checked against a from-scratch record: after every commit the test keeps a copy of every
profile; whatever `state.db` holds (read as a crash would leave it: its last committed
transaction) must equal the copy taken at the log position it records."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intently.context.profile import Profile, ProfileRules
from intently.context.settings import ContextSettings
from intently.stores import embedded
from intently.stores.embedded import EmbeddedStore
from intently.stores.protocol import Changes

RULES = ProfileRules(ContextSettings())
_decode = msgspec.msgpack.Decoder(Profile).decode

# (profile number, what to do): bump a counter, remove the profile, or read it (a read may
# hand the profile to a caller that changes it, so it takes the cut's copy too).
Step = tuple[int, str]
steps = st.lists(
    st.tuples(st.integers(0, 11), st.sampled_from(["bump", "bump", "bump", "remove", "read"])),
    min_size=1,
    max_size=120,
)


def persisted(path: Path) -> tuple[int, dict[str, bytes]]:
    """What a crash would leave: the last committed transaction of `state.db`."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        connection.execute("BEGIN")
        meta = dict(connection.execute("SELECT key, value FROM meta"))
        rows = dict(connection.execute("SELECT id, body FROM profiles"))
        connection.execute("COMMIT")
    finally:
        connection.close()
    return int(meta.get("applied_seq", 0)), rows


def snapshot(store: EmbeddedStore) -> dict[str, bytes]:
    return {p.id: msgspec.msgpack.encode(p) for p in store._profiles.values()}


@settings(max_examples=60, deadline=None)
@given(steps, st.integers(1, 5))
def test_every_write_is_the_state_after_one_commit(
    tmp_path_factory: pytest.TempPathFactory, plan: list[Step], per_commit: int
) -> None:
    directory = tmp_path_factory.mktemp("snapshots")
    path = directory / "state.db"
    original = embedded._ENCODE_PER_COMMIT
    embedded._ENCODE_PER_COMMIT = per_commit  # small, so cuts stay open across commits
    store = EmbeddedStore(path, flush_seconds=0)  # a new cut as soon as one is written
    history: dict[int, dict[str, bytes]] = {0: {}}
    try:
        for seq, (number, action) in enumerate(plan, 1):
            profile_id = f"p{number}"
            changes = Changes(seq)
            profile = store.get(profile_id)
            if action == "read":
                pass
            elif action == "remove" and profile is not None:
                changes.remove(profile)
            elif action == "bump":
                if profile is None:
                    profile = RULES.new(profile_id, seq)
                profile.last_ms = seq
                profile.counts["bump"] = profile.counts.get("bump", 0) + 1
                changes.put(profile)
            store.commit(changes)
            history[seq] = snapshot(store)
            applied, rows = persisted(path)
            assert rows == history[applied], f"state.db at seq {applied} differs"
        store.flush()
        applied, rows = persisted(path)
        assert applied == len(plan)
        assert rows == history[applied]
        # And the flushed file loads back as the same profiles.
        store.close()
        reopened = EmbeddedStore(path)
        assert snapshot(reopened) == history[applied]
        reopened.close()
    finally:
        embedded._ENCODE_PER_COMMIT = original


def test_a_profile_changed_before_its_turn_is_written_as_it_was_at_the_cut(
    tmp_path: Path,
) -> None:
    original = embedded._ENCODE_PER_COMMIT
    embedded._ENCODE_PER_COMMIT = 0  # nothing encoded by commits: only copy-on-write
    try:
        store = EmbeddedStore(tmp_path / "state.db", flush_seconds=0)
        changes = Changes(1)
        changes.put(RULES.new("p1", 1))
        store.commit(changes)  # opens a cut holding p1 as of seq 1
        profile = store.get("p1")  # about to change: the cut keeps its copy first
        assert profile is not None
        profile.last_ms = 99
        changes = Changes(2)
        changes.put(profile)
        store.commit(changes)  # the cut is complete: written in the background
        assert store._writing is not None
        store._writing.result()
        applied, rows = persisted(tmp_path / "state.db")
        assert applied == 1
        assert _decode(rows["p1"]).last_ms == 1
        store.close()
    finally:
        embedded._ENCODE_PER_COMMIT = original


def test_a_failed_write_goes_into_the_next_one(tmp_path: Path) -> None:
    """A write that fails (disk full, say) loses nothing: what it held is written with the
    next one, and the position recorded never runs ahead of what is on disk."""
    store = EmbeddedStore(tmp_path / "state.db", flush_seconds=0)
    real_write = store._write
    failures = [OSError("disk full")]

    def failing_once(batch: embedded._Batch) -> None:
        if failures:
            raise failures.pop()
        real_write(batch)

    store._write = failing_once  # type: ignore[method-assign]
    expected: dict[str, bytes] = {}
    for seq, name in enumerate(["a", "b", "a", "c", "b"], 1):
        changes = Changes(seq)
        profile = store.get(name) or RULES.new(name, seq)
        profile.last_ms = seq
        changes.put(profile)
        store.commit(changes)
        expected = snapshot(store)
        if store._writing is not None:
            embedded.futures_wait([store._writing])
    assert not failures  # the first background write did fail
    store.flush()
    applied, rows = persisted(tmp_path / "state.db")
    assert applied == 5
    assert rows == expected
    store.close()


def test_ticks_write_what_a_burst_left_when_no_event_follows(tmp_path: Path) -> None:
    original = embedded._ENCODE_PER_COMMIT
    embedded._ENCODE_PER_COMMIT = 0  # commits alone never finish a cut here
    try:
        store = EmbeddedStore(tmp_path / "state.db", flush_seconds=0)
        for seq in range(1, 101):
            changes = Changes(seq)
            changes.put(RULES.new(f"p{seq}", seq))
            store.commit(changes)
        expected = snapshot(store)
        assert persisted(tmp_path / "state.db")[0] < 100  # the burst is not all written
        for _ in range(3):  # a cut of the rest, encoded and written, by ticks alone
            store.tick()
            if store._writing is not None:
                embedded.futures_wait([store._writing])
        applied, rows = persisted(tmp_path / "state.db")
        assert applied == 100
        assert rows == expected
        store.close()
    finally:
        embedded._ENCODE_PER_COMMIT = original
