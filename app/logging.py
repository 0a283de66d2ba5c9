"""Logging shared by the API, the workers and the recorder: JSON lines carrying the request and task ids.

Each record becomes one JSON object: `ts`, `level`, `logger`, `message`, `process`, and when known
`request_id` (the HTTP request, or the request that dispatched the running task: read once per task from its
meta in Redis, and only for Courier's own lines, warnings and errors), `task_id`, `task_name` and `attempt`
(1 for the first run). Secrets are masked in every line (message, exception and stack): passwords in URLs (as
typed, percent-encoded, in failover lists), bearer tokens, `password=`/`token=`/`secret=` pairs, and every
credential the configuration holds, wherever it turns up.

`StateChangeLog` turns an outage into three kinds of line (down; still down every OUTAGE_LOG_INTERVAL_S; up
again) instead of one line per refused request.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from app.config import MASK, get_settings, redact_url
from app.constants import REQUEST_ID_HEADER, TASK_META_KEY
from app.context import request_id
from app.printable import visible
from app.redis_store import get_redis

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"

#: Patterns whose secret part is replaced by `***` in every formatted line (URL passwords: `redact_url`).
_SECRETS = (
    (re.compile(r"(?P<keep>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\g<keep>***"),
    (
        re.compile(
            r"(?P<keep>\b(?:password|passwd|secret|token|api[_-]?key|authorization)\b[\"']?\s*[=:]\s*[\"']?)[^\s\"',}&]+",
            re.I,
        ),
        r"\g<keep>***",
    ),
)


#: Credentials of this process's configuration (raw and percent-encoded), masked wherever they turn up; set by
#: `configure_logging` through `remember_secrets`.
_known: re.Pattern[str] | None = None
#: Shorter values are not masked as plain text (too likely to be ordinary words); inside URLs they still are.
MIN_SECRET_LENGTH = 6


def remember_secrets(secrets: Iterable[str]) -> None:
    """Mask these values (as typed and percent-encoded, once and twice) in every line from now on."""
    global _known
    forms: set[str] = set()
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            once = quote(secret, safe="")
            forms.update((secret, once, quote(once, safe="")))
    # Longest first, so a secret that contains another is masked whole.
    alternatives = sorted(forms, key=len, reverse=True)
    _known = re.compile("|".join(re.escape(form) for form in alternatives)) if alternatives else None


def redact(text: str) -> str:
    """Mask passwords in URLs, the configuration's credentials, bearer tokens and secret-looking pairs."""
    text = redact_url(text)
    if _known is not None:
        text = _known.sub(MASK, text)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _task_context() -> dict[str, Any]:
    """Id, name and attempt of the task this process is running now (a thread-local read; no I/O)."""
    try:
        # Local: the infrastructure layer imports no framework of an adapter at module level; only a worker's
        # process runs tasks, and there Celery is already loaded.
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
    """The text format, secrets masked, each record's message on one line: a line break or an ESC in it (a task name
    or an error from outside) is shown as its escape, so no value can forge a log line or drive the terminal that
    tails the log. A traceback follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Send records to stderr as JSON lines (or text, LOG_FORMAT=text); idempotent."""
    if fmt is None:
        fmt = get_settings().log_format
    remember_secrets(get_settings().secrets)
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


class StateChangeLog:
    """Logs the outage of a dependency as changes of state, not one line per failed call.

    The first failure logs that the dependency is down; while it stays down, one line every `interval_s` says
    so with the count of failures since; the first success after logs that it is back and how long it was away.
    Thread-safe; a success while up costs one attribute read.

    Parameters:
        logger: where the lines go (WARNING while down, INFO when back).
        what: the dependency, as the sentences name it ("The message broker").
        consequence: what callers see meanwhile ("dispatches answer 503"), added to the first line.
        interval_s: seconds between two "still down" lines; OUTAGE_LOG_INTERVAL_S when None.

    Examples:
        >>> broker = StateChangeLog(logger, "The message broker", consequence="dispatches answer 503")
        >>> broker.failed("publishing ping (t-1): ConnectionRefusedError(111)")   # WARNING, once
        >>> broker.succeeded()                                                     # INFO, once
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        consequence: str = "",
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.consequence = consequence
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_line = 0.0
        self._failures = 0

    @property
    def interval_s(self) -> float:
        if self._interval_s is None:
            self._interval_s = get_settings().outage_log_interval_s
        return self._interval_s

    @property
    def down(self) -> bool:
        """Whether the last outcome was a failure."""
        return self._down_since is not None

    def failed(self, error: object) -> None:
        """Count a failure; log it when it starts an outage or the last line is `interval_s` old."""
        now = self._clock()
        with self._lock:
            self._failures += 1
            if self._down_since is None:
                self._down_since = self._last_line = now
                failures = 0
            elif now - self._last_line >= self.interval_s:
                self._last_line = now
                failures = self._failures
            else:
                return
            since = now - self._down_since
        if not failures:
            consequence = f"; {self.consequence}" if self.consequence else ""
            self.logger.warning(
                "%s is down: %s%s (logged again every %g s while it lasts, and once when it is back).",
                self.what,
                error,
                consequence,
                self.interval_s,
            )
        else:
            self.logger.warning(
                "%s is still down after %.0f s (%d failure(s) so far); the last: %s.", self.what, since, failures, error
            )

    def succeeded(self) -> None:
        """Note a success; log the end of an outage if one was under way."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            since, failures = self._clock() - self._down_since, self._failures
            self._down_since, self._failures = None, 0
        self.logger.info("%s is back after %.1f s down (%d failure(s) meanwhile).", self.what, since, failures)
