"""Result destinations beside C-STORE: DICOMweb STOW-RS (`stowrs`) and HL7 v2 ORU^R01 over MLLP (`hl7_oru`).

Each destination has `describe()` (no credentials, no identifiers) and `send(objects, content)`, which
returns only once the peer acknowledged, and otherwise raises `errors.SendError` (worth retrying: the
peer was unreachable, timed out or answered "try later") or `errors.RefusedError` (the peer refused
the content; a retry would be refused the same way). The results stage applies its retry, park and
audit rules to these exactly as to C-STORE.

What must stay true: a retry may resend to a destination that already acknowledged (a row is `sent`
only when every enabled destination acknowledged), so every destination is idempotent by the report's
SOP Instance UID: C-STORE and STOW-RS store the same instance again, and the ORU's message control ID
(MSH-10) is derived from it, so a receiver that deduplicates by control ID sees one message.
"""
