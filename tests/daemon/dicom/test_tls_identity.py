"""The certificate -> calling AE title rules on real certificates made with `cryptography`."""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon.dicom import tls_identity as T


def _der(cn: str, dns=(), uri=(), ip=()) -> bytes:  # noqa: ANN001
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    names = ([x509.DNSName(n) for n in dns] + [x509.UniformResourceIdentifier(u) for u in uri]
             + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip])
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_each_identity_kind_binds_its_ae_titles():
    der = _der("PACS1.Example.org", dns=["pacs1.example.org"], uri=["urn:pacs:1"], ip=["10.0.0.5"])
    fp = hashlib.sha256(der).hexdigest()
    for rule, allowed in ((f"CN=pacs1.example.org => A1", "A1"), ("DNS:PACS1.example.org => A2", "A2"),
                          ("URI:urn:pacs:1 => A3", "A3"), ("IP:10.0.0.5 => A4", "A4"),
                          (f"SHA256:{fp.upper()} => A5, A6", "A6")):
        rules = T.parse_rules([rule])
        assert T.refusal(der, allowed, rules) is None, rule
        assert T.refusal(der, f" {allowed}  ", rules) is None  # AE titles are space-padded on the wire
        reason = T.refusal(der, "OTHER", rules)
        assert reason is not None and "'OTHER'" in reason and rule in reason


def test_no_certificate_or_an_unknown_one_is_refused_and_rules_must_parse():
    rules = T.parse_rules(["CN=pacs1 => A1"])
    assert "no client certificate" in T.refusal(None, "A1", rules)
    stranger = _der("stranger")
    assert "matches no" in T.refusal(stranger, "A1", rules)
    assert hashlib.sha256(stranger).hexdigest()[:16] in T.refusal(stranger, "A1", rules)
    for bad in ("pacs1 => A1", "CN=pacs1 =>", "IP:nope => A1", "SHA256:12 => A1", "CN=x => A\\B"):
        with pytest.raises(T.RuleError):
            T.parse_rules([bad])
