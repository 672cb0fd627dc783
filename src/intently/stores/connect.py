"""Opening the state store a setting names, with the checks that make a bad one fail at
start-up with a clear message instead of misbehaving later.

`embedded` (the default) keeps state in the data dir. A `redis://`, `rediss://` or
`unix://` URL shares it in Redis, which must be reachable, at least version 6.2, and
configured never to evict keys (`maxmemory-policy noeviction`): an evicted profile would
be a visitor silently forgotten. A Redis Cluster is recognised from the node the URL names
(any one of them): the client then follows the cluster's slots, and every primary must
be configured so.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from intently.configfile import ConfigError
from intently.stores.embedded import EmbeddedStore
from intently.stores.protocol import StateStore
from intently.stores.redisstate import RedisStore

REDIS_SCHEMES = ("redis", "rediss", "unix")
MIN_REDIS = (6, 2)
# What a worker waits for Redis before it gives up on one call: a decide must still
# answer (with its fallback) within its deadline when Redis is gone.
REDIS_CONNECT_TIMEOUT_SECONDS = 0.5
REDIS_SOCKET_TIMEOUT_SECONDS = 0.5


class BackendUnavailable(RuntimeError):
    """A backend named in the settings could not be reached at start-up."""


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    # The netloc as written after the "@" (so a bad port or an IPv6 literal's brackets
    # survive): this runs on URLs that have not been checked yet.
    host_and_port = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:***@{host_and_port}"
    return urlunsplit(parts._replace(netloc=netloc))


def open_state_store(
    spec: str,
    *,
    state_path: Path,
    flush_seconds: float,
    worker: str,
    prefix: str = "intently:",
    stream_length: int = 100_000,
) -> StateStore:
    """The store `spec` names: "embedded" or a Redis URL (raises `ConfigError` for a
    malformed or unusable one, `BackendUnavailable` for one that cannot be reached)."""
    if spec == "embedded":
        return EmbeddedStore(state_path, flush_seconds)
    scheme = urlsplit(spec).scheme
    if scheme in REDIS_SCHEMES:
        client = connect_redis(spec)
        return RedisStore(client, prefix=prefix, worker=worker, stream_length=stream_length)
    raise ConfigError(
        f"store: {redacted(spec)!r} is neither 'embedded' nor a Redis URL "
        "(redis://host:6379/0, rediss://..., unix:///path/redis.sock)"
    )


def connect_redis(url: str) -> redis.Redis:
    """A client for `url`, checked: reachable, recent enough, never evicting."""
    where = redacted(url)
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
    except ValueError as error:
        raise ConfigError(f"store: {where!r} is not a usable Redis URL: {error}") from None
    try:
        server = client.info("server")
        memory = client.info("memory")
    except redis.AuthenticationError as error:
        client.close()
        raise ConfigError(
            f"store: Redis at {where} refused the credentials: {error} (a password goes in "
            "the URL: redis://:password@host:6379/0, or redis://user:password@...)"
        ) from None
    except redis.ResponseError as error:
        client.close()
        raise _refusal(url, where, error) from None
    except redis.RedisError as error:
        client.close()
        raise BackendUnavailable(f"store: cannot reach Redis at {where}: {error}") from None
    version = _version(str(server.get("redis_version", "0")))
    if version < MIN_REDIS:
        client.close()
        raise _too_old(where, str(server.get("redis_version")))
    if _is_cluster(client, server):
        client.close()
        return _connect_cluster(url, where)
    _check_eviction(where, memory)
    return client


def _check_eviction(where: str, memory: dict[str, object]) -> None:
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        raise ConfigError(
            f"store: Redis at {where} evicts keys under memory pressure (maxmemory-policy "
            f"{policy}), which would silently forget visitors; set maxmemory-policy "
            "noeviction and size maxmemory for the profiles (docs/operations.md)"
        )


def _connect_cluster(url: str, where: str) -> redis.Redis:
    """A client of the Redis Cluster whose node `url` names, every primary checked."""
    if urlsplit(url).path not in ("", "/", "/0"):
        raise _cluster_database(where)
    try:
        cluster = RedisCluster.from_url(
            url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
    except (redis.RedisError, RedisClusterException) as error:
        raise BackendUnavailable(
            f"store: cannot reach the Redis Cluster at {where}: {error}"
        ) from None
    try:
        for node in cluster.get_primaries():  # type: ignore[no-untyped-call]
            memory = cluster.get_redis_connection(node).info("memory")
            _check_eviction(f"{where} (primary {node.host}:{node.port})", memory)
    except redis.RedisError as error:
        cluster.close()
        raise BackendUnavailable(
            f"store: cannot reach the Redis Cluster at {where}: {error}"
        ) from None
    except ConfigError:
        cluster.close()
        raise
    # The same commands as a client of one server, for keys of one slot at a time, which
    # is how the store uses them (stores/redisstate.py `is_cluster_client`).
    return cast(redis.Redis, cluster)


def _cluster_database(where: str) -> ConfigError:
    return ConfigError(
        f"store: {where!r} names a database of a Redis Cluster node, and a Cluster has "
        "database 0 only: end the URL with /0"
    )


def _unreachable_cluster(where: str, error: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"store: cannot reach the Redis Cluster at {where}: {error}")


def _is_cluster(client: redis.Redis, server: dict[str, object]) -> bool:
    """Whether the server runs in cluster mode: INFO server says so (`redis_mode`, read
    already), or else INFO cluster (`cluster_enabled:1`), for a server or proxy whose INFO
    server leaves `redis_mode` out. One that does not know INFO cluster is no cluster."""
    if "redis_mode" in server:
        return server["redis_mode"] == "cluster"
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    except redis.ResponseError:
        return False


def _refusal(url: str, where: str, error: redis.ResponseError) -> Exception:
    """Why a Redis that answered refused to serve: a setting to fix, or (when it is none
    we know) the backend reported unavailable."""
    text = str(error)
    if "DB index is out of range" in text:
        return ConfigError(
            f"store: Redis at {where} has no such database ({text}); the number after the "
            "last '/' must be below its `databases` setting (16 by default)"
        )
    if "SELECT is not allowed in cluster mode" in text:
        return _cluster_database(where)
    if "HELLO" in text:
        # redis-py opens connections with HELLO 3, which came with Redis 6.0: an older
        # server refuses it before its version can be read, so read it over RESP2.
        version = _version_over_resp2(url)
        if version is not None and _version(version) < MIN_REDIS:
            return _too_old(where, version)
    return BackendUnavailable(f"store: Redis at {where} refused to serve: {text}")


def _version_over_resp2(url: str) -> str | None:
    client = redis.Redis.from_url(
        url,
        protocol=2,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
    )
    try:
        return str(client.info("server").get("redis_version", "0"))
    except redis.RedisError:
        return None
    finally:
        client.close()


def _too_old(where: str, version: str) -> ConfigError:
    return ConfigError(
        f"store: Redis at {where} is version {version}; intently needs "
        f"{MIN_REDIS[0]}.{MIN_REDIS[1]} or later"
    )


def _version(text: str) -> tuple[int, ...]:
    numbers: list[int] = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)
