"""The OpenAPI spec declares every error answer a route can give, with the JSON envelope.

The 429s of /identity/password-reset and /identity/mfa/challenge, and the 401/403 of the key checks, were
missing from the spec. What each route can answer is derived here from the route itself (its dependencies,
its inputs, its status), so a route added later cannot drop out of the spec unnoticed; the fuzz run
(tests/api/test_fuzz.py) fails on any status an operation answers without declaring it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import get_principal, require_admin
from app.main import app
from tests.support.api import auth

ENVELOPE = "#/components/schemas/ErrorResponse"


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def _routes() -> Iterator[tuple[Any, dict[str, Any]]]:
    """Each operation: the route as the app serves it (router dependencies included) and its spec entry."""
    spec = app.openapi()
    found = 0
    for route in routing.iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            for method in route.methods:
                found += 1
                yield route, spec["paths"][route.path_format][method.lower()]
    assert found > 40  # (the walk reached the included routers)


def _has_input(dependant: Dependant) -> bool:
    params = dependant.path_params + dependant.query_params + dependant.header_params + dependant.body_params
    return bool(params) or any(_has_input(sub) for sub in dependant.dependencies)


def test_the_rate_limited_routes_declare_their_429_with_retry_after() -> None:
    spec = app.openapi()
    for path in ("/api/v1/identity/password-reset", "/api/v1/identity/mfa/challenge"):
        declared = spec["paths"][path]["post"]["responses"]
        assert "429" in declared, path
        assert declared["429"]["content"]["application/json"]["schema"]["$ref"] == ENVELOPE
        assert "Retry-After" in declared["429"]["headers"]


def test_every_route_declares_what_its_key_check_inputs_and_dispatch_can_answer() -> None:
    missing = []
    for route, operation in _routes():
        declared = set(operation["responses"])
        calls = set(_calls(route.dependant))
        expected = set()
        if get_principal in calls:
            expected.add("401")
        if require_admin in calls:
            expected.add("403")
        if _has_input(route.dependant):
            expected.add("422")
        if route.dependant.body_params:  # a body that is not UTF-8 text: FastAPI's 400
            expected.add("400")
        if any(p.name.endswith("_id") and p.field_info.annotation is int for p in route.dependant.path_params):
            expected.add("404")
        if route.status_code == 202:  # a dispatching route: the broker or Redis may be down
            expected.add("503")
        missing += [f"{sorted(route.methods)} {route.path} {code}" for code in sorted(expected - declared)]
    assert not missing, "\n".join(missing)


def test_every_declared_error_has_the_envelope_and_503_says_when_to_retry() -> None:
    wrong = []
    for route, operation in _routes():
        for code, response in operation["responses"].items():
            if not code.startswith(("4", "5")) or route.path == "/api/v1/tasks/health":
                continue  # (readiness answers 503 with its own body: which component is down)
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") != ENVELOPE:
                wrong.append(f"{route.path} {code}: {schema}")
            if code in ("429", "503") and "Retry-After" not in response.get("headers", {}):
                wrong.append(f"{route.path} {code}: no Retry-After")
    assert not wrong, "\n".join(wrong)


def test_a_rate_limited_answer_is_the_one_the_spec_declares(api: Any, client_key: tuple[str, str]) -> None:
    # Given a client that used up the password resets of one address
    body = {"email": "spec-429@example.com"}
    answers = [api.post("/api/v1/identity/password-reset", json=body, headers=auth(client_key)) for _ in range(6)]
    limited = answers[-1]
    # Then the answer past the limit is the declared 429: the envelope and Retry-After
    assert [a.status_code for a in answers[:5]] == [202] * 5
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
