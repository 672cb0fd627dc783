"""The decision log's batches: records encoded one by one on the deciding thread make the
same bytes as the list encoded at once, and read back as written."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from intently.act.decisions import DecisionLog, DecisionLogReader, DecisionRecord, batch_body


def record(n: int) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{n}", at_ms=1_000 + n, placement="pdp_recs", visitor=f"a:v{n % 7}",
        policy="slate", policy_version="v1", items=[f"p{n}"], propensities=[0.5],
        features={"device": "mobile", "pages": n},
    )  # fmt: skip


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 65_535, 65_536])
def test_a_batch_body_is_the_list_encoded_at_once(count: int) -> None:
    encode = msgspec.msgpack.encode
    records = [record(n) for n in range(count)]
    assert batch_body([encode(r) for r in records]) == encode(records)


def test_recorded_decisions_read_back_in_order(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "decisions.db")
    written = [record(n) for n in range(40)]
    for decision in written:
        log.record(decision)
    log.flush()
    log.close()
    assert list(DecisionLogReader(tmp_path / "decisions.db").decisions()) == written
