"""Alembic environment: metadata from app.db.Base, URL from Settings."""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from sqlalchemy import create_engine, pool

import app.access.models  # noqa: F401  (register tables)
import app.audit.models  # noqa: F401
import app.deadletters.models  # noqa: F401
import app.events.models  # noqa: F401
import app.identity.models  # noqa: F401
import app.integrations.models  # noqa: F401
import app.notifications.models  # noqa: F401
import app.operations.models  # noqa: F401
import app.runs.models  # noqa: F401
from alembic import context
from app.config import get_settings
from app.db import Base, UTCDateTime

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render app.db.UTCDateTime as a plain timezone-aware DateTime, so migrations don't import app code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _url() -> str:
    return config.attributes.get("url") or get_settings().sqlalchemy_url


def run_migrations_offline() -> None:
    """Emit SQL without a connection."""
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against the database."""
    url = _url()
    if url.startswith("sqlite"):
        get_settings().var_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_as_batch=url.startswith("sqlite"),
        )
        with context.begin_transaction():
            context.run_migrations()
        if url.startswith("sqlite"):
            # WAL lives in the file: set it here, once, before any worker or API process opens it concurrently.
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
