"""What every port cxrd listens on shares: the host allow-list and the server side of TLS.

The DICOM SCP and the HL7 listener answer different protocols but must refuse the same way: a
source address is allowed only inside a configured network (an IPv4-mapped IPv6 address counts as
its IPv4 address, so `::ffff:10.1.2.3` cannot slip past a `10.1.2.0/24` rule, and a scope id never
changes the answer), and TLS is 1.2 or later, with client certificates checked against the
configured CA when one is given.
"""
from __future__ import annotations

import ipaddress
import ssl


def parse_networks(entries: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]


def host_allowed(host: str, networks: list) -> bool:
    """Empty list = any host (each listener refuses to start with one unless told `allow_any_host`)."""
    if not networks:
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)


def server_tls_context(tls) -> ssl.SSLContext:  # noqa: ANN001 - config.schema.DicomTLS / Hl7ListenTLS
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.ca:
        ctx.load_verify_locations(tls.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (
        ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE)
    return ctx
