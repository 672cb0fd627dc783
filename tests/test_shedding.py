"""Load shedding on a real server: with requests held in flight (uploads that have sent
half their body), work that can wait is refused first, then everything, each with 503,
Retry-After and a problem body; once the load is gone, everything is served again, and
the refusals are counted in the metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support import SECRET_KEY, WRITE_KEY, free_port, wait_ready

pytestmark = pytest.mark.slow


def request(port: int, path: str, body: object = None, key: str = WRITE_KEY) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        answer = {k.lower(): v for k, v in error.headers.items()}
        answer["body"] = error.read().decode()
        return error.code, answer


def held_upload(port: int) -> socket.socket:
    """A request in flight: headers and half its body sent, the rest never."""
    connection = socket.create_connection(("127.0.0.1", port))
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {WRITE_KEY}\r\nContent-Length: 100\r\n\r\n"
    )
    connection.sendall(head.encode() + b'{"type": "track", ')
    return connection


def test_deferrable_work_is_shed_first_then_everything_then_nothing(tmp_path: Path) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("INTENTLY_")}
    environment.update(
        INTENTLY_WRITE_KEY=WRITE_KEY, INTENTLY_SECRET_KEY=SECRET_KEY, INTENTLY_GEOIP_DB="off",
        INTENTLY_SHED_AT_IN_FLIGHT="2", INTENTLY_REFUSE_AT_IN_FLIGHT="4",
    )  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "intently", "serve", "--port", str(port), "--data-dir",
         str(tmp_path / "data"), "--log-level", "warning"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    held: list[socket.socket] = []
    event = {"type": "track", "event": "Product Viewed", "anonymousId": "v"}
    try:
        wait_ready(port, server)
        assert request(port, "/v1/profiles/v/export", key=SECRET_KEY)[0] == 404  # served
        held += [held_upload(port), held_upload(port)]
        headers = eventually_refused(port, "/v1/profiles/v/export", key=SECRET_KEY)
        assert headers["retry-after"] == "1"
        assert headers["content-type"] == "application/problem+json"
        assert "can wait" in json.loads(headers["body"])["detail"]
        assert request(port, "/metrics")[0] == 503  # a scrape can wait too
        assert request(port, "/v1/events", event)[0] == 200  # visitors are still served
        assert request(port, "/healthz")[0] == 200
        held += [held_upload(port), held_upload(port)]
        headers = eventually_refused(port, "/v1/events", event)
        assert "at capacity" in json.loads(headers["body"])["detail"]
        assert headers["retry-after"] == "1"
        for connection in held:
            connection.close()
        held.clear()
        eventually_served(port, event)
        status, _ = request(port, "/v1/profiles/v/export", key=SECRET_KEY)
        assert status == 200
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'intently_requests_shed_total{kind="deferrable"} 2.0' in metrics
        assert 'intently_requests_shed_total{kind="any"} 1.0' in metrics
        assert "intently_requests_in_flight 1.0" in metrics  # the scrape itself
    finally:
        for connection in held:
            connection.close()
        server.terminate()
        server.wait(timeout=30)


def eventually_refused(port: int, path: str, body: object = None, key: str = WRITE_KEY,
                       ) -> dict:  # fmt: skip
    """The held uploads reach the app a moment after their bytes are sent: ask until
    the refusal comes (10 s at most); its headers and body."""
    import time

    deadline = time.monotonic() + 10
    while True:
        status, headers = request(port, path, body, key)
        if status == 503:
            return headers
        assert time.monotonic() < deadline, f"{path} still answered {status}"
        time.sleep(0.02)


def eventually_served(port: int, event: object) -> None:
    import time

    deadline = time.monotonic() + 10
    while request(port, "/v1/events", event)[0] != 200:
        assert time.monotonic() < deadline, "still refused after the load went"
        time.sleep(0.02)
