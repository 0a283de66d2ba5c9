"""Who is calling: the principal an API key authenticates as (every domain that audits an actor takes one)."""

from __future__ import annotations

from dataclasses import dataclass

from app.access.models import Role


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name and role."""

    key_id: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        """True for the admin role."""
        return self.role is Role.admin

    @property
    def reads_everything(self) -> bool:
        """True for the roles that read every task and record: admin, and viewer (which changes nothing)."""
        return self.role in (Role.admin, Role.viewer)

    @property
    def is_viewer(self) -> bool:
        """True for the read-only role."""
        return self.role is Role.viewer
