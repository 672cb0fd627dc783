"""Helpers shared by the tests (importable as `support`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from intently import Engine, Settings, load_settings
from intently.api.app import create_app

WRITE_KEY = "wk_test_write"
SECRET_KEY = "sk_test_secret"
START = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    return load_settings(
        {"data_dir": data_dir, "write_key": WRITE_KEY, "secret_key": SECRET_KEY, **overrides},
        environ={},
    )


def client_for(engine: Engine, key: str | None = WRITE_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=create_app(engine), client=("203.0.113.9", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://intently.test", headers=headers)


def track(**fields: Any) -> dict[str, Any]:
    """A valid track event; keyword arguments override or add fields."""
    event: dict[str, Any] = {
        "type": "track",
        "event": "Product Viewed",
        "anonymousId": "anon-1",
        "properties": {"product_id": "p1", "price": 42.5, "category": "running"},
        "context": {"ip": "8.8.8.8", "userAgent": IPHONE},
    }
    event.update(fields)
    return event


def stored_events(engine: Engine) -> list[dict[str, Any]]:
    """The events in the engine's log, as `intently export events` writes them."""
    import msgspec

    from intently.log.replay import export_lines

    return [msgspec.json.decode(line) for line in export_lines(engine.log, None, 0)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, process: Any = None, seconds: float = 30) -> None:
    """Wait until a server answers /healthz; fail early if its process died."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}") from None
            time.sleep(0.05)
    raise AssertionError(f"server on port {port} not ready after {seconds} s")


def shared_data(name: str) -> Path:
    """A dataset of `../shared/data` (see its README): next to the project, or where
    INTENTLY_SHARED_DATA points, or in the workplace's own copy (a clone made elsewhere,
    as CI's is). Fails, naming where it looked, when it is nowhere: a test that needs
    real data must not pass without it."""
    import os

    here = Path(__file__).resolve().parents[2] / "shared" / "data"
    places = (
        [Path(os.environ["INTENTLY_SHARED_DATA"])] if "INTENTLY_SHARED_DATA" in os.environ else []
    )
    places += [here, Path("/work/shared/data")]
    for place in places:
        if (place / name).exists():
            return place / name
    raise AssertionError(f"dataset {name} not found in {', '.join(map(str, places))}")


class GilTakes:
    """Counts how often another thread gets the GIL while the calling thread runs code
    that must keep it (`with GilTakes() as takes: ...; assert takes.count == 0`).

    The other thread takes the GIL, counts, and gives it straight back. The switch
    interval is made long meanwhile, so the only way it gets the GIL is a voluntary
    release by the calling thread (numpy's larger computations release it).
    """

    def __init__(self) -> None:
        import threading

        self.count = 0
        self._taken = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._take, daemon=True)

    def _take(self) -> None:
        import time

        while not self._stop.is_set():
            self._taken += 1
            time.sleep(0)  # gives the GIL back, then waits for it again

    def __enter__(self) -> GilTakes:
        import gc
        import sys
        import time

        # No collection inside: a finalizer it ran (a connection closing) could release
        # the GIL and be counted against the code under test.
        gc.collect()
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._interval = sys.getswitchinterval()
        self._thread.start()
        while self._taken == 0:
            time.sleep(0.001)
        sys.setswitchinterval(60.0)
        time.sleep(0)  # (any switch request made under the old interval is served here)
        self._before = self._taken
        return self

    def __exit__(self, *exc: object) -> None:
        import gc
        import sys

        self.count = self._taken - self._before
        sys.setswitchinterval(self._interval)
        self._stop.set()
        self._thread.join()
        if self._gc_was_enabled:
            gc.enable()
