"""Prediction rows carry an HMAC (storage.records) so a report is built only from rows cxrd wrote.

Rows written before this revision get an empty MAC and are never used for a report.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 14:20:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mac', sa.String(length=64), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_column('mac')
