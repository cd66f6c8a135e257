"""Shadow candidates: a second model's probabilities per image, kept apart from `predictions` so that
nothing of them is ever sent (daemon.stages.shadow, storage.shadow).

Revision ID: 0009
Revises: 0005
Create Date: 2026-11-29 18:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'shadow_predictions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('instance_id', sa.Integer(), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('current_version', sa.String(length=64), nullable=False),
        sa.Column('probabilities', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('mac', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('instance_id', 'model_version'))
    with op.batch_alter_table('shadow_predictions', schema=None) as batch_op:
        batch_op.create_index('ix_shadow_predictions_version', ['model_version', 'current_version'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('shadow_predictions', schema=None) as batch_op:
        batch_op.drop_index('ix_shadow_predictions_version')
    op.drop_table('shadow_predictions')
