"""The console's audit rows exported as DICOM audit messages: valid against the shipped schema, with
110114 User Authentication and the Login/Logout event type, the person and their address."""
from __future__ import annotations

import io

from lxml import etree

from storage import audit_export, audit_query

PASSWORD = "correct horse battery"


def test_console_signin_signout_lockout_and_account_changes_export_as_valid_dicom(console_client):
    c = console_client(lockout_threshold=2)
    c.add_user("ada", "admin", PASSWORD)
    c.sign_in("mallory", "guess guess 1")
    c.sign_in("mallory", "guess guess 2")   # locks the name
    c.sign_in("ada", PASSWORD)
    c.post("/accounts/add", {"name": "eve", "role": "compliance", "password": "e" * 14, "password_again": "e" * 14},
           page="/accounts")
    c.post("/accounts/role", {"name": "eve", "role": "operations"}, page="/accounts")
    c.post("/signout", {}, page="/accounts")
    types = ("console.signin", "console.signin_failed", "console.locked", "console.signout", "users.added",
             "users.role_set")
    with c.rt.read_sessions() as s:
        rows = list(audit_query.iter_events(s, audit_query.AuditFilter(events=types)))
    assert [r["event_type"] for r in rows] == ["console.signin_failed", "console.locked", "console.signin_failed",
                                                "console.signin", "users.added", "users.role_set", "console.signout"]
    buf = io.StringIO()
    audit_export.write_dicom(rows, buf, source_id="CXRD@gateway-1")
    schema = etree.XMLSchema(etree.parse(str(audit_export.SCHEMA)))
    docs = [etree.fromstring(line.encode()) for line in audit_export.read_dicom_lines(buf.getvalue())]
    for doc in docs:
        assert schema.validate(doc), schema.error_log.last_error

    def codes(doc, tag):  # noqa: ANN001, ANN202
        return [e.get("csd-code") for e in doc.find("EventIdentification").findall(tag)]

    by_type = dict(zip([r["event_type"] for r in rows], docs))
    for event_type, type_code in (("console.signin", "110122"), ("console.signin_failed", "110122"),
                                  ("console.locked", "110122"), ("console.signout", "110123")):
        doc = by_type[event_type]
        assert codes(doc, "EventID") == ["110114"]
        assert codes(doc, "EventTypeCode")[0] == type_code
        person = doc.find("ActiveParticipant")
        assert person.get("UserIsRequestor") == "true"
        assert person.get("NetworkAccessPointID") == "10.9.8.7" and person.get("NetworkAccessPointTypeCode") == "2"
    assert by_type["console.signin"].find("ActiveParticipant").get("UserName") == "ada"
    assert by_type["console.signin_failed"].find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert by_type["console.signin_failed"].find("EventIdentification/EventOutcomeDescription").text == "no such account"
    role_set = by_type["users.role_set"]
    assert codes(role_set, "EventID") == ["110113"] and codes(role_set, "EventTypeCode")[0] == "110136"
    target = [p for p in role_set.findall("ParticipantObjectIdentification")
              if p.get("ParticipantObjectTypeCodeRole") == "11"]
    assert [t.get("ParticipantObjectID") for t in target] == ["eve"]
