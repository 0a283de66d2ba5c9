"""Logging setup shared by the API, the workers and the recorder: one line per record, with ids in messages."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send records to stderr in one format; idempotent."""
    root = logging.getLogger()
    if not any(getattr(h, "_courier", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._courier = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    # One line per management-API call would drown the worker log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
