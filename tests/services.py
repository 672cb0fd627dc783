"""The real Redis (and PostgreSQL) the scale-out tests run against.

CI sets INTENTLY_REQUIRE_SERVICES=1: a service that is down then fails the test instead
of skipping it. Elsewhere (a laptop without Redis) those tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

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
def redis_namespace(client: Any = None) -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis (or on `client`'s server, a
    Cluster's too), its keys removed afterwards."""
    client = redis_client() if client is None else client
    prefix = f"intently-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)  # (one at a time: on a Cluster the keys span slots)
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


def cluster_namespace(url: str) -> Any:
    """A key prefix of this test's own on the Redis Cluster at `url` (a context)."""
    from redis.cluster import RedisCluster

    return redis_namespace(RedisCluster.from_url(url))


class PrivateCluster:
    """A Redis Cluster of the test's own: `nodes` primaries on free ports (no replicas,
    nothing on disk), the 16,384 slots split between them by `redis-cli --cluster
    create`."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.servers = []
        for n in range(nodes):
            home = directory / f"node{n}"
            home.mkdir(parents=True)
            server = PrivateRedis(home, "--cluster-enabled", "yes", "--cluster-config-file",
                                  "nodes.conf", "--cluster-node-timeout", "5000")  # fmt: skip
            # A node also listens on its port + 10,000 (the cluster bus): both free.
            server.port = _port_with_bus()
            server.url = f"redis://127.0.0.1:{server.port}/0"
            self.servers.append(server)
        self.url = self.servers[0].url

    def start(self) -> None:
        try:
            self._start()
        except BaseException:  # (no node left running when the cluster never came up)
            self.stop()
            raise

    def _start(self) -> None:
        for server in self.servers:
            server.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            unavailable("redis-cli", "not on PATH")
        addresses = [f"127.0.0.1:{server.port}" for server in self.servers]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        for server in self.servers:
            client = redis.Redis(port=server.port)
            try:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise AssertionError("the test cluster never became ready")
                    time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _port_with_bus() -> int:
    import socket

    for _ in range(1000):
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise AssertionError("no free port with a free cluster bus port")


POSTGRES_URL = os.environ.get(
    "INTENTLY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of this test's own on the shared PostgreSQL (dropped afterwards): its
    URL."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        unavailable(f"PostgreSQL at {POSTGRES_URL}", error)
    name = f"intently_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)'.encode())
        admin.close()


class Relay:
    """A TCP relay on a free port to a real server, which a test cuts and restores: the
    server itself stays up for everyone else (the shared PostgreSQL), while what talks to
    it through the relay finds it unreachable, as after a network partition."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket

        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._open = threading.Event()
        self._open.set()
        # Cleared by `stall`: the pumps hold what they read instead of passing it on.
        self._flowing = threading.Event()
        self._flowing.set()
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import socket

        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            self._connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=_pump, args=(source, sink, self._flowing), daemon=True
                ).start()

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        import socket

        self._open.clear()
        for connection in self._connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._connections.clear()

    def stall(self) -> None:
        """Keep every connection open but pass nothing on, either way: a server that is
        hung (stopped, or wedged) while its kernel still accepts and acknowledges TCP, so
        neither side sees an error or a reset, only silence. `restore` lets it flow
        again (what was held is delivered then)."""
        self._flowing.clear()

    def restore(self) -> None:
        self._open.set()
        self._flowing.set()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        self._thread.join(timeout=5)


def _pump(source: Any, sink: Any, flowing: threading.Event | None = None) -> None:
    try:
        while data := _receive(source, flowing):
            while flowing is not None and not flowing.wait(0.1):
                if source.fileno() < 0:  # cut (or closed) while stalled
                    return
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with suppress(OSError):
                end.close()


def _receive(source: Any, flowing: threading.Event | None) -> bytes:
    """The next bytes from `source`. Its timeout (the server side's, 3 s) ends the pump
    as ever, except while stalled: a stalled server's connections stay open, silent."""
    while True:
        try:
            data: bytes = source.recv(65536)
            return data
        except TimeoutError:
            if flowing is None or flowing.is_set():
                raise
