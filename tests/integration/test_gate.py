"""The association gate with real dcmtk peers: DICOM TLS (with and without a required client
certificate), the source-host allow-list and the association limit; every refusal audited."""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import create_engine, text

from conftest import dcmtk


def _cert(name: str, issuer_key, issuer_name, key, *, ca: bool, san: str | None = None):  # noqa: ANN001
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san), x509.IPAddress(
            __import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(d: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cxrd test CA")])
    ca = _cert("cxrd test CA", ca_key, ca_name, ca_key, ca=True)
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"cxrd {who}", ca_key, ca_name, key, ca=False, san="localhost")
        out[f"{who}_cert"] = d / f"{who}.pem"
        out[f"{who}_key"] = d / f"{who}.key"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                                        serialization.NoEncryption()))
    return out


def rejected_reasons(d, wait_s: float = 5.0, count: int = 1) -> list[str]:  # noqa: ANN001
    """The audited refusals; they are written off the accept path within a second, so wait a little."""
    return [json.dumps(row["details"]) for row in rejected_rows(d, wait_s, count)]


def rejected_rows(d, wait_s: float = 5.0, count: int = 1) -> list[dict]:  # noqa: ANN001
    """The `association.rejected` rows (actor, host, details), once at least `count` are written."""
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    deadline = time.monotonic() + wait_s
    while True:
        with engine.connect() as c:
            rows = c.execute(text("SELECT actor, host, details FROM audit_events "
                                  "WHERE event_type = 'association.rejected' ORDER BY seq")).all()
        if len(rows) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    engine.dispose()
    return [{"actor": r[0], "host": r[1], "details": json.loads(r[2]) if isinstance(r[2], str) else r[2]}
            for r in rows]


def refusal_lines(d) -> list[str]:  # noqa: ANN001
    """Every log line about a refusal (there must be exactly one per refused peer here)."""
    return [line for line in d.log_text().splitlines()
            if "event=association.refused" in line or "event=association.rejected" in line]


def test_tls_with_required_client_certificate(daemon_factory, tmp_path):
    pki = make_pki(tmp_path)
    d = daemon_factory({"CXRD_DICOM__TLS__ENABLED": "true", "CXRD_DICOM__TLS__CERT": str(pki["server_cert"]),
                        "CXRD_DICOM__TLS__KEY": str(pki["server_key"]), "CXRD_DICOM__TLS__CA": str(pki["ca"]),
                        "CXRD_DICOM__TLS__REQUIRE_CLIENT_CERT": "true"}).start()
    port = str(d.dicom_port)
    ok = dcmtk("echoscu", "+tls", str(pki["client_key"]), str(pki["client_cert"]), "+cf", str(pki["ca"]),
               "-aec", "CXRD", "127.0.0.1", port)
    assert ok.returncode == 0, ok.stderr
    anonymous = dcmtk("echoscu", "+tla", "+cf", str(pki["ca"]), "-aec", "CXRD", "127.0.0.1", port, timeout=60)
    assert anonymous.returncode != 0  # no client certificate: the handshake fails
    plain = dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", port, timeout=60)
    assert plain.returncode != 0  # no TLS at all
    ok_again = dcmtk("echoscu", "+tls", str(pki["client_key"]), str(pki["client_cert"]), "+cf", str(pki["ca"]),
                     "-aec", "CXRD", "127.0.0.1", port)
    assert ok_again.returncode == 0, "failed handshakes must not affect later associations"


def test_host_allow_list_refuses_other_sources_and_audits_it(daemon_factory):
    d = daemon_factory({"CXRD_DICOM__ALLOWED_HOSTS": '["10.99.0.0/16"]'}).start()
    r = dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port), timeout=60)
    assert r.returncode != 0
    (row,) = rejected_rows(d)
    assert row["host"] == "127.0.0.1" and row["details"]["reason"] == "host not allowed"
    assert row["details"]["count"] == 1
    assert len(refusal_lines(d)) == 1 and 'reason="host not allowed"' in refusal_lines(d)[0]
    d.stop()
    allowed = daemon_factory({"CXRD_DICOM__ALLOWED_HOSTS": '["127.0.0.0/8"]'}).start()
    assert dcmtk("echoscu", "-aec", "CXRD", "-aet", "GATEPROBE", "127.0.0.1",
                 str(allowed.dicom_port)).returncode == 0
    engine = create_engine(f"sqlite:///{allowed.state_dir / 'cxrd.db'}")
    with engine.connect() as c:  # an accepted association is audited too, with who and from where
        accepted = c.execute(text("SELECT actor, host FROM audit_events "
                                  "WHERE event_type = 'association.accepted'")).all()
    engine.dispose()
    assert [tuple(r) for r in accepted] == [("aet:GATEPROBE", "127.0.0.1")]


def test_association_limit_refuses_the_one_too_many(daemon_factory):
    d = daemon_factory({"CXRD_DICOM__MAX_ASSOCIATIONS": "1"}).start()
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", d.dicom_port, ae_title="CXRD")
    assert held.is_established
    try:
        r = dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port), timeout=60)
        assert r.returncode != 0 and "Local Limit Exceeded" in r.stderr
    finally:
        held.release()
    (row,) = rejected_rows(d)
    assert row["details"]["reason"] == "association limit reached" and row["details"]["called_aets"] == ["CXRD"]
    assert len(refusal_lines(d)) == 1 and 'reason="association limit reached"' in refusal_lines(d)[0]
    threading.Event().wait(0.5)
    assert dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port)).returncode == 0


def test_each_ae_title_rule_is_named_with_the_called_ae_title_used(daemon_factory):
    """A wrong called AE title, a calling AE title not on the list, and both: each refusal is audited
    with the rule(s) that refused it and the AE titles the peer used, and logged once."""
    d = daemon_factory({"CXRD_DICOM__ALLOWED_CALLING_AETS": '["PACS"]'}).start()
    port = str(d.dicom_port)
    wrong_called = dcmtk("echoscu", "-aet", "PACS", "-aec", "CXRD_TYPO", "127.0.0.1", port, timeout=60)
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stderr
    wrong_calling = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "CXRD", "127.0.0.1", port, timeout=60)
    assert wrong_calling.returncode != 0 and "Calling AE Title Not Recognized" in wrong_calling.stderr
    both = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "OTHER", "127.0.0.1", port, timeout=60)
    assert both.returncode != 0
    assert dcmtk("echoscu", "-aet", "PACS", "-aec", "CXRD", "127.0.0.1", port).returncode == 0
    rows = {row["details"]["reason"]: row for row in rejected_rows(d, count=3)}
    assert set(rows) == {"called AE title is not ours", "calling AE title not allowed",
                         "called AE title is not ours; calling AE title not allowed"}
    typo = rows["called AE title is not ours"]
    assert typo["actor"] == "aet:PACS" and typo["details"]["called_aets"] == ["CXRD_TYPO"]
    calling = rows["calling AE title not allowed"]
    assert calling["actor"] == "aet:MODALITY" and calling["details"]["called_aets"] == ["CXRD"]
    assert rows["called AE title is not ours; calling AE title not allowed"]["details"]["called_aets"] == ["OTHER"]
    lines = refusal_lines(d)
    assert len(lines) == 3 and all("event=association.refused" in line for line in lines), lines
    assert any("called_aet=CXRD_TYPO" in line and "calling_aet=PACS" in line for line in lines)


def test_the_per_host_limit_is_named(daemon_factory):
    d = daemon_factory({"CXRD_DICOM__MAX_ASSOCIATIONS_PER_HOST": "1"}).start()
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", d.dicom_port, ae_title="CXRD")
    assert held.is_established
    try:
        r = dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port), timeout=60)
        assert r.returncode != 0
    finally:
        held.release()
    (row,) = rejected_rows(d)
    assert row["host"] == "127.0.0.1" and row["details"]["reason"] == "per-host connection limit reached"
    assert len(refusal_lines(d)) == 1


def test_accepted_associations_and_what_they_delivered_are_logged_at_info(daemon_factory, shared_data, tmp_path):
    from conftest import copy_with_new_uids, storescu
    d = daemon_factory().start()
    assert dcmtk("echoscu", "-aet", "ECHOER", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port)).returncode == 0
    files = copy_with_new_uids(shared_data / "dicom/derived/nih_00000001_000_explicit-vr-le.dcm", tmp_path / "f", 2)
    assert storescu(d.dicom_port, *files, aet="PACS1")[1] == ["Success"] * 2
    time.sleep(0.5)
    lines = d.log_text().splitlines()
    accepted = [line for line in lines if "event=association.accepted" in line]
    assert len(accepted) == 2 and all("level=info" in line and "called_aet=CXRD" in line and "host=127.0.0.1" in line
                                      for line in accepted)
    assert "calling_aet=ECHOER" in accepted[0] and "calling_aet=PACS1" in accepted[1]
    ended = [line for line in lines if "event=association.ended" in line]
    assert len(ended) == 2 and all("level=info" in line and "ended=released" in line for line in ended), ended
    assert "images=0" in ended[0] and "images=2 acknowledged=2 refused=0" in ended[1]
    nbytes = int(next(f for f in ended[1].split() if f.startswith("bytes="))[len("bytes="):])
    assert nbytes > sum(f.stat().st_size for f in files) // 2
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", d.dicom_port, ae_title="CXRD")
    assert assoc.is_established
    assoc.abort()
    time.sleep(0.5)
    ended = [line for line in d.log_text().splitlines() if "event=association.ended" in line]
    assert len(ended) == 3 and "calling_aet=ABORTER" in ended[2] and "ended=aborted" in ended[2], ended
