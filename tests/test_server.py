"""`intently serve` as a real process: keys on first start, one process per data dir, CORS,
real sockets, and a clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from support import free_port, wait_ready

pytestmark = pytest.mark.slow


def serve(
    data_dir: Path, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("INTENTLY_")}
    environment.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "intently", "serve", "--port", str(port), "--data-dir",
         str(data_dir), *extra],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    return output


def request(port: int, path: str, body: object = None, headers: dict[str, str] | None = None,
            method: str | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_first_start_creates_and_prints_keys_then_reuses_them(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    first = serve(data_dir, port)
    wait_ready(port)
    output = stop(first)
    keys = json.loads((data_dir / "keys.json").read_text())
    assert stat.S_IMODE((data_dir / "keys.json").stat().st_mode) == 0o600
    assert "Created API keys" in output
    assert keys["write_key"] in output
    assert keys["secret_key"] in output

    second = serve(data_dir, port)
    wait_ready(port)
    status, _, body = request(
        port, "/v1/events", {"type": "page", "anonymousId": "a"},
        {"Authorization": f"Bearer {keys['write_key']}", "Content-Type": "application/json"},
    )  # fmt: skip
    output = stop(second)
    assert (status, json.loads(body)) == (200, {"accepted": 1})
    assert "Created" not in output
    assert keys["write_key"] in output


def test_environment_keys_override_the_stored_ones(tmp_path: Path) -> None:
    port = free_port()
    process = serve(
        tmp_path / "data", port,
        env={"INTENTLY_WRITE_KEY": "wk_from_env", "INTENTLY_SECRET_KEY": "sk_from_env"},
    )  # fmt: skip
    wait_ready(port)
    try:
        event = {"type": "page", "anonymousId": "a", "writeKey": "wk_from_env"}
        ok = request(port, "/v1/events", event, {"Content-Type": "text/plain"})
        assert ok[0] == 200
    finally:
        stop(process)


def test_a_second_process_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    first = serve(data_dir, port)
    wait_ready(port)
    try:
        second = serve(data_dir, free_port())
        output, _ = second.communicate(timeout=30)
        assert second.returncode == 1
        assert "another intently process is using" in output
    finally:
        stop(first)


def test_cors_for_configured_origins_only(tmp_path: Path) -> None:
    port = free_port()
    process = serve(tmp_path / "data", port, "--cors-origin", "https://shop.example")
    wait_ready(port)
    try:
        preflight = {
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        status, headers, _ = request(port, "/v1/events", headers=preflight, method="OPTIONS")
        assert status == 200
        assert headers["access-control-allow-origin"] == "https://shop.example"
        status, headers, _ = request(
            port,
            "/v1/events",
            headers={**preflight, "Origin": "https://evil.example"},
            method="OPTIONS",
        )
        assert status == 400
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
    finally:
        stop(process)


def test_sigterm_flushes_and_marks_a_clean_shutdown(tmp_path: Path) -> None:
    import sqlite3

    data_dir, port = tmp_path / "data", free_port()
    process = serve(
        data_dir, port, env={"INTENTLY_WRITE_KEY": "wk_x", "INTENTLY_SECRET_KEY": "sk_x"}
    )
    wait_ready(port)
    request(port, "/v1/events", {"batch": [{"type": "page", "anonymousId": "a"}] * 50},
            {"Authorization": "Bearer wk_x", "Content-Type": "application/json"})  # fmt: skip
    stop(process)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
    assert process.returncode in (0, -signal.SIGTERM)
    connection = sqlite3.connect(data_dir / "events.db")
    assert connection.execute("SELECT count(*) FROM events").fetchone() == (50,)
    assert connection.execute("SELECT value FROM meta WHERE key='shutdown'").fetchone() == (
        "clean",
    )
    assert (
        not (data_dir / "events.db-wal").exists()
        or (data_dir / "events.db-wal").stat().st_size == 0
    )
