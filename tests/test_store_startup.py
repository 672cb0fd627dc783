"""A state store setting that cannot work stops the engine at start-up, with a message
that says why (stores/connect.py), instead of a traceback or a worker that misbehaves
later: an unknown store, a malformed Redis URL, a Redis that cannot be reached, is too
old, evicts keys, or wants a password it was not given.

Everything is real: private redis-servers (tests/services.py `PrivateRedis`), ports with
nothing or a silent listener on them, `intently serve` as a subprocess. The one stand-in
is a tiny RESP server playing a Redis older than 6.2, which no CI machine has installed.
"""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from intently import Engine
from intently.config import load_settings
from intently.configfile import ConfigError
from intently.context.profile import ProfileRules
from intently.context.settings import ContextSettings
from intently.stores.connect import BackendUnavailable, open_state_store
from intently.stores.embedded import EmbeddedStore
from intently.stores.protocol import Changes, StateStore
from intently.stores.redisstate import RedisStore
from services import REDIS_URL, PrivateRedis, redis_client
from support import SECRET_KEY, WRITE_KEY, free_port, make_settings

# Generous for a 2-core machine under load; a refused connection fails at once, and a
# silent server after the 0.5 s socket timeout.
FAILS_WITHIN_SECONDS = 5.0
PASSWORD = "secret"


def open_store(spec: str, tmp_path: Path) -> StateStore:
    return open_state_store(
        spec, state_path=tmp_path / "state.db", flush_seconds=1.0, worker="startup-test"
    )


def nothing_listening_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def opens_with_the_embedded_store(data_dir: Path) -> None:
    """The data dir is not left locked: another engine opens it (on the embedded store)."""
    engine = Engine(make_settings(data_dir))
    try:
        assert isinstance(engine.store, EmbeddedStore)
    finally:
        engine.close()


# -- a store that is neither "embedded" nor a Redis URL ----------------------------------------


@pytest.mark.parametrize("spec", ["mysql://x", "embeded", "http://127.0.0.1:6379/0", "Embedded"])
def test_an_unknown_store_is_a_config_error_naming_it(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(spec, tmp_path)
    message = str(raised.value)
    assert repr(spec) in message
    # What would have worked:
    assert "'embedded'" in message
    assert "redis://" in message


def test_an_unknown_store_stops_the_engine_and_releases_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with pytest.raises(ConfigError, match="'embeded' is neither 'embedded' nor a Redis URL"):
        Engine(make_settings(data_dir, state_store="embeded"))
    opens_with_the_embedded_store(data_dir)


def test_a_password_in_an_unknown_store_is_not_repeated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(f"mysql://app:{PASSWORD}@db.internal/shop", tmp_path)
    message = str(raised.value)
    assert PASSWORD not in message
    assert "'mysql://app:***@db.internal/shop'" in message


# -- a malformed Redis URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("redis://127.0.0.1:notaport/0", "Port could not be cast to integer value as 'notaport'"),
        ("redis://127.0.0.1:99999/0", "Port out of range"),
    ],
)
def test_a_malformed_redis_url_is_a_config_error(spec: str, why: str, tmp_path: Path) -> None:
    # pytest.raises(ConfigError) lets any other exception through: the test errors with it.
    with pytest.raises(ConfigError) as raised:
        open_store(spec, tmp_path)
    message = str(raised.value)
    assert f"store: {spec!r} is not a usable Redis URL" in message
    assert why in message


@pytest.mark.parametrize(
    "spec",
    [f"redis://:{PASSWORD}@127.0.0.1:notaport/0", f"mysql://app:{PASSWORD}@db.internal:bad/shop"],
)
def test_a_malformed_url_with_a_password_is_a_config_error(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(spec, tmp_path)
    assert PASSWORD not in str(raised.value)


def test_a_database_number_the_redis_does_not_have_is_a_config_error(tmp_path: Path) -> None:
    # A real Redis has 16 databases unless told otherwise: /99 is a typo, not an outage.
    redis_client().close()  # the shared Redis is up (or the test skips, or fails in CI)
    url = REDIS_URL.rsplit("/", 1)[0] + "/99"
    with pytest.raises(ConfigError) as raised:
        open_store(url, tmp_path)
    assert "no such database" in str(raised.value)


# -- a Redis that cannot be reached ------------------------------------------------------------


def test_a_redis_with_nothing_listening_is_unavailable_at_once(tmp_path: Path) -> None:
    url = nothing_listening_url()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as raised:
        open_store(url, tmp_path)
    assert time.monotonic() - started < FAILS_WITHIN_SECONDS
    assert f"store: cannot reach Redis at {url}: " in str(raised.value)


def test_a_redis_that_never_answers_is_unavailable_within_seconds(tmp_path: Path) -> None:
    # A listening socket that never accepts: the kernel completes the handshake, then
    # nothing ever answers (a hung server, or a proxy to one).
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="cannot reach Redis"):
            open_store(url, tmp_path)
        assert time.monotonic() - started < FAILS_WITHIN_SECONDS


def test_an_unreachable_redis_stops_the_engine_and_releases_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="cannot reach Redis"):
        Engine(make_settings(data_dir, state_store=nothing_listening_url()))
    assert time.monotonic() - started < FAILS_WITHIN_SECONDS
    opens_with_the_embedded_store(data_dir)


# -- a real Redis configured so that intently cannot use it -----------------------------------


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, "--maxmemory-policy", "allkeys-lru")
    server.start()
    yield server
    server.stop()


def test_a_redis_that_evicts_keys_is_a_config_error(
    evicting_redis: PrivateRedis, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(evicting_redis.url, tmp_path)
    message = str(raised.value)
    assert evicting_redis.url in message
    assert "maxmemory-policy allkeys-lru" in message
    assert "set maxmemory-policy noeviction" in message


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    # The password is set once the server runs: PrivateRedis waits for it with a PING
    # that carries no password.
    server = PrivateRedis(tmp_path)
    server.start()
    admin = redis.Redis(port=server.port, socket_timeout=5)
    admin.config_set("requirepass", PASSWORD)
    admin.close()
    yield server
    server.stop()


def with_password(server: PrivateRedis, password: str, user: str = "") -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def test_a_redis_that_wants_a_password_it_was_not_given_is_a_config_error(
    password_redis: PrivateRedis, tmp_path: Path
) -> None:
    # (NOAUTH: redis-py raises AuthenticationError, which connect.py turns into this.)
    with pytest.raises(ConfigError) as raised:
        open_store(password_redis.url, tmp_path)
    message = str(raised.value)
    assert f"Redis at {password_redis.url} refused the credentials" in message
    assert "Authentication required" in message
    assert "a password goes in the URL" in message


@pytest.mark.parametrize(
    ("user", "password"),
    [("", "not-the-password"), ("default", "not-the-password"), ("nobody", PASSWORD)],
)
def test_wrong_credentials_are_a_config_error_that_does_not_repeat_the_password(
    password_redis: PrivateRedis, user: str, password: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(with_password(password_redis, password, user), tmp_path)
    message = str(raised.value)
    assert f"Redis at redis://{user}:***@127.0.0.1:{password_redis.port}/0 refused" in message
    assert "invalid username-password pair" in message
    assert password not in message


def test_the_right_password_opens_a_store_that_keeps_profiles(
    password_redis: PrivateRedis, tmp_path: Path
) -> None:
    url = with_password(password_redis, PASSWORD)
    writer = open_store(url, tmp_path)
    try:
        assert isinstance(writer, RedisStore)
        profile = ProfileRules(ContextSettings()).new("p_startup", 1_000)
        profile.counts = {"Product Viewed": 2}
        changes = Changes(1, watermark_ms=1_000)
        changes.put(profile)
        changes.link("a:startup", "p_startup")
        writer.commit(changes)
    finally:
        writer.close()
    reader = open_store(url, tmp_path)  # a new connection: it is in Redis, not a cache
    try:
        stored = reader.get("p_startup")
        assert stored is not None
        assert stored.first_ms == 1_000
        assert stored.counts == {"Product Viewed": 2}
        assert reader.resolve("a:startup") == "p_startup"
    finally:
        reader.close()


# -- a Redis older than 6.2 -------------------------------------------------------------------


class OldRedis(socketserver.ThreadingTCPServer):
    """A stand-in for an old Redis (none is installed anywhere the tests run): it speaks
    just enough RESP for a client's connection handshake and for the two INFO sections
    the start-up check reads. It is no model of the product, only of an old server.

    `hello`: whether it knows HELLO (added in Redis 6.0), which redis-py 8 sends first
    to switch to RESP3. A Redis 5 answers it, like every unknown command, with an error.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, version: str, *, hello: bool) -> None:
        self.version = version
        self.hello = hello
        super().__init__(("127.0.0.1", 0), _OldRedisConnection)
        self.url = f"redis://127.0.0.1:{self.server_address[1]}/0"


class _OldRedisConnection(socketserver.StreamRequestHandler):
    server: OldRedis

    def handle(self) -> None:
        while command := self._read_command():
            self.wfile.write(self._reply(command))

    def _read_command(self) -> list[str] | None:
        """A client's command: an array of bulk strings (`*2\\r\\n$4\\r\\nINFO\\r\\n...`)."""
        header = self.rfile.readline()
        if not header.startswith(b"*"):
            return None  # the client hung up
        command = []
        for _ in range(int(header[1:])):
            size = int(self.rfile.readline()[1:])
            command.append(self.rfile.read(size + 2)[:-2].decode())
        return command

    def _reply(self, command: list[str]) -> bytes:
        name = command[0].upper()
        version = self.server.version
        if name == "PING":
            return b"+PONG\r\n"
        if name == "HELLO" and self.server.hello:
            # A RESP3 map, as a Redis 6.0 answers `HELLO 3` (server, version, proto).
            return f"%3\r\n+server\r\n+redis\r\n+version\r\n+{version}\r\n+proto\r\n:3\r\n".encode()
        if name == "INFO" and len(command) == 2 and command[1].lower() in ("server", "memory"):
            section = {
                "server": f"# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n",
                "memory": "# Memory\r\nused_memory:1000000\r\nmaxmemory_policy:noeviction\r\n",
            }[command[1].lower()].encode()
            return b"$%d\r\n%s\r\n" % (len(section), section)
        # Anything else (HELLO on a Redis 5, CLIENT SETINFO, CLIENT MAINT_NOTIFICATIONS
        # before 7.2, ...) gets Redis's own error, which redis-py skips where it may.
        arguments = "".join(f"`{argument}`, " for argument in command[1:])
        error = f"ERR unknown command `{command[0]}`, with args beginning with: {arguments}"
        return f"-{error}\r\n".encode()


@pytest.fixture
def old_redis(request: pytest.FixtureRequest) -> Iterator[OldRedis]:
    version, hello = request.param
    server = OldRedis(version, hello=hello)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("old_redis", [("6.0.20", True)], indirect=True)
def test_a_redis_older_than_6_2_is_a_config_error_naming_both_versions(
    old_redis: OldRedis, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(old_redis.url, tmp_path)
    message = str(raised.value)
    assert f"Redis at {old_redis.url} is version 6.0.20" in message
    assert "needs 6.2 or later" in message


@pytest.mark.parametrize("old_redis", [("5.0.7", False)], indirect=True)
def test_a_redis_5_is_a_config_error_naming_both_versions(
    old_redis: OldRedis, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(old_redis.url, tmp_path)
    message = str(raised.value)
    assert "5.0.7" in message
    assert "6.2" in message


# -- the command line: a clear message and exit status 1, never a server ---------------------


def intently_serve(
    data_dir: Path, *args: str, **environment: str
) -> subprocess.CompletedProcess[str]:
    # Only this test's settings: none inherited from the shell or CI.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENTLY_")}
    env.update(INTENTLY_WRITE_KEY=WRITE_KEY, INTENTLY_SECRET_KEY=SECRET_KEY, **environment)
    intently = str(Path(sys.executable).with_name("intently"))
    command = [intently, "serve", "--data-dir", str(data_dir), "--port", str(free_port()), *args]
    # A server that started anyway would run until this timeout kills it: the test fails.
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def assert_refused_to_start(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout


def test_serve_with_an_unreachable_redis_exits_with_a_clear_message(tmp_path: Path) -> None:
    url = nothing_listening_url()
    result = intently_serve(tmp_path / "data", "--store", url)
    assert_refused_to_start(result, f"Error: store: cannot reach Redis at {url}")


def test_serve_with_an_unknown_store_in_the_environment_exits_naming_it(tmp_path: Path) -> None:
    result = intently_serve(tmp_path / "data", INTENTLY_STORE="mysql://x")
    assert_refused_to_start(
        result, "Error: store: 'mysql://x' is neither 'embedded' nor a Redis URL"
    )


# -- the setting from the environment ----------------------------------------------------------


def test_an_empty_intently_store_means_the_default_embedded_store(tmp_path: Path) -> None:
    settings = load_settings(
        {"data_dir": tmp_path / "data", "write_key": WRITE_KEY, "secret_key": SECRET_KEY},
        environ={"INTENTLY_STORE": ""},
    )
    assert settings.state_store == "embedded"
    engine = Engine(settings)
    try:
        assert isinstance(engine.store, EmbeddedStore)
    finally:
        engine.close()


def test_intently_store_and_its_long_name_and_the_flag() -> None:
    url = "redis://127.0.0.1:6379/0"
    # INTENTLY_STORE is the short name of INTENTLY_STATE_STORE; empty, it is unset.
    assert load_settings(environ={"INTENTLY_STATE_STORE": url}).state_store == url
    both = {"INTENTLY_STORE": "", "INTENTLY_STATE_STORE": url}
    assert load_settings(environ=both).state_store == url
    # Both set: the short name wins.
    both = {"INTENTLY_STORE": "embedded", "INTENTLY_STATE_STORE": url}
    assert load_settings(environ=both).state_store == "embedded"
    # The command line (`--store`) wins over the environment.
    from_flag = load_settings({"state_store": "embedded"}, environ={"INTENTLY_STORE": url})
    assert from_flag.state_store == "embedded"
