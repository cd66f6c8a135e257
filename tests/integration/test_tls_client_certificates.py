"""Mutual TLS binds a PACS's client certificate to the calling AE titles it may use, with real dcmtk
peers (`echoscu +tls`) against `cxrd serve`: a certificate calling as an AE its rules do not list, a
certificate no rule names, are rejected (calling AE title not recognised) and audited with the rule."""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, text

from conftest import dcmtk


def _issue(cn: str, ca_key, ca_name, key, *, ca: bool = False, dns: list[str] = (), ip: bool = False):  # noqa: ANN001
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    names = [x509.DNSName(n) for n in dns] + ([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))] if ip else [])
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def make_pki(d: Path) -> dict[str, Path | str]:
    """A CA, the server's certificate, and three clients: pacs-a (by CN), modality-b (by fingerprint),
    stranger (valid, signed by the same CA, but named by no rule)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cxrd test CA")])
    ca = _issue("cxrd test CA", ca_key, ca_name, ca_key, ca=True)
    out: dict[str, Path | str] = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, dns, ip in (("server", ["localhost"], True), ("pacs-a.example.org", ["pacs-a.example.org"], False),
                         ("modality-b", [], False), ("stranger", ["stranger.example.org"], False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(who, ca_key, ca_name, key, dns=dns, ip=ip)
        out[f"{who}_cert"], out[f"{who}_key"] = d / f"{who}.pem", d / f"{who}.key"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                                        serialization.NoEncryption()))
        out[f"{who}_sha256"] = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return out


def echo(pki, who: str, aet: str, port: int):  # noqa: ANN001, ANN201
    return dcmtk("echoscu", "-d", "+tls", str(pki[f"{who}_key"]), str(pki[f"{who}_cert"]), "+cf", str(pki["ca"]),
                 "-aet", aet, "-aec", "CXRD", "127.0.0.1", str(port), timeout=60)


def refusals(d, n: int, wait_s: float = 10.0) -> list[dict]:  # noqa: ANN001
    engine = create_engine(f"sqlite:///{d.state_dir / 'cxrd.db'}")
    deadline = time.monotonic() + wait_s
    while True:
        with engine.connect() as c:
            rows = [json.loads(r[0]) | {"actor": r[1]} for r in c.execute(text(
                "SELECT details, actor FROM audit_events WHERE event_type = 'association.rejected'"))]
        if len(rows) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    engine.dispose()
    return rows


def test_a_certificate_may_call_only_as_the_ae_titles_bound_to_it(daemon_factory, tmp_path):
    pki = make_pki(tmp_path)
    fp = pki["modality-b_sha256"]
    rules = [f"CN=PACS-A.example.org => PACS_A, PACS_A2",          # CN compared case-insensitively
             f"SHA256:{':'.join(fp[i:i + 2] for i in range(0, 64, 2)).upper()} => MOD_B"]
    d = daemon_factory({"CXRD_DICOM__TLS__ENABLED": "true", "CXRD_DICOM__TLS__CERT": str(pki["server_cert"]),
                        "CXRD_DICOM__TLS__KEY": str(pki["server_key"]), "CXRD_DICOM__TLS__CA": str(pki["ca"]),
                        "CXRD_DICOM__TLS__REQUIRE_CLIENT_CERT": "true",
                        "CXRD_DICOM__TLS__CLIENT_CERTIFICATES": json.dumps(rules)}).start()
    port = d.dicom_port
    assert echo(pki, "pacs-a.example.org", "PACS_A", port).returncode == 0
    assert echo(pki, "pacs-a.example.org", "PACS_A2", port).returncode == 0
    assert echo(pki, "modality-b", "MOD_B", port).returncode == 0
    wrong_ae = echo(pki, "pacs-a.example.org", "MOD_B", port)           # a valid certificate, another's AE
    assert wrong_ae.returncode != 0
    out = wrong_ae.stdout + wrong_ae.stderr
    assert "Association Rejected" in out and "Calling AE Title Not Recognized" in out, out[-2000:]
    stranger = echo(pki, "stranger", "PACS_A", port)                     # signed by the CA, named by no rule
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    assert echo(pki, "pacs-a.example.org", "PACS_A", port).returncode == 0  # refusals change nothing else
    rows = refusals(d, 2)
    reasons = sorted(r["reason"] for r in rows)
    assert len(reasons) == 2, rows
    assert reasons[0] == ("calling AE title 'MOD_B' is not bound to the client certificate "
                          "(rules: CN=PACS-A.example.org => PACS_A, PACS_A2)")
    assert reasons[1].startswith("client certificate (CN stranger, SHA256 "
                                 + pki["stranger_sha256"][:16]) and "matches no" in reasons[1]
    log = d.log_text()
    assert log.count("association.certificate_refused") == 2 and "Traceback" not in log
    assert d.stop() == 0
