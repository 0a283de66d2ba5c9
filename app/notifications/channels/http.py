"""SMS and push over a provider's HTTP API (httpx, with timeouts). 5xx/429/network errors are transient
(429's Retry-After is kept), any other 4xx is permanent with the provider's reason."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from app.notifications.channels.base import (
    OutgoingMessage,
    PermanentDeliveryError,
    Receipt,
    TransientDeliveryError,
)

logger = logging.getLogger(__name__)


def parse_fields(spec: str) -> dict[str, str]:
    """`"to:recipient,body:text"` → {"to": "recipient", "body": "text"}: provider field → Courier value."""
    pairs = (item.split(":", 1) for item in spec.split(",") if item.strip())
    return {field.strip(): value.strip() for field, value in pairs}


class HttpSender:
    """POSTs one JSON payload per message to `url`, authenticated with a Bearer key, and keyed for the
    provider's deduplication with `Idempotency-Key: <reference>`.

    Parameters:
        url: the provider's endpoint.
        api_key: sent as `Authorization: Bearer <key>` when not empty.
        fields: provider field → one of recipient, text, title, data, reference, sender.
        sender: the `sender` value (an SMS sender id); None for a channel without one (push): a `sender` field
            in `fields` is then left out of the payload.
        id_field: field of the JSON answer that holds the provider's message id.
        timeout_s: connect/read/write timeout of each call.
    """

    def __init__(
        self, *, url: str, api_key: str, fields: str, sender: str | None, id_field: str, timeout_s: float
    ) -> None:
        self.url, self.sender, self.id_field = url, sender, id_field
        self.fields = parse_fields(fields)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers)

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        """The JSON body in the provider's shape."""
        values: dict[str, Any] = {
            "recipient": message.recipient,
            "text": message.text,
            "title": message.subject,
            "data": message.data,
            "reference": message.reference,
        }
        if self.sender is not None:
            values["sender"] = self.sender
        return {field: values[value] for field, value in self.fields.items() if value in values}

    def send(self, message: OutgoingMessage) -> Receipt:
        """POST the message; map the answer to a receipt or a transient/permanent error."""
        try:
            response = self._client.post(
                self.url, json=self.payload(message), headers={"Idempotency-Key": message.reference}
            )
        except httpx.HTTPError as exc:
            raise TransientDeliveryError(f"{message.channel} provider unreachable: {exc!r}") from exc
        reason = f"{message.channel} provider answered {response.status_code}: {response.text[:500]}"
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientDeliveryError(reason, retry_after=_retry_after(response))
        if response.status_code >= 400:
            raise PermanentDeliveryError(reason)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        provider_id = answer.get(self.id_field) if isinstance(answer, dict) else None
        return Receipt(provider_message_id=str(provider_id or response.headers.get("x-request-id", "")))

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None
