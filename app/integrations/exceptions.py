"""Errors of the integrations domain."""

from __future__ import annotations

from app.errors import Conflict, NotFound, Unprocessable


class EgressRefused(Unprocessable):
    """An outbound URL is not allowed: bad scheme, unresolvable, or it points at a forbidden address."""

    code = "egress_refused"


class EndpointNotFound(NotFound):
    """No webhook endpoint has this id."""

    def __init__(self, endpoint_id: int) -> None:
        super().__init__(f"No webhook endpoint has id {endpoint_id}.")


class DeliveryNotFound(NotFound):
    """No delivery of this endpoint has this id."""

    def __init__(self, delivery_id: int) -> None:
        super().__init__(f"No delivery of this endpoint has id {delivery_id}.")


class IntegrationNotFound(NotFound):
    """No external system has this id."""

    def __init__(self, integration_id: int) -> None:
        super().__init__(f"No integration has id {integration_id}.")


class DuplicateIntegration(Conflict):
    """An external system with this name exists already."""

    def __init__(self, name: str) -> None:
        super().__init__(f"An integration named {name!r} already exists.")


class EndpointDisabled(Conflict):
    """The endpoint is disabled; enable it (PATCH) before replaying to it."""

    def __init__(self, endpoint_id: int) -> None:
        super().__init__(f"Webhook endpoint {endpoint_id} is disabled; enable it first (PATCH enabled=true).")
