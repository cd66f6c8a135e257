"""Monitoring: input characteristics of each analysed image, and the monitoring gauges' latest state.

`input_profiles` holds one row per analysed image (equipment and geometry attributes, intensity
statistics; nothing identifying), removed with its instance. `monitor_state` holds the latest value
of each drift and live-performance gauge and whether it is in alarm, so every daemon's /metrics
reports the same and an alarm is audited once when it starts.

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-29 18:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'input_profiles',
        sa.Column('instance_id', sa.Integer(), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('measured_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('manufacturer', sa.String(length=64), nullable=False),
        sa.Column('model_name', sa.String(length=64), nullable=False),
        sa.Column('pixel_spacing_mm', sa.Float(), nullable=True),
        sa.Column('bits_stored', sa.Integer(), nullable=True),
        sa.Column('photometric', sa.String(length=16), nullable=False),
        sa.Column('rows', sa.Integer(), nullable=False),
        sa.Column('columns', sa.Integer(), nullable=False),
        sa.Column('view', sa.String(length=16), nullable=False),
        *[sa.Column(f'{scale}_{stat}', sa.Float(), nullable=True)
          for scale in ('intensity', 'unit') for stat in ('mean', 'std', 'p05', 'p50', 'p95')],
        sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('instance_id'))
    with op.batch_alter_table('input_profiles', schema=None) as batch_op:
        batch_op.create_index('ix_input_profiles_measured_at', ['measured_at'], unique=False)
    op.create_table(
        'monitor_state',
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('metric', sa.String(length=64), nullable=False),
        sa.Column('labels', sa.Text(), nullable=False),
        sa.Column('value', sa.Float(), nullable=True),
        sa.Column('alarm', sa.Boolean(), nullable=False),
        sa.Column('alarm_since', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('key'))


def downgrade() -> None:
    op.drop_table('monitor_state')
    with op.batch_alter_table('input_profiles', schema=None) as batch_op:
        batch_op.drop_index('ix_input_profiles_measured_at')
    op.drop_table('input_profiles')
