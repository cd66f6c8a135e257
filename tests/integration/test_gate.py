"""The association gate with real dcmtk peers: DICOM TLS (with and without a required client
certificate), the source-host allow-list and the association limit; every refusal audited."""
from __future__ import annotations

import datetime as dt
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


def rejected_reasons(d, wait_s: float = 5.0) -> list[str]:  # noqa: ANN001
    """The audited refusals; they are written off the accept path within a second, so wait a little."""
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    deadline = time.monotonic() + wait_s
    while True:
        with engine.connect() as c:
            rows = c.execute(text("SELECT details FROM audit_events "
                                  "WHERE event_type = 'association.rejected'")).all()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    engine.dispose()
    return [r[0] for r in rows]


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
    assert any("host not allowed" in reason for reason in rejected_reasons(d))
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
    assert any("rejected" in reason for reason in rejected_reasons(d))
    threading.Event().wait(0.5)
    assert dcmtk("echoscu", "-aec", "CXRD", "127.0.0.1", str(d.dicom_port)).returncode == 0
