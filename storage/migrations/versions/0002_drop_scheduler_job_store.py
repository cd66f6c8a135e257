"""Drop APScheduler's job store: the schedule lives in configuration and jobs stay in memory.

The job store held pickled jobs that the elected daemon unpickled, so anyone able to write that table
could run code inside the process that holds the master key. Nothing is read back from it any more.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 13:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP TABLE IF EXISTS apscheduler_jobs")


def downgrade() -> None:
    # The table comes back empty: the daemon re-adds its jobs from configuration at every start.
    op.create_table('apscheduler_jobs',
    sa.Column('id', sa.String(length=191), nullable=False),
    sa.Column('next_run_time', sa.Float(precision=25), nullable=True),
    sa.Column('job_state', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_apscheduler_jobs_next_run_time', 'apscheduler_jobs', ['next_run_time'], unique=False)
