"""What a non-DICOM destination needs to know about a report, beside the DICOM objects themselves."""
from __future__ import annotations

from dataclasses import dataclass, field

from daemon.dicom import result_objects as report


@dataclass(frozen=True)
class ReportContent:
    """One study's report as the results stage built it; `identity` holds ORIGINAL identifiers and
    lives only in memory while the report is being sent."""
    identity: report.StudyIdentity
    findings: list[report.Finding]  # study level: one per label (the highest over the analysed images)
    model: report.ModelIdentity
    report_uid: str                 # the SR's SOP Instance UID: the same content keeps the same UID
    replaces: bool = False          # this report supersedes one sent earlier
    analysed: int = 0               # images analysed
    not_analysed: int = 0           # images listed as not analysed
    notes: list[str] = field(default_factory=list)
