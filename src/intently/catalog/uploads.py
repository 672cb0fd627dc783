"""Bulk uploads judged entry by entry: one bad entry is refused with its field named
(`/items/3/price`), the others go on; only a body that cannot be read at all fails whole."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import msgspec

from intently.events.limits import LimitError
from intently.events.validate import FieldError, field_error, split_msgspec_error

T = TypeVar("T")


class UploadError(ValueError):
    """The body as a whole is unusable."""

    def __init__(self, detail: str, pointer: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.pointer = pointer


class EntryInvalid(ValueError):
    """One entry breaks a rule the schema cannot express; `path` names the field."""

    def __init__(self, path: list[str | int], detail: str, reason: str = "invalid-value") -> None:
        super().__init__(detail)
        self.path, self.detail, self.reason = path, detail, reason


def read_entries(body: bytes, envelope: msgspec.json.Decoder[Any], key: str) -> list[msgspec.Raw]:
    """The raw entries under `key` of an upload body (the envelope's field `key`)."""
    try:
        entries: list[msgspec.Raw] = getattr(envelope.decode(body), key)
    except msgspec.ValidationError as exc:
        detail, path = split_msgspec_error(str(exc))
        raise UploadError(detail, "/" + "/".join(map(str, path)) if path else "") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UploadError(f"the body is not valid JSON: {exc}") from None
    return entries


def judge(
    make: Callable[[], T], index: int | None, container: str
) -> tuple[T | None, FieldError | None]:
    """`make()` (which decodes and checks one entry), or why it failed, as a field error
    pointing into `/container/index`."""
    try:
        return make(), None
    except msgspec.ValidationError as exc:
        detail, path = split_msgspec_error(str(exc))
        return None, field_error(index, path, detail, "schema", container)
    except msgspec.DecodeError as exc:
        return None, field_error(index, [], f"malformed JSON: {exc}", "malformed-json", container)
    except LimitError as exc:
        return None, field_error(index, exc.path, exc.detail, "limits", container)
    except EntryInvalid as exc:
        return None, field_error(index, exc.path, exc.detail, exc.reason, container)
    except (UnicodeDecodeError, RecursionError):
        return None, field_error(index, [], "not readable as JSON text", "unreadable", container)


def judge_all(
    entries: list[msgspec.Raw], container: str, make: Callable[[msgspec.Raw], T]
) -> tuple[list[tuple[int, T]], list[FieldError]]:
    valid: list[tuple[int, T]] = []
    errors: list[FieldError] = []
    for index, raw in enumerate(entries):
        value, error = judge(partial(make, raw), index, container)
        if error is not None:
            errors.append(error)
        else:
            assert value is not None
            valid.append((index, value))
    return valid, errors
