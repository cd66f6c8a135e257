"""Radiology reports from the RIS (HL7 v2): a reports table of pseudonymous keys, a keyed accession
hash on instances, and labels that say where they came from (manual import or report) with a state
per finding.

Existing labels were all imported by `cxrd labels import`: they become source 'manual', and their
per-finding states are filled from `findings` (listed positive, the rest negative).

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-29 18:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('accession_hash', sa.String(length=64), nullable=False, server_default=''))
        batch_op.create_index('ix_instances_accession_hash', ['accession_hash'], unique=False)
    op.create_table(
        'reports',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('message_key', sa.String(length=64), nullable=False),
        sa.Column('sender', sa.String(length=128), nullable=False),
        sa.Column('message_type', sa.String(length=16), nullable=False),
        sa.Column('result_status', sa.String(length=4), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('accession_hash', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.String(length=240), nullable=False),
        sa.Column('findings', sa.Text(), nullable=False),
        sa.Column('text_object', sa.String(length=80), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('matched_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('matched_study_uid', sa.String(length=64), nullable=False),
        sa.Column('labelled', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('message_key'))
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index('ix_reports_state', ['state'], unique=False)
        batch_op.create_index('ix_reports_study_uid', ['study_uid'], unique=False)
        batch_op.create_index('ix_reports_accession_hash', ['accession_hash'], unique=False)
        batch_op.create_index('ix_reports_matched_study_uid', ['matched_study_uid'], unique=False)
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=16), nullable=False, server_default='manual'))
        batch_op.add_column(sa.Column('states', sa.Text(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('report_id', sa.Integer(), nullable=True))
    _fill_manual_states()


# The 14 ChestX-ray14 findings as of this revision (cxrmodel.labels.LABELS); a fixed copy, so the
# revision means the same whenever it runs.
_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
             "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")


def _fill_manual_states() -> None:
    """Every existing label was a manual import: its listed findings positive, every other negative."""
    import json
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT instance_id, findings FROM labels")).all()
    for instance_id, findings in rows:
        listed = {f.strip() for f in (findings or "").split("|")}
        states = {f: ("positive" if f in listed else "negative") for f in _FINDINGS}
        conn.execute(sa.text("UPDATE labels SET states = :s WHERE instance_id = :i"),
                     {"s": json.dumps(states, sort_keys=True), "i": instance_id})


def downgrade() -> None:
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_column('report_id')
        batch_op.drop_column('states')
        batch_op.drop_column('source')
    op.drop_table('reports')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_accession_hash')
        batch_op.drop_column('accession_hash')
