"""The hash chain: each entry's hash covers its content and the previous entry's hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: The fields an entry's hash covers, in the canonical JSON the hash is taken over.
HASHED_FIELDS = (
    "at",
    "actor",
    "role",
    "action",
    "target",
    "outcome",
    "reason",
    "details",
    "request_id",
    "client_address",
    "prev_hash",
)


def canonical_time(value: datetime) -> str:
    """A timestamp as the chain hashes it: UTC, microseconds, ISO 8601."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


#: Every column, in the archive line order.
COLUMNS = ("id", *HASHED_FIELDS, "hash")


def as_record(event: Any) -> dict[str, Any]:
    """An entry (AuditEvent, or a row mapping of its columns) as a JSON-ready dict: the archive line format."""
    if isinstance(event, Mapping):
        record = {name: event[name] for name in COLUMNS}
    else:
        record = {name: getattr(event, name) for name in COLUMNS}
    record["at"] = canonical_time(record["at"])
    return record


def compute_hash(record: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the hashed fields of `record` (an `as_record` dict)."""
    payload = {name: record.get(name) for name in HASHED_FIELDS}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def normalise_details(details: dict[str, Any] | None) -> dict[str, Any] | None:
    """Details as they read back from the JSON column, so the stored row hashes like the inserted one."""
    if details is None:
        return None
    value: dict[str, Any] = json.loads(json.dumps(details, default=str))
    return value
