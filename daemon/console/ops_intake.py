"""Report intake at a glance for the operations dashboard: radiology reports by state, ground-truth
labels by source, the newest report's arrival, and whether the HL7 listener is configured on.

Three aggregate reads: a GROUP BY over the indexed `reports.state`, a GROUP BY over `labels.source`
(one row per labelled image: at most the number of images), and the newest report by primary key
(not a scan of `received_at`). Only states, sources, counts and a time leave this module: a
report's text, accession or study are never read here.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Report


def intake(session: Session) -> dict[str, Any]:
    from storage.ground_truth import counts_by_source
    from storage.reports import counts_by_state
    last: datetime | None = session.scalar(select(Report.received_at).order_by(Report.id.desc()).limit(1))
    return {"reports": counts_by_state(session), "labels": counts_by_source(session), "last_report_at": last}


def listener(settings: Any) -> dict[str, Any]:
    """The HL7 listener as configured (the console is another process: it reports the setting the
    daemon starts with, and the daemon's own log says whether it bound the port)."""
    listen = settings.hl7.listen
    return {"enabled": bool(listen.enabled), "bind": str(listen.bind), "port": int(listen.port),
            "tls": bool(listen.tls.enabled), "report_text": str(settings.hl7.report_text)}
