"""The HL7 listener's settings (off by default, complete TLS, valid networks, a gate that fails
closed) and migration 0007 turning existing labels into manual labels with per-finding states."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from config.loader import ConfigError, load_settings
from daemon.errors import DaemonError
from daemon.service import check_host_gate
from storage import db


def test_off_by_default_loopback_only_and_text_encrypted():
    s = load_settings(env={})
    assert s.hl7.listen.enabled is False and s.hl7.listen.allowed_hosts == ["127.0.0.1", "::1"]
    assert s.hl7.report_text == "encrypted" and s.labels.uncertain_as == "exclude"


@pytest.mark.parametrize("env, message", [
    ({"CXRD_HL7__LISTEN__TLS__ENABLED": "true"}, "'hl7.listen.tls.cert' and 'hl7.listen.tls.key' are required"),
    ({"CXRD_HL7__LISTEN__TLS__REQUIRE_CLIENT_CERT": "true"}, "'hl7.listen.tls.ca' is required"),
    ({"CXRD_HL7__LISTEN__ALLOWED_HOSTS": '["10.0.0.300"]'}, "hl7.listen.allowed_hosts"),
    ({"CXRD_HL7__LISTEN__ALLOW_ANY_HOST": "true"}, "'hl7.listen.allow_any_host' is true but"),
    ({"CXRD_HL7__LISTEN__RECEIVING_APPLICATION": "CX|RD"}, "without HL7 delimiters"),
    ({"CXRD_HL7__REPORT_TEXT": "plain"}, "must be one of encrypted, discard"),
    ({"CXRD_LABELS__UNCERTAIN_AS": "maybe"}, "must be one of negative, positive, exclude"),
])
def test_incomplete_or_unsafe_settings_are_refused_at_load(env, message):
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        load_settings(env=env)


def test_an_empty_allow_list_is_refused_unless_any_host_is_said_explicitly():
    with pytest.raises(DaemonError, match="hl7.listen.allowed_hosts is empty: list the RIS's addresses"):
        check_host_gate([], False, "hl7.listen")
    check_host_gate([], True, "hl7.listen")  # allowed, warned


def test_migration_0007_makes_existing_labels_manual_with_states(tmp_path):
    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(engine, "0005")
    with engine.begin() as c:
        c.execute(text("INSERT INTO instances (id, sop_instance_uid, study_uid, series_uid, sop_class_uid, modality, "
                       "view_position, transfer_syntax, state, size_bytes, burned_in_annotation, calling_aet, "
                       "received_at, updated_at, error, view, analysis_reason) VALUES (1, '2.25.1', '2.25.2', "
                       "'2.25.3', '1.2', 'DX', 'PA', '', 'predicted', 0, 'no', 'X', '2026-01-01', '2026-01-01', '', "
                       "'frontal', '')"))
        c.execute(text("INSERT INTO labels (instance_id, findings, imported_at, used_in_model) "
                       "VALUES (1, 'Effusion|Mass', '2026-01-01', '')"))
    assert db.migrate(engine) == db.head_revision()
    with engine.connect() as c:
        source, states, accession = c.execute(text(
            "SELECT l.source, l.states, i.accession_hash FROM labels l JOIN instances i ON i.id = l.instance_id")).one()
    states = json.loads(states)
    assert source == "manual" and accession == ""
    assert len(states) == 14 and states["Effusion"] == states["Mass"] == "positive" and states["Edema"] == "negative"
    engine.dispose()
