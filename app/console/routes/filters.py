"""Filters from a page's query string or a form's fields: an empty field means "any", a bad value a 422 page."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import ImmutableMultiDict

from app.constants import TaskState
from app.deadletters.models import Reason, Status
from app.deadletters.service import DeadLetterFilter
from app.errors import Unprocessable
from app.runs.service import RunFilter

#: Rows per page of every list.
PAGE_SIZE = 50
#: The dead-letter filter's fields, in the order the form shows them.
LETTER_FIELDS = ("task_name", "reason", "error_class", "queue", "status", "since", "until", "task_id")
RUN_FIELDS = ("state", "name", "triggered_by", "since", "until")
#: Fields a query string may repeat (`state=FAILURE&state=DEAD_LETTERED`: any of them), shown back as lists.
REPEATED_FIELDS = ("state",)


def _text(params: Mapping[str, Any], name: str, max_length: int = 200) -> str | None:
    value = params.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    if len(value) > max_length or "\x00" in value:
        raise Unprocessable(f"The filter {name!r} is too long or holds a character no record can.")
    return value.strip()


def _time(params: Mapping[str, Any], name: str) -> datetime | None:
    value = _text(params, name, 40)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Unprocessable(f"The filter {name!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC).") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _choice(params: Mapping[str, Any], name: str, kind: Any) -> Any:
    value = _text(params, name, 40)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise Unprocessable(f"The filter {name!r} has no value {value!r}.") from None


def _all(params: Mapping[str, Any], name: str) -> list[str]:
    """Every value of a repeated field (a query string's or a form's), the empty ones left out."""
    values = params.getlist(name) if isinstance(params, ImmutableMultiDict) else [params.get(name)]
    return [v for v in values if isinstance(v, str) and v.strip()]


def _choices(params: Mapping[str, Any], name: str, kind: Any) -> tuple[Any, ...]:
    """A repeated choice: every value, each checked as `_choice` checks one."""
    return tuple(_choice({name: value}, name, kind) for value in _all(params, name))


def letter_filter(params: Mapping[str, Any], *, status_default: str = "pending") -> DeadLetterFilter:
    """Dead-letter filters; `status` is pending unless the form says another, or `any`."""
    status_text = params.get("status", status_default)
    status = None if status_text in ("any", "") else _choice({"status": status_text}, "status", Status)
    return DeadLetterFilter(
        task_name=_text(params, "task_name"),
        reason=_choice(params, "reason", Reason),
        queue=_text(params, "queue"),
        error_class=_text(params, "error_class"),
        since=_time(params, "since"),
        until=_time(params, "until"),
        status=status,
        task_id=_text(params, "task_id", 64),
    )


def run_filter(params: Mapping[str, Any]) -> RunFilter:
    """Run-history filters; `state` may repeat (runs in any of those states)."""
    return RunFilter(
        states=_choices(params, "state", TaskState),
        name=_text(params, "name"),
        since=_time(params, "since"),
        until=_time(params, "until"),
        triggered_by=_text(params, "triggered_by", 100),
    )


def run_cursor(created_at: datetime, task_id: str) -> str:
    """The keyset of a run in the listing's order: `<created_at ISO>~<task id>`."""
    return f"{created_at.isoformat()}~{task_id}"


def run_after(params: Mapping[str, Any]) -> tuple[datetime, str] | None:
    """The run a page of runs starts after (`after=<created_at ISO>~<task id>`), or None for the first page."""
    value = _text(params, "after", 120)
    if value is None:
        return None
    created, _, task_id = value.partition("~")
    moment = _time({"after": created}, "after")
    if moment is None or not task_id:
        raise Unprocessable("The page marker `after` is not `<time>~<task id>`.")
    return moment, task_id


def form_values(params: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The filter fields as the form shows them back (empty for any; a list for a repeated field)."""
    return {name: _all(params, name) if name in REPEATED_FIELDS else str(params.get(name) or "") for name in fields}


def offset(params: Mapping[str, Any]) -> int:
    """The page's offset (a multiple of nothing in particular; bounded)."""
    try:
        return max(0, min(int(params.get("offset") or 0), 10_000_000))
    except ValueError:
        raise Unprocessable("The offset is not a number.") from None
