"""The real Redis (and PostgreSQL) the scale-out tests run against.

CI sets INTENTLY_REQUIRE_SERVICES=1: a service that is down then fails the test instead
of skipping it. Elsewhere (a laptop without Redis) those tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
import redis

from support import free_port

REDIS_URL = os.environ.get("INTENTLY_TEST_REDIS", "redis://127.0.0.1:6379/0")


def unavailable(what: str, error: object) -> NoReturn:
    message = f"{what} is not available ({error})"
    if os.environ.get("INTENTLY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}; INTENTLY_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{message}; start it to run this test (see README, 'Scale-out')")


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        unavailable(f"Redis at {REDIS_URL}", error)
    return client


@contextmanager
def redis_namespace() -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis, removed afterwards."""
    client = redis_client()
    prefix = f"intently-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


class PrivateRedis:
    """A redis-server of the test's own (on a free port, nothing on disk), which a test
    may configure, stop and start again without disturbing the shared one."""

    def __init__(self, directory: Path, *args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", "not on PATH")
        self.binary = binary
        self.directory = directory
        self.args = args
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
