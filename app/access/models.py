"""SQL table of API keys."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin


class Role(StrEnum):
    """What a key may do: `client` triggers workflows and reads its own tasks; `admin` does everything; `viewer`
    reads everything an admin reads (the console, the admin API's GET routes) and changes nothing."""

    client = "client"
    admin = "admin"
    viewer = "viewer"


class ApiKey(TimestampMixin, Base):
    """An API key. Only the SHA-256 of the secret is stored; the key is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[Role] = mapped_column(String(20))
    #: First characters of the key, for recognising it in listings; not secret.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]
