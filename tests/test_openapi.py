"""The OpenAPI document is true: it lists exactly the app's routes, and a fuzz run from it
(schemathesis) finds no server error and no answer outside the document."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from intently import Engine
from intently.api.app import create_app
from intently.api.openapi import build_openapi
from support import SECRET_KEY, make_settings

_DATA = Path(tempfile.mkdtemp(prefix="intently-fuzz-"))
ENGINE = Engine(make_settings(_DATA / "data"))
APP = create_app(ENGINE)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _close_engine() -> Iterator[None]:
    yield
    ENGINE.close()
    shutil.rmtree(_DATA, ignore_errors=True)


def app_routes() -> set[tuple[str, str]]:
    starlette = APP.app  # type: ignore[attr-defined]
    # OpenAPI paths name parameters without Starlette's converters ({id:path} -> {id}).
    return {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.lower())
        for route in starlette.routes
        # Pages and assets (the tag, the demo shop, the dashboard) are not API operations.
        if isinstance(route, Route) and route.include_in_schema
        for method in (route.methods or ()) - {"HEAD"}
    }


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    documented = {
        (path, method)
        for path, ops in build_openapi()["paths"].items()
        for method in ops
        if method != "parameters"  # shared by the operations of a path, not one itself
    }
    assert documented == app_routes()


def test_every_documented_schema_reference_resolves() -> None:
    document = build_openapi()
    components = document["components"]["schemas"]
    text = str(document)
    for name in {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in components, name


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_the_api_from_its_own_document(case: schemathesis.Case) -> None:
    case.call_and_validate(
        # The secret key may call every route, so every route is fuzzed past its auth.
        headers={"Authorization": f"Bearer {SECRET_KEY}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
