"""Errors as RFC 9457 problem details (`application/problem+json`).

Every 4xx names what is wrong: `detail` in words, `pointer` (RFC 6901, into the request
body) or `errors` (one per rejected event, with its index and field) for the machine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
from msgspec import Struct
from starlette.responses import Response

from intently.events.validate import FieldError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:intently:problem:"


class Problem(Struct, omit_defaults=True):
    """An RFC 9457 problem, with two extensions: `pointer` to the field at fault and
    `errors` when several events were rejected."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    pointer: str | None = None
    errors: list[FieldError] | None = None
    # Where in a text field (a segment expression) the problem is: a 0-based offset.
    position: int | None = None
    # The figures behind a refusal (the promotion gate's evaluation).
    report: dict[str, Any] | None = None


_encode = msgspec.json.Encoder().encode


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    pointer: str | None = None,
    errors: list[FieldError] | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    position: int | None = None,
    report: dict[str, Any] | None = None,
) -> Response:
    body = Problem(
        type=TYPE_PREFIX + code,
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=instance,
        pointer=pointer or None,
        errors=errors,
        position=position,
        report=report,
    )
    return Response(_encode(body), status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def experiments_unavailable(error: BaseException) -> Response:
    """The answer while the experiment log's PostgreSQL cannot be reached."""
    log.warning("the experiment log cannot be read: %s", error)
    return problem(
        503, "experiments-unavailable",
        "the experiment log (PostgreSQL) cannot be reached; ask again",
        headers={"Retry-After": "5"},
    )  # fmt: skip


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer (msgspec-encoded: structs, dicts, lists). Headers are best given
    here: one set on the response afterwards re-scans all of them."""
    return Response(_encode(body), status, headers, media_type="application/json")
