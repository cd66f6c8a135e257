"""DICOM PS3.15 A.5 audit messages from real audit rows, validated against the schema with lxml."""
from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from lxml import etree

from storage import audit, audit_export, audit_query, db

KEY = b"\x07" * 32


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(audit_export.SCHEMA)))


@pytest.fixture
def rows(tmp_path):
    """One real row of every known event type, as `audit_query` returns them."""
    eng = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(eng)
    with db.sessions(eng).begin() as s:
        for i, event_type in enumerate(sorted(audit.EVENTS)):
            inbound = event_type.startswith(("instance.", "association."))
            audit.append(s, KEY, event_type=event_type, outcome=(0, 4, 8, 12)[i % 4],
                         actor="aet:PACS1" if inbound else ("os:alice" if i % 2 else "cxrd:worker"),
                         host="10.0.0.2" if inbound else "gateway-1",
                         study_uid=f"2.25.{i}" if i % 3 or event_type.startswith("instance.") else "", object_uid=f"2.25.9{i}" if i % 2 else "",
                         details={"reason": "calling AE not allowed"} if event_type == "association.rejected"
                         else {"n": i})
    with db.sessions(eng)() as s:
        out = list(audit_query.iter_events(s, audit_query.AuditFilter()))
    eng.dispose()
    return out


def _parse(line: str) -> etree._Element:
    return etree.fromstring(line.encode())


def test_every_event_type_exports_a_schema_valid_audit_message(rows, schema):
    buf = io.StringIO()
    assert audit_export.write_dicom(rows, buf, source_id="CXRD@gateway-1") == len(rows) == len(audit.EVENTS)
    lines = list(audit_export.read_dicom_lines(buf.getvalue()))
    assert len(lines) == len(rows)
    for line in lines:
        doc = _parse(line)
        assert schema.validate(doc), schema.error_log.last_error


def test_message_carries_event_id_outcome_participants_and_pseudonyms(rows):
    rejected = next(r for r in rows if r["event_type"] == "association.rejected")
    doc = _parse(audit_export.to_xml(rejected, source_id="CXRD@gw", site_id="HOSP"))
    ident = doc.find("EventIdentification")
    assert ident.get("EventOutcomeIndicator") == str(rejected["outcome"])
    assert ident.get("EventDateTime") == rejected["occurred_at"] and ident.get("EventActionCode") == "E"
    assert (ident.find("EventID").get("csd-code"), ident.find("EventID").get("codeSystemName")) == ("110114", "DCM")
    codes = {(c.get("codeSystemName"), c.get("csd-code")) for c in ident.findall("EventTypeCode")}
    assert ("DCM", "110122") in codes and ("cxrd", "association.rejected") in codes
    requestor = doc.find("ActiveParticipant")
    assert requestor.get("UserID") == "aet:PACS1" and requestor.get("AlternativeUserID") == "AETITLES=PACS1"
    assert requestor.get("NetworkAccessPointTypeCode") == "2" and requestor.get("UserIsRequestor") == "true"
    assert requestor.find("RoleIDCode").get("csd-code") == "110153"  # source
    assert doc.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == "HOSP"

    stored = next(r for r in rows if r["event_type"] == "instance.stored" and r["study_uid"])
    doc = _parse(audit_export.to_xml(stored, source_id="CXRD@gw"))
    assert doc.find("EventIdentification/EventID").get("csd-code") == "110104"
    objects = {o.find("ParticipantObjectIDTypeCode").get("csd-code"): o
               for o in doc.findall("ParticipantObjectIdentification")}
    study = objects["110180"]
    assert study.get("ParticipantObjectID") == stored["study_uid"] and study.findtext("Anonymized") == "true"
    record = objects["12"]
    details = {d.get("type"): base64.b64decode(d.get("value")) for d in record.findall("ParticipantObjectDetail")}
    assert details["cxrd-seq"] == str(stored["seq"]).encode()
    assert details["cxrd-hash"] == stored["hash"].encode()
    assert json.loads(details["cxrd-details"]) == stored["details"]


def test_query_and_security_events_use_their_dicom_codes(rows):
    by_type = {r["event_type"]: _parse(audit_export.to_xml(r, source_id="X")) for r in rows}
    ids = {t: d.find("EventIdentification/EventID").get("csd-code") for t, d in by_type.items()}
    assert ids["audit.query"] == ids["audit.export"] == "110101"
    assert ids["predictions.query"] == "110112" and ids["security.tamper"] == "110113"
    assert ids["reid.lookup"] == "110110" and ids["purge.expired"] == "110105"
    assert by_type["app.start"].find("EventIdentification/EventTypeCode").get("csd-code") == "110120"


@pytest.mark.parametrize("breakage", [
    lambda d: d.find("EventIdentification").set("EventOutcomeIndicator", "5"),
    lambda d: d.find("EventIdentification").remove(d.find("EventIdentification/EventID")),
    lambda d: d.remove(d.find("AuditSourceIdentification")),
    lambda d: d.find("ParticipantObjectIdentification").set("ParticipantObjectTypeCodeRole", "25"),
    lambda d: d.find("EventIdentification/EventID").attrib.pop("originalText"),
], ids=["outcome", "no-event-id", "no-source", "role", "no-originalText"])
def test_schema_rejects_broken_messages(rows, schema, breakage):
    doc = _parse(audit_export.to_xml(next(r for r in rows if r["study_uid"]), source_id="X"))
    assert schema.validate(doc)
    breakage(doc)
    assert not schema.validate(doc)


def test_json_lines_and_csv_round_trip(rows):
    buf = io.StringIO()
    audit_export.write_json(rows, buf)
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == rows
    parsed = list(csv.DictReader(io.StringIO(audit_export.csv_text(rows))))
    assert [int(r["seq"]) for r in parsed] == [r["seq"] for r in rows]
    assert json.loads(parsed[0]["details"]) == rows[0]["details"] and parsed[0]["hash"] == rows[0]["hash"]
