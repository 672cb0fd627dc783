"""The `intently` command: help everywhere, replay through the live pipeline, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from intently.cli import main
from support import track


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("INTENTLY_WRITE_KEY", "wk_cli")
    monkeypatch.setenv("INTENTLY_SECRET_KEY", "sk_cli")
    return CliRunner()


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["replay"], ["export"], ["export", "events"], ["eval"], ["eval", "sessions"],
     ["eval", "ope"], ["catalog"], ["catalog", "import"]],
)  # fmt: skip
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    assert "--help" in result.output


def test_serve_documents_its_options(runner: CliRunner) -> None:
    output = runner.invoke(main, ["serve", "--help"]).output
    for option in ("--host", "--port", "--data-dir", "--ip-mode", "--cors-origin"):
        assert option in output


def history(path: Path, count: int, bad_lines: int = 0) -> Path:
    lines = [
        json.dumps(
            track(
                messageId=f"h{i}",
                anonymousId=f"v{i % 7}",
                timestamp=f"2025-03-0{1 + i % 9}T12:00:00Z",
                receivedAt=f"2025-03-0{1 + i % 9}T12:00:01Z",
            )
        )
        for i in range(count)
    ]
    lines[3:3] = ['{"type": "track"}'] * bad_lines
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_replay_then_export_round_trips(runner: CliRunner, tmp_path: Path) -> None:
    source = history(tmp_path / "history.jsonl", 1200)
    data = tmp_path / "data"
    result = runner.invoke(main, ["replay", str(source), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "1200 accepted, 0 duplicates, 0 rejected" in result.output

    exported = runner.invoke(main, ["export", "events", "--data-dir", str(data)])
    assert exported.exit_code == 0
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, 1201))
    assert {e["messageId"] for e in events} == {f"h{i}" for i in range(1200)}
    # History keeps its own receive times (kappa: the same pipeline, not "now").
    assert events[0]["receivedAt"] == "2025-03-01T12:00:01Z"
    assert events[0]["enrichment"]["geo"]["country"] == "US"

    # Replaying the export into a fresh data dir reproduces the same log.
    dump = tmp_path / "export.jsonl"
    dump.write_text(exported.stdout)
    copy = tmp_path / "copy"
    assert (
        runner.invoke(main, ["replay", str(dump), "--data-dir", str(copy), "--quiet"]).exit_code
        == 0
    )
    again = runner.invoke(main, ["export", "events", "--data-dir", str(copy)]).stdout
    assert again == exported.stdout


def test_replaying_twice_stores_once(runner: CliRunner, tmp_path: Path) -> None:
    source = history(tmp_path / "history.jsonl", 600)
    data = tmp_path / "data"
    runner.invoke(main, ["replay", str(source), "--data-dir", str(data)])
    second = runner.invoke(main, ["replay", str(source), "--data-dir", str(data)])
    assert "0 accepted, 600 duplicates" in second.output
    exported = runner.invoke(main, ["export", "events", "--data-dir", str(data)]).stdout
    assert len(exported.splitlines()) == 600


def test_replay_reports_bad_lines_and_keeps_the_good(runner: CliRunner, tmp_path: Path) -> None:
    source = history(tmp_path / "history.jsonl", 10, bad_lines=2)
    data = tmp_path / "data"
    result = runner.invoke(main, ["replay", str(source), "--data-dir", str(data)])
    assert result.exit_code == 1
    assert "line 4: event: Object missing required field `event`" in result.stderr
    assert "line 5: event:" in result.stderr
    assert "10 accepted, 0 duplicates, 2 rejected" in result.stdout


def test_export_since(runner: CliRunner, tmp_path: Path) -> None:
    source = history(tmp_path / "history.jsonl", 90)
    data = tmp_path / "data"
    runner.invoke(main, ["replay", str(source), "--data-dir", str(data)])
    # Received times cycle through March 1..9; the log order is the file's.
    result = runner.invoke(
        main, ["export", "events", "--data-dir", str(data), "--since", "2025-03-09T00:00:00Z"]
    )
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["messageId"] == "h8"
    after = runner.invoke(main, ["export", "events", "--data-dir", str(data), "--after-seq", "85"])
    assert [json.loads(line)["seq"] for line in after.stdout.splitlines()] == [86, 87, 88, 89, 90]


def test_export_rejects_a_bad_time_and_a_missing_log(runner: CliRunner, tmp_path: Path) -> None:
    bad = runner.invoke(main, ["export", "events", "--data-dir", str(tmp_path), "--since", "soon"])
    assert bad.exit_code == 2
    assert "not an ISO 8601 time" in bad.output
    missing = runner.invoke(main, ["export", "events", "--data-dir", str(tmp_path / "none")])
    assert missing.exit_code == 1
    assert "no event log" in missing.output
