"""Bounds on free-form data (`properties`, `traits`, parts of `context`).

Typed fields carry their bounds in the schema; free-form maps are walked once here, so a
deeply nested or oversized value is rejected with the path that breaks the bound instead
of being stored, re-read and re-walked by every later stage.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 10
MAX_STRING = 16 * 1024
MAX_KEYS = 500
MAX_LIST = 1000


class LimitError(ValueError):
    """A free-form value breaks a bound; `path` names where, as a list of keys/indexes."""

    def __init__(self, path: list[str | int], detail: str) -> None:
        super().__init__(detail)
        self.path = path
        self.detail = detail


def check_free_form(value: Any, path: list[str | int]) -> None:
    """Raise `LimitError` at the first place `value` breaks a bound."""
    _walk(value, path, 0)


_FLAT = frozenset({str, int, float, bool, type(None)})


def within_bounds_without_walk(value: dict[str, Any], source_size: int) -> bool:
    """True when a map decoded from `source_size` bytes of JSON is certainly within every
    bound without walking it: flat (no nesting), few keys, short keys (checked without a
    Python loop), and no string can be too long, as none can be longer than the text it
    came from. False means "walk it" (`check_free_form`), which decides."""
    return (
        source_size <= MAX_STRING
        and len(value) <= MAX_KEYS
        and _FLAT.issuperset(map(type, value.values()))
        # (`default=` would cost more than the rest of the check)
        and (not value or max(map(len, value)) <= 256)
    )


def _walk(value: Any, path: list[str | int], depth: int) -> None:
    # Decoded JSON holds exact dicts, lists and strs, so `type(...) is` tells them apart
    # (cheaper than isinstance, and this runs for every event).
    kind = type(value)
    if kind is str:
        if len(value) > MAX_STRING:
            raise LimitError(path, f"string longer than {MAX_STRING} characters")
        return
    if kind is dict:
        if depth >= MAX_DEPTH:
            raise LimitError(path, f"nested deeper than {MAX_DEPTH} levels")
        if len(value) > MAX_KEYS:
            raise LimitError(path, f"object with more than {MAX_KEYS} keys")
        for key, item in value.items():
            if len(key) > 256:
                raise LimitError([*path, key], "key longer than 256 characters")
            # Scalars are the common case: no call for them.
            kind = type(item)
            if kind is dict or kind is list or (kind is str and len(item) > MAX_STRING):
                _walk(item, [*path, key], depth + 1)
        return
    if kind is list:
        if depth >= MAX_DEPTH:
            raise LimitError(path, f"nested deeper than {MAX_DEPTH} levels")
        if len(value) > MAX_LIST:
            raise LimitError(path, f"array with more than {MAX_LIST} items")
        for index, item in enumerate(value):
            kind = type(item)
            if kind is dict or kind is list or (kind is str and len(item) > MAX_STRING):
                _walk(item, [*path, index], depth + 1)
