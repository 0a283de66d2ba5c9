"""webhook signing secrets stored encrypted under DATA_ENCRYPTION_KEYS (app/crypto.py)

Revision ID: a8e1d2c30008
Revises: a7e1d2c30007
Create Date: 2026-11-24 20:45:00

Existing secrets are encrypted in place with the first configured key; the downgrade decrypts them.
"""
from collections.abc import Callable
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'a8e1d2c30008'
down_revision: Union[str, Sequence[str], None] = 'a7e1d2c30007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ENDPOINTS = sa.table(
    'webhook_endpoints', sa.column('id', sa.Integer), sa.column('secret', sa.Text), sa.column('previous_secret', sa.Text)
)


def _rewrite(transform: Callable[[str], str]) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(ENDPOINTS.c.id, ENDPOINTS.c.secret, ENDPOINTS.c.previous_secret)).all()
    for row in rows:
        previous = None if row.previous_secret is None else transform(row.previous_secret)
        bind.execute(
            ENDPOINTS.update().where(ENDPOINTS.c.id == row.id).values(secret=transform(row.secret), previous_secret=previous)
        )


def upgrade() -> None:
    """Upgrade schema."""
    from app.crypto import encrypt

    with op.batch_alter_table('webhook_endpoints') as batch:
        batch.alter_column('secret', type_=sa.Text(), existing_type=sa.String(length=200), existing_nullable=False)
        batch.alter_column(
            'previous_secret', type_=sa.Text(), existing_type=sa.String(length=200), existing_nullable=True
        )
    _rewrite(encrypt)


def downgrade() -> None:
    """Downgrade schema."""
    from app.crypto import decrypt

    _rewrite(decrypt)
    with op.batch_alter_table('webhook_endpoints') as batch:
        batch.alter_column('secret', type_=sa.String(length=200), existing_type=sa.Text(), existing_nullable=False)
        batch.alter_column(
            'previous_secret', type_=sa.String(length=200), existing_type=sa.Text(), existing_nullable=True
        )
