"""A property-based pass over the OpenAPI spec (schemathesis), as an admin and as a client.

Every operation of the app's own spec gets a bounded number of generated requests, valid and invalid, sent
in-process to the real app (real RabbitMQ vhost, Redis db and PostgreSQL database of the test session). Each
answer must not be a server error and must be what the spec declares: a documented status code, its content
type, a body matching its schema, its declared headers. A route added later is fuzzed without touching this file.

The run is bounded (`MAX_EXAMPLES` per operation and key, no coverage phase) and leaves nothing behind that
other tests could trip on: every tier is resumed and the work queues are emptied afterwards (dispatching
routes publish real messages; no worker runs them here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.constants import Tier
from app.main import app
from tests.support.api import auth, make_key

#: Generated requests per operation and key: about 60 operations x 2 keys x this, in 1-2 minutes on 2 busy cores.
MAX_EXAMPLES = 8

#: The checks every answer must pass.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

SPEC = app.openapi()
schema = schemathesis.openapi.from_dict(SPEC)
# Examples from the spec and generated cases; the coverage phase (every boundary of every field) is unbounded.
schema.config.phases.update(phases=["examples", "fuzzing"])
schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none")
schema.config.seed = 15  # the same cases on every run; change it to explore others


@pytest.fixture(scope="module")
def fuzz_client() -> Iterator[Any]:
    """The app in-process for the whole module; afterwards every tier resumed and the work queues emptied."""
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
        cleanup = auth(make_key("admin"))
        for tier in Tier:
            response = client.post(f"/api/v1/tasks/queues/{tier.value}/resume", headers=cleanup)
            assert response.status_code == 200, response.text
        assert client.get("/api/v1/tasks/queues/paused", headers=cleanup).json() == []
    _empty_work_queues()


def _empty_work_queues() -> None:
    from app.config import get_settings
    from app.rabbitmq import ManagementClient

    settings = get_settings()
    with ManagementClient.for_broker_user(settings) as management:
        for tier in Tier:
            management.purge(settings.broker_vhost, tier.value)


@pytest.fixture(scope="module")
def fuzz_keys() -> list[dict[str, str]]:
    """An admin's and a client's Authorization headers, made once for the module."""
    return [auth(make_key("admin")), auth(make_key("client"))]


def _send(client: Any, case: Any, headers: dict[str, str]) -> Any:
    """Send a generated case through the TestClient (requests-style arguments to httpx's)."""
    kwargs = case.as_transport_kwargs(headers=headers)
    request: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": kwargs.get("headers"),
        "params": kwargs.get("params"),
    }
    if "json" in kwargs:
        request["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        request["content"] = data.encode() if isinstance(data, str) else data
    return client.request(**request)


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck), deadline=None)
def test_the_api_answers_every_generated_request_as_its_spec_says(
    case: Any, fuzz_client: Any, fuzz_keys: list[dict[str, str]]
) -> None:
    # Given a generated request for one operation, when an admin and a client send it
    for headers in fuzz_keys:
        response = _send(fuzz_client, case, headers)
        # Then the answer is no server error and matches the spec (status, content type, body, headers);
        # a 503 the operation declares (readiness without workers, a dependency down) is an answer, not an error
        checks = CHECKS if not _declared_unavailable(case, response) else CHECKS[1:]
        case.validate_response(response, checks=checks)


def _declared_unavailable(case: Any, response: Any) -> bool:
    declared = SPEC["paths"][case.path][case.method.lower()]["responses"]
    return bool(response.status_code == 503 and "503" in declared)
