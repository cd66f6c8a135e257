"""Audit rows out of cxrd: DICOM PS3.15 A.5 audit messages (XML), JSON lines or CSV.

Why DICOM audit messages: that is what a hospital's audit repository (an IHE ATNA record repository)
and its compliance tools read. One `AuditMessage` per event, written one XML document per line -
the same framing as messages sent over syslog (RFC 5424/5425) - so a month of events streams out in
constant memory and a reader can split on newlines (`read_dicom_lines`). The schema the messages
follow is `storage/data/dicom-audit-message.xsd` (PS3.15 A.5.1).

Nothing in a row is PHI (studies and objects are pseudonyms, details are PHI-free by contract), so
the export is too; every message marks its study participant `Anonymized=true`.

Built with the standard library's ElementTree: the daemon does not need lxml at run time.
"""
from __future__ import annotations

import base64
import csv
import io
import ipaddress
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

SCHEMA = Path(__file__).with_name("data") / "dicom-audit-message.xsd"

#: DCM code meanings of the event ids cxrd uses (PS3.16 CID 400 "Audit Event ID")
EVENT_ID_MEANING = {
    "110100": "Application Activity", "110101": "Audit Log Used",
    "110102": "Begin Transferring DICOM Instances", "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred", "110105": "DICOM Study Deleted", "110106": "Export",
    "110107": "Import", "110108": "Network Entry", "110109": "Order Record", "110110": "Patient Record",
    "110111": "Procedure Record", "110112": "Query", "110113": "Security Alert",
    "110114": "User Authentication",
}

#: cxrd event type -> DICOM EventTypeCode (PS3.16 CID 401 "Audit Event Type Code"), where one fits
EVENT_TYPE_CODE = {
    "app.start": ("110120", "Application Start"),
    "app.stop": ("110121", "Application Stop"),
    "app.init": ("110131", "Software Configuration"),
    "association.accepted": ("110122", "Login"),
    "association.rejected": ("110122", "Login"),
    "keys.created": ("110129", "Security Configuration"),
    "keys.rotated": ("110129", "Security Configuration"),
    "keys.retired": ("110129", "Security Configuration"),
    "model.promoted": ("110131", "Software Configuration"),
    "model.rollback": ("110131", "Software Configuration"),
    "model.imported": ("110131", "Software Configuration"),
    "reid.lookup": ("110132", "Use of Restricted Function"),
    "reid.refused": ("110132", "Use of Restricted Function"),
    "security.tamper": ("110135", "Object Security Attributes Changed"),
    "purge.expired": ("110131", "Software Configuration"),
    "console.signin": ("110122", "Login"),
    "console.signin_failed": ("110122", "Login"),
    "console.locked": ("110122", "Login"),
    "console.signout": ("110123", "Logout"),
    "console.access_denied": ("110132", "Use of Restricted Function"),
    "users.added": ("110137", "User Security Attributes Changed"),
    "users.disabled": ("110137", "User Security Attributes Changed"),
    "users.enabled": ("110137", "User Security Attributes Changed"),
    "users.password_reset": ("110137", "User Security Attributes Changed"),
    "users.role_set": ("110136", "Security Roles Changed"),
}

# PS3.16 CID 402 "Audit Active Participant Role ID Code"
ROLE_APPLICATION = ("110150", "Application")
ROLE_LAUNCHER = ("110151", "Application Launcher")
ROLE_DESTINATION = ("110152", "Destination Role ID")
ROLE_SOURCE = ("110153", "Source Role ID")

CSV_COLUMNS = ("seq", "occurred_at", "event_id", "event_type", "action", "outcome", "actor", "host",
               "study_uid", "object_uid", "details", "prev_hash", "hash")


def _code(parent: ET.Element, tag: str, code: str, system: str, meaning: str) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning})


def _access_point(host: str) -> dict[str, str]:
    if not host:
        return {}
    try:
        ipaddress.ip_address(host)
        kind = "2"
    except ValueError:
        kind = "1"
    return {"NetworkAccessPointID": host, "NetworkAccessPointTypeCode": kind}


def _participants(msg: ET.Element, ev: dict[str, Any], source_id: str) -> None:
    """The requestor (who acted: an OS user, a calling AE, a cxrd component) and cxrd itself."""
    actor, etype = ev.get("actor") or "", ev["event_type"]
    inbound = etype.startswith(("instance.", "association."))
    outbound = etype.startswith("result.")
    if actor:
        attrs = {"UserID": actor, "UserIsRequestor": "true", **_access_point(ev.get("host") or "")}
        if actor.startswith("aet:"):
            attrs["AlternativeUserID"] = f"AETITLES={actor[4:]}"
        elif actor.startswith("os:"):
            attrs["UserName"] = actor[3:]
        elif actor.startswith("console:"):
            attrs["UserName"] = actor[8:]
        p = ET.SubElement(msg, "ActiveParticipant", attrs)
        if inbound:
            _code(p, "RoleIDCode", *ROLE_SOURCE[:1], "DCM", ROLE_SOURCE[1])
        elif actor.startswith("os:"):
            _code(p, "RoleIDCode", ROLE_LAUNCHER[0], "DCM", ROLE_LAUNCHER[1])
    me = ET.SubElement(msg, "ActiveParticipant", {"UserID": source_id,
                                                  "UserIsRequestor": "false" if actor else "true"})
    role = ROLE_DESTINATION if inbound else ROLE_SOURCE if outbound else ROLE_APPLICATION
    _code(me, "RoleIDCode", role[0], "DCM", role[1])


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, separators=(",", ":"),
                                                           ensure_ascii=True).encode()
    return base64.b64encode(raw).decode()


def message(ev: dict[str, Any], *, source_id: str, site_id: str = "") -> ET.Element:
    """One audit row (as from `storage.audit_query`) -> one PS3.15 A.5 `AuditMessage` element."""
    msg = ET.Element("AuditMessage")
    outcome = int(ev["outcome"])
    ident = ET.SubElement(msg, "EventIdentification", {
        "EventActionCode": ev.get("action") or "E", "EventDateTime": ev["occurred_at"],
        "EventOutcomeIndicator": str(outcome)})
    eid = str(ev["event_id"])
    _code(ident, "EventID", eid, "DCM", EVENT_ID_MEANING.get(eid, eid))
    if ev["event_type"] in EVENT_TYPE_CODE:
        _code(ident, "EventTypeCode", *EVENT_TYPE_CODE[ev["event_type"]][:1], "DCM",
              EVENT_TYPE_CODE[ev["event_type"]][1])
    _code(ident, "EventTypeCode", ev["event_type"], "cxrd", ev["event_type"])  # the local, exact type
    details = ev.get("details") or {}
    if outcome:
        why = next((str(details[k]) for k in ("reason", "why", "error") if k in details), "")
        if why:
            ET.SubElement(ident, "EventOutcomeDescription").text = why[:500]

    _participants(msg, ev, source_id)
    src = ET.SubElement(msg, "AuditSourceIdentification",
                        {"AuditSourceID": source_id, **({"AuditEnterpriseSiteID": site_id} if site_id else {})})
    _code(src, "AuditSourceTypeCode", "4", "DCM", "Application Server")

    if ev.get("study_uid"):
        study = ET.SubElement(msg, "ParticipantObjectIdentification", {
            "ParticipantObjectID": ev["study_uid"], "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        ET.SubElement(study, "ParticipantObjectDescription").text = "pseudonymous UID (cxrd)"
        ET.SubElement(study, "Anonymized").text = "true"
    if ev.get("object_uid"):
        obj = ET.SubElement(msg, "ParticipantObjectIdentification", {
            "ParticipantObjectID": ev["object_uid"], "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "4" if eid in ("110113",) else "3"})
        _code(obj, "ParticipantObjectIDTypeCode", "object_uid", "cxrd",
              "Pseudonymous SOP Instance UID or vault object id")
        ET.SubElement(obj, "Anonymized").text = "true"
    if ev["event_type"].startswith("users.") and details.get("user"):
        # The console account whose attributes changed (PS3.15 A.5.3.x: Security User Entity).
        who = ET.SubElement(msg, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(details["user"]), "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "11"})
        _code(who, "ParticipantObjectIDTypeCode", "11", "RFC-3881", "User Identifier")
    # The audit record itself: where the chain (seq, hash) and the PHI-free details travel.
    rec = ET.SubElement(msg, "ParticipantObjectIdentification", {
        "ParticipantObjectID": f"cxrd-audit:{ev['seq']}", "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "13"})
    _code(rec, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
    ET.SubElement(rec, "ParticipantObjectName").text = "Security Audit Log"
    ET.SubElement(rec, "ParticipantObjectDetail", {"type": "cxrd-seq", "value": _b64(str(ev["seq"]).encode())})
    if ev.get("hash"):
        ET.SubElement(rec, "ParticipantObjectDetail", {"type": "cxrd-hash", "value": _b64(ev["hash"].encode())})
    if details:
        ET.SubElement(rec, "ParticipantObjectDetail", {"type": "cxrd-details", "value": _b64(details)})
    return msg


def to_xml(ev: dict[str, Any], *, source_id: str, site_id: str = "") -> str:
    """One message as a single-line XML string (no declaration)."""
    return ET.tostring(message(ev, source_id=source_id, site_id=site_id), encoding="unicode")


def write_dicom(events: Iterable[dict[str, Any]], out: IO[str], *, source_id: str, site_id: str = "") -> int:
    """Write one `AuditMessage` per line; returns how many."""
    n = 0
    for ev in events:
        out.write(to_xml(ev, source_id=source_id, site_id=site_id))
        out.write("\n")
        n += 1
    return n


def read_dicom_lines(text: str) -> Iterator[str]:
    """The messages of a `write_dicom` export, one XML document each."""
    return (line for line in text.splitlines() if line.strip())


def write_json(events: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """JSON lines: one object per event, details as an object."""
    n = 0
    for ev in events:
        out.write(json.dumps(ev, sort_keys=True, ensure_ascii=True))
        out.write("\n")
        n += 1
    return n


def write_csv(events: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """CSV with a header; details as compact JSON in one column."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    n = 0
    for ev in events:
        row = dict(ev)
        row["details"] = json.dumps(row.get("details") or {}, sort_keys=True, separators=(",", ":"))
        w.writerow([row.get(c, "") for c in CSV_COLUMNS])
        n += 1
    return n


def csv_text(events: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    write_csv(events, buf)
    return buf.getvalue()
