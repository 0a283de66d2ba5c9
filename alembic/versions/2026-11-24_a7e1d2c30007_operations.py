"""operations: queue pause state and the like

Revision ID: a7e1d2c30007
Revises: a5e1d2c30005
Create Date: 2026-11-24 12:00:00

A reserved slot in a linear chain, so the three workstreams merge without an Alembic branch point.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'a7e1d2c30007'
down_revision: Union[str, Sequence[str], None] = 'a5e1d2c30005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('queue_pauses',
    sa.Column('queue', sa.String(length=20), nullable=False),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('paused_by', sa.String(length=100), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('queue', name=op.f('pk_queue_pauses'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('queue_pauses')
