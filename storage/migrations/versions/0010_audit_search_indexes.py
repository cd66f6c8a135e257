"""Indexes for searching the audit trail page by page (the web console's compliance pages).

Every search is keyset-paged by seq, newest first (`... AND seq < :cursor ORDER BY seq DESC LIMIT n`).
With an index that starts with the filtered column and ends with seq, one filter (an event type, a
DICOM event id, an actor, an outcome, a study) reads only the rows of one page from the index instead
of walking the whole table backwards past rows that do not match. (occurred_at, outcome) covers the
per-day counts of events and failures, so they read the index alone.

Revision ID: 0010
Revises: 0006
Create Date: 2026-11-29 17:45:00
"""
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

INDEXES = {
    'ix_audit_events_type_seq': ['event_type', 'seq'],
    'ix_audit_events_event_id_seq': ['event_id', 'seq'],
    'ix_audit_events_actor_seq': ['actor', 'seq'],
    'ix_audit_events_outcome_seq': ['outcome', 'seq'],
    'ix_audit_events_study_seq': ['study_uid', 'seq'],
    'ix_audit_events_time_outcome': ['occurred_at', 'outcome'],
}


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        for name, columns in INDEXES.items():
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        for name in INDEXES:
            batch_op.drop_index(name)
