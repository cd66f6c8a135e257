"""The database tables: the durable state through which ingest, worker, results and scheduler meet.

Only pseudonymous identifiers live here. Original identifiers exist only inside `ReidEntry.sealed`,
encrypted under the re-identification key. The schema changes only through Alembic revisions in
`storage/migrations/versions`; a test checks these models and the migrated schema agree.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary,
                        String, Text, TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


# Instance states; every move between them is a committed row update. NOT_ANALYSED is final: the
# image is stored (acknowledged, encrypted, purged with the rest) but the model never sees it (a
# lateral view, say); `analysis_reason` says why. An image ingest ignores (not a chest radiograph)
# gets no row at all, only its audit event.
RECEIVED, PREDICTED, REPORTED, FAILED, QUARANTINED, NOT_ANALYSED = (
    "received", "predicted", "reported", "failed", "quarantined", "not_analysed")
INSTANCE_STATES = (RECEIVED, PREDICTED, REPORTED, FAILED, QUARANTINED, NOT_ANALYSED)


class Instance(Base):
    """One de-identified image we acknowledged (or ignored). UIDs are the 2.25 pseudonyms."""
    __tablename__ = "instances"
    # the results sweep looks for not-analysed images no report lists yet (reported_at NULL)
    __table_args__ = (Index("ix_instances_state_reported", "state", "reported_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    view_position: Mapped[str] = mapped_column(String(16), default="")
    transfer_syntax: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), index=True)
    vault_object: Mapped[str | None] = mapped_column(String(80), nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    burned_in_annotation: Mapped[str] = mapped_column(String(8), default="unknown")
    calling_aet: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    error: Mapped[str] = mapped_column(Text, default="")
    # Decided at ingest by daemon.stages.view_rule, from the original attributes (before
    # de-identification): the view (frontal, lateral, ..., unknown) and one line saying why the
    # image is or is not analysed, in the rule's own words (never a copied attribute value). ""
    # on rows stored before migration 0004.
    view: Mapped[str] = mapped_column(String(16), default="", server_default="")
    analysis_reason: Mapped[str] = mapped_column(String(240), default="", server_default="")
    # When a report that lists this image (analysed or not) was sent; NULL while no sent report does.
    # The results stage settles a study on its unreported images and sends a replacement when a
    # study already reported gets new ones (migration 0005).
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Job(Base):
    """Work queued for a worker; claimed with SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL."""
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("instance_id", "kind"),
                      Index("ix_jobs_state_not_before", "state", "not_before"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="predict")
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, done, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str] = mapped_column(String(128), default="")
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")


class Prediction(Base):
    """One label's output for one instance and model version; never written twice."""
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("instance_id", "model_version", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # HMAC over what the row says and which instance it is for (storage.records); "" on rows written
    # before migration 0003, which are therefore never used for a report
    mac: Mapped[str] = mapped_column(String(64), default="", server_default="")


class Result(Base):
    """A result object (SR or heatmap) to send back to the PACS for one study and model version."""
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("study_uid", "model_version", "kind"),
                      Index("ix_results_state_next", "state", "next_attempt_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # sr, heatmap
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, sending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_by: Mapped[str] = mapped_column(String(128), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SentReport(Base):
    """One report object the PACS acknowledged, and the later one that superseded it (if any).

    The SOP Instance UID is the one cxrd derived from pseudonyms (`result_objects.report_uids`), so
    it says nothing the pseudonyms do not. A replacement names its predecessor here and in its own
    Predecessor Documents Sequence; the row it replaces gets `superseded_by`.
    """
    __tablename__ = "sent_reports"
    __table_args__ = (Index("ix_sent_reports_result", "result_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    analysed: Mapped[int] = mapped_column(Integer, default=0)      # images with findings in the report
    not_analysed: Mapped[int] = mapped_column(Integer, default=0)  # images listed with their reason
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    superseded_by: Mapped[int | None] = mapped_column(ForeignKey("sent_reports.id"), nullable=True)


class ReidEntry(Base):
    """Original identifiers of one instance, sealed under the re-identification key."""
    __tablename__ = "reid_map"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)  # pseudonym
    study_uid: Mapped[str] = mapped_column(String(64), index=True)  # pseudonym
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """One security-relevant event; rows are only ever appended, each hash chained to the previous.

    `occurred_at` is an ISO 8601 UTC string so the hash input is byte-exact on every backend.
    """
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    occurred_at: Mapped[str] = mapped_column(String(32), index=True)
    event_id: Mapped[str] = mapped_column(String(16))        # DICOM PS3.15 A.5 / DCM code, e.g. 110104
    event_type: Mapped[str] = mapped_column(String(64), index=True)  # cxrd name, e.g. instance.stored
    action: Mapped[str] = mapped_column(String(1), default="E")  # C R U D E
    outcome: Mapped[int] = mapped_column(Integer, default=0)  # 0 success, 4 minor, 8 serious, 12 major
    actor: Mapped[str] = mapped_column(String(128), default="")
    host: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)  # pseudonym
    object_uid: Mapped[str] = mapped_column(String(64), default="")  # pseudonym
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON, never PHI
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Label(Base):
    """Ground-truth findings for an instance we received, imported by `cxrd labels import`."""
    __tablename__ = "labels"

    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    findings: Mapped[str] = mapped_column(Text)  # ChestX-ray14 '|' separated, or 'No Finding'
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_in_model: Mapped[str] = mapped_column(String(64), default="")


class RetrainRun(Base):
    """One scheduled or manual training run and what became of its candidate."""
    __tablename__ = "retrain_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    trigger: Mapped[str] = mapped_column(String(16), default="schedule")
    outcome: Mapped[str] = mapped_column(String(16), default="running")  # running promoted rejected failed skipped
    candidate_version: Mapped[str] = mapped_column(String(64), default="")
    report: Mapped[str] = mapped_column(Text, default="{}")


class ConsoleAccount(Base):
    """A local account of the web console (`cxrd users`); directory (LDAP) people have no row.

    Only an argon2id hash of the password is kept. One role per account.
    """
    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # compliance operations admin
    password_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsoleSession(Base):
    """A signed-in console session. Only the SHA-256 of the cookie's token is stored, so a copy of the
    database signs nobody in; `ended_at` set = signed out (by the person, a time-out or an admin)."""
    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_user", "user_name", "ended_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    via: Mapped[str] = mapped_column(String(8))  # local ldap
    source: Mapped[str] = mapped_column(String(64), default="")  # client address at sign-in
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str] = mapped_column(String(16), default="")


class SigninFailure(Base):
    """Failed sign-ins in a row for one account name or one source address (lock-out and back-off).

    `subject` is "name:" or "addr:" followed by a SHA-256, so names typed by mistake (a password in
    the name field) are never kept in clear."""
    __tablename__ = "console_signin_failures"

    subject: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
