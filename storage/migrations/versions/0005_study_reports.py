"""One report per study: instances record when a sent report listed them; sent reports and the
replacement that superseded each are kept (daemon.stages.results).

Images already reported (or stored as not analysed) before this revision count as reported when it
ran, so an upgrade sends no replacement for studies that were complete before it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 16:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reported_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_instances_state_reported', ['state', 'reported_at'], unique=False)
    op.execute("UPDATE instances SET reported_at = updated_at WHERE state IN ('reported', 'not_analysed')")
    op.create_table(
        'sent_reports',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('result_id', sa.Integer(), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('analysed', sa.Integer(), nullable=False),
        sa.Column('not_analysed', sa.Integer(), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('superseded_by', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['result_id'], ['results.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['superseded_by'], ['sent_reports.id']),
        sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('sent_reports', schema=None) as batch_op:
        batch_op.create_index('ix_sent_reports_result', ['result_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sent_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_sent_reports_result')
    op.drop_table('sent_reports')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_state_reported')
        batch_op.drop_column('reported_at')
