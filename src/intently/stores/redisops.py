"""The operations the Redis store's write scripts carry out, in one place for both ways of
writing (one script per event on one primary, stores/redisstate.py; one per slot on a
Cluster, stores/clustered.py), so that an operation means the same in each.

A script's arguments name keys by number (`Ops` numbers them once); each operation is
an opcode, the number of its key and its own arguments. `run_operations` makes the Lua
loop that carries out those from ARGV[first] on, with the branches a script allows.
"""

from __future__ import annotations

from collections.abc import Iterable

Value = str | bytes | int

# Lua: refuse (LEASE_LOST) unless every lease in KEYS[1..n] holds `token`: the first
# lines of every script that writes under leases.
LEASES_HELD = """
for i = 1, n do
  if redis.call('GET', KEYS[i]) ~= token then
    return redis.error_reply('LEASE_LOST ' .. KEYS[i])
  end
end
"""

# Each opcode's Lua, with `key` (its key), `i` (where its arguments start, at ARGV[i + 2])
# and, for histories, `cap` (entries kept) in scope; each moves `i` past its arguments.
_BRANCHES = {
    # P key body count-key: write a profile, counting it if new.
    "P": """
    local count = KEYS[tonumber(ARGV[i + 3])]
    if redis.call('EXISTS', key) == 0 then redis.call('INCR', count) end
    redis.call('SET', key, ARGV[i + 2])
    i = i + 4""",
    # X key count-key: delete a profile, uncounting it if it was there.
    "X": """
    local count = KEYS[tonumber(ARGV[i + 2])]
    if redis.call('DEL', key) == 1 then redis.call('DECR', count) end
    i = i + 3""",
    # S key value: SET.
    "S": """
    redis.call('SET', key, ARGV[i + 2])
    i = i + 3""",
    # D key: DEL.
    "D": """
    redis.call('DEL', key)
    i = i + 2""",
    # Z key member score: ZADD.
    "Z": """
    redis.call('ZADD', key, ARGV[i + 3], ARGV[i + 2])
    i = i + 4""",
    # R key member: ZREM.
    "R": """
    redis.call('ZREM', key, ARGV[i + 2])
    i = i + 3""",
    # A key entry: append to a history, keeping its last `cap`.
    "A": """
    redis.call('RPUSH', key, ARGV[i + 2])
    redis.call('LTRIM', key, -cap, -1)
    i = i + 3""",
    # M key into-key: move a history onto the end of another (a merge).
    "M": """
    local into = KEYS[tonumber(ARGV[i + 2])]
    local moved = redis.call('LRANGE', key, 0, -1)
    if #moved > 0 then
      redis.call('RPUSH', into, unpack(moved))
      redis.call('LTRIM', into, -cap, -1)
      redis.call('DEL', key)
    end
    i = i + 3""",
    # E key maxlen worker seq event: XADD an applied event to the event stream.
    "E": """
    redis.call('XADD', key, 'MAXLEN', '~', ARGV[i + 2], '*', 'worker', ARGV[i + 3],
               'seq', ARGV[i + 4], 'event', ARGV[i + 5])
    i = i + 6""",
    # Q key seq watermark: a worker's log position and expiry watermark, never back.
    "Q": """
    local seq, mark = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    if seq > tonumber(redis.call('HGET', key, 'applied_seq') or '0') then
      redis.call('HSET', key, 'applied_seq', seq)
    end
    if mark > tonumber(redis.call('HGET', key, 'watermark_ms') or '0') then
      redis.call('HSET', key, 'watermark_ms', mark)
    end
    i = i + 4""",
}


def run_operations(first: int, opcodes: str) -> str:
    """Lua: carry out the operations from ARGV[first] on; any opcode but `opcodes` is
    refused (the script returns an error)."""
    branches = "\n  else".join(f"if op == '{code}' then{_BRANCHES[code]}" for code in opcodes)
    return f"""
local i = {first}
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  {branches}
  else
    return redis.error_reply('unknown operation ' .. op)
  end
end
"""


class Ops:
    """One script's keys and operations: a key is numbered once (the leases first, in
    order), operations refer to it by number."""

    __slots__ = ("args", "index", "keys")

    def __init__(self, leases: Iterable[str] = ()) -> None:
        self.keys: list[str] = list(leases)
        self.index = {key: n + 1 for n, key in enumerate(self.keys)}
        self.args: list[Value] = []

    def key(self, key: str) -> int:
        number = self.index.get(key)
        if number is None:
            self.keys.append(key)
            number = self.index[key] = len(self.keys)
        return number

    def add(self, op: str, key: str, *values: Value) -> None:
        self.args += [op, self.key(key), *values]
