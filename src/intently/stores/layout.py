"""Where keys go on Redis: their hash tags, which decide a key's slot on a Redis Cluster.

A script (or a transaction) may only use keys of one slot on a Cluster. So every key of
one profile carries the profile id as its tag, every key of one identity the identity
key, a worker's own keys the worker id (stores/redisstate.py), and the keys all workers
share, which some scripts use together (the activity indexes and the profile count with
the event stream; the erasure stream with the learning snapshot), one tag: `shared`.
"""

from __future__ import annotations


def shared_key(prefix: str, name: str) -> str:
    """A key every worker shares: all of them in one slot (the tag `shared`, unless the
    prefix carries a tag of its own, which then wins: Redis takes a key's first)."""
    return f"{prefix}{{shared}}:{name}"
