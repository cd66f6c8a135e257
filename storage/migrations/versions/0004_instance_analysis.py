"""Instances record their view and why they were or were not analysed (daemon.stages.view_rule).

Only frontal chest radiographs are classified; the others are stored in the new final state
`not_analysed`. Rows stored before this revision get empty values (decided before the rule existed).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 15:20:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('view', sa.String(length=16), server_default='', nullable=False))
        batch_op.add_column(sa.Column('analysis_reason', sa.String(length=240), server_default='',
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('analysis_reason')
        batch_op.drop_column('view')
