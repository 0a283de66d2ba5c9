"""Logging shared by the API, the workers and the recorder: JSON lines carrying the request and task ids.

Each record becomes one JSON object: `ts`, `level`, `logger`, `message`, `process`, and when known
`request_id` (the HTTP request, or the request that dispatched the running task: read once per task from its
meta in Redis, and only for Courier's own lines, warnings and errors), `task_id`, `task_name` and `attempt`
(1 for the first run). Secrets are masked in every line: passwords in URLs, bearer tokens and
`password=`/`token=`/`secret=` pairs.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from app.constants import REQUEST_ID_HEADER
from app.context import request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"

#: Patterns whose secret part is replaced by `***` in every formatted line.
_SECRETS = (
    # scheme://user:password@host
    (re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?=@)", re.I), r"\g<keep>***"),
    (re.compile(r"(?P<keep>\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\g<keep>***"),
    (
        re.compile(
            r"(?P<keep>\b(?:password|passwd|secret|token|api[_-]?key|authorization)\b[\"']?\s*[=:]\s*[\"']?)[^\s\"',}&]+",
            re.I,
        ),
        r"\g<keep>***",
    ),
)


def redact(text: str) -> str:
    """Mask passwords in URLs, bearer tokens and secret-looking `key=value` pairs."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _task_context() -> dict[str, Any]:
    """Id, name and attempt of the task this process is running now (a thread-local read; no I/O)."""
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover - celery is a dependency
        return {}
    task = current_task
    request = getattr(task, "request", None) if task else None
    task_id = getattr(request, "id", None) if request is not None else None
    if request is None or not task_id:
        return {}
    context = {"task_id": task_id, "task_name": task.name, "attempt": int(request.retries or 0) + 1}
    dispatched_by = getattr(request, REQUEST_ID_HEADER, None)  # the header the publishers add
    if dispatched_by:
        context["request_id"] = dispatched_by
    return context


#: Request id of each task id this process has run, read once from the task's meta (only when it logs).
_request_ids: dict[str, str | None] = {}


def _request_id_of_task(task_id: str) -> str | None:
    """The request that dispatched `task_id`, from the publisher's meta in Redis; cached, bounded."""
    if task_id in _request_ids:
        return _request_ids[task_id]
    found: str | None = None
    try:
        from app.constants import TASK_META_KEY
        from app.redis_store import get_redis

        raw = get_redis().hget(TASK_META_KEY.format(task_id=task_id), "request_id")
        found = str(raw) if raw else None
    except Exception:  # a log line must never fail because Redis is away
        found = None
    if len(_request_ids) > 1000:
        _request_ids.clear()
    _request_ids[task_id] = found
    return found


def _worth_a_lookup(record: logging.LogRecord) -> bool:
    """Look the request id up for Courier's own lines and for warnings and errors, but not for Celery's routine
    per-task lines ("succeeded in ..."): those would cost every task a Redis round trip."""
    return record.levelno >= logging.WARNING or record.name == "app" or record.name.startswith("app.")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with request and task context, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "process": record.process,
        }
        task = _task_context()
        entry.update(task)
        rid = request_id.get() or task.get("request_id")
        if not rid and task and _worth_a_lookup(record):  # a message published without the header
            rid = _request_id_of_task(task["task_id"])
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exc_info"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack_info"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class RedactingFormatter(logging.Formatter):
    """The text format, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Send records to stderr as JSON lines (or text, LOG_FORMAT=text); idempotent."""
    if fmt is None:
        from app.config import get_settings

        fmt = get_settings().log_format
    root = logging.getLogger()
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else RedactingFormatter(TEXT_FORMAT)
    ours = [h for h in root.handlers if getattr(h, "_courier", False)]
    if ours:
        for handler in ours:
            handler.setFormatter(formatter)
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        handler._courier = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn gives its loggers handlers of their own; send their lines (access log included) through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        server_logger.handlers = []
        server_logger.propagate = True
    # One line per management-API call would drown the worker log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
