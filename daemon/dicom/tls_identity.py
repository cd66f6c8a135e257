"""Which calling AE titles a TLS client certificate may use (`dicom.tls.client_certificates`).

A calling AE title is a string any peer can type; a client certificate verified against
`dicom.tls.ca` is proof of which machine is calling. Binding the two means a PACS that holds a valid
certificate still cannot call as another AE (e.g. as the archive whose studies it should not write
into). Each rule is `IDENTITY => AE1, AE2`, IDENTITY one of

    CN=<subject common name>   DNS:<subjectAltName dNSName>   URI:<subjectAltName URI>
    IP:<subjectAltName address>   SHA256:<fingerprint of the certificate, hex, colons optional>

A certificate may match several rules; the calling AE title must be listed by at least one of them.
With rules configured, an association is rejected (A-ASSOCIATE-RJ, calling AE title not recognised)
and audited with the reason when it presents no certificate, a certificate no rule names, or a
calling AE title its certificate's rules do not list. Without rules nothing here runs.

The check runs on pynetdicom's EVT_REQUESTED, after the TLS handshake verified the certificate and
before the association is negotiated, so a refused peer never gets a presentation context.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Callable, Iterable

from cryptography import x509
from cryptography.x509.oid import NameOID

from daemon.dicom import gate_rules
from daemon.ops.logs import event

log = logging.getLogger("cxrd.scp")

KINDS = ("CN", "DNS", "URI", "IP", "SHA256")
_RULE_RE = re.compile(r"^\s*(CN=|DNS:|URI:|IP:|SHA256:)(.+?)\s*=>\s*(.+?)\s*$")
# PS3.5 / PS3.8: an AE title is 1-16 characters of the default repertoire, no backslash or control.
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

RejectFn = Callable[[str, str, str, str], None]  # calling AE, host, reason, called AE


class RuleError(ValueError):
    """A `dicom.tls.client_certificates` entry cannot be understood (message quotes the entry)."""


@dataclass(frozen=True)
class Rule:
    kind: str
    value: str               # normalised for comparison
    aets: frozenset[str]
    text: str                # as configured, for the audit trail


def _normalise(kind: str, value: str) -> str:
    value = value.strip()
    if kind in ("CN", "DNS"):
        return value.casefold()
    if kind == "IP":
        return str(ipaddress.ip_address(value))
    if kind == "SHA256":
        hexdigits = value.replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", hexdigits):
            raise ValueError("not a SHA-256 fingerprint")
        return hexdigits
    return value


def parse_rules(entries: Iterable[str]) -> list[Rule]:
    """The configured rules; RuleError names the first entry that is not `IDENTITY => AE[, AE...]`."""
    rules = []
    for entry in entries:
        m = _RULE_RE.match(entry)
        if not m:
            raise RuleError(f"dicom.tls.client_certificates: {entry!r} is not 'IDENTITY => AE1, AE2' with "
                            "IDENTITY one of CN=, DNS:, URI:, IP:, SHA256:")
        prefix, value, aets_text = m.groups()
        kind = prefix.rstrip("=:")
        try:
            normalised = _normalise(kind, value)
        except ValueError:
            raise RuleError(f"dicom.tls.client_certificates: {entry!r}: {value.strip()!r} is not a valid "
                            f"{kind} value") from None
        aets = [a.strip() for a in aets_text.split(",")]
        bad = [a for a in aets if not _AE_RE.match(a) or not a.strip()]
        if bad:
            raise RuleError(f"dicom.tls.client_certificates: {entry!r}: {bad[0]!r} is not an AE title "
                            "(1 to 16 characters, no backslash)")
        rules.append(Rule(kind, normalised, frozenset(aets), entry.strip()))
    return rules


def certificate_identities(der: bytes) -> dict[str, set[str]]:
    """Every identity a certificate (DER) can be named by, normalised like the rules."""
    cert = x509.load_der_x509_certificate(der)
    out: dict[str, set[str]] = {k: set() for k in KINDS}
    out["SHA256"].add(hashlib.sha256(der).hexdigest())
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        out["CN"].add(str(attr.value).strip().casefold())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        out["DNS"].update(n.casefold() for n in san.get_values_for_type(x509.DNSName))
        out["URI"].update(san.get_values_for_type(x509.UniformResourceIdentifier))
        out["IP"].update(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return out


def refusal(der: bytes | None, calling_aet: str, rules: list[Rule]) -> str | None:
    """Why this certificate may not call as `calling_aet` (a one-line audit reason), or None."""
    if der is None:
        return "no client certificate (dicom.tls.client_certificates binds calling AE titles to certificates)"
    ids = certificate_identities(der)
    matched = [r for r in rules if r.value in ids[r.kind]]
    if not matched:
        fingerprint = next(iter(ids["SHA256"]))
        cn = ", ".join(sorted(ids["CN"])) or "none"
        return (f"client certificate (CN {cn}, SHA256 {fingerprint[:16]}...) matches no "
                f"dicom.tls.client_certificates rule")
    aet = calling_aet.strip()
    if any(aet in r.aets for r in matched):
        return None
    return (f"calling AE title {aet!r} is not bound to the client certificate (rules: "
            + "; ".join(r.text for r in matched) + ")")


def peer_certificate(assoc) -> bytes | None:  # noqa: ANN001 - pynetdicom Association
    """The verified client certificate of an association's TLS socket, as DER; None without one."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return sock.getpeercert(binary_form=True)
    except (ValueError, OSError):  # handshake not complete / socket gone
        return None


def requested_handler(rules: list[Rule], on_reject: RejectFn | None) -> Callable:
    """The EVT_REQUESTED handler that rejects an association whose certificate may not use its calling
    AE title; bind it after every other EVT_REQUESTED handler (it ends the association)."""
    def check(ev) -> None:  # noqa: ANN001 - pynetdicom Event
        assoc = ev.assoc
        calling = str(getattr(assoc.requestor.primitive, "calling_ae_title", "") or "").strip()
        host = assoc.requestor.address
        reason = refusal(peer_certificate(assoc), calling, rules)
        if reason is None:
            return
        event(log, "association.certificate_refused", logging.WARNING, calling_aet=calling, host=host,
              reason=reason)
        if on_reject:
            on_reject(calling, host, reason, gate_rules.called_ae_title(assoc))
        # permanent, by the service user, calling AE title not recognised; then end the association
        # as pynetdicom does after its own rejections
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()
    return check
