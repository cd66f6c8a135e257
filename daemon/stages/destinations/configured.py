"""The destinations `[results.stow]` and `[results.hl7]` enable, with their credentials and TLS loaded."""
from __future__ import annotations

import ssl
from typing import Any

from daemon.errors import DaemonError
from daemon.stages.destinations.hl7_oru import Hl7Destination
from daemon.stages.destinations.stowrs import StowDestination, authorization


def _read_secret(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline(65536).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DaemonError(f"{key}: cannot read {path} ({getattr(exc, 'strerror', None) or type(exc).__name__})") \
            from None
    if not line:
        raise DaemonError(f"{key}: {path} is empty (its first line must hold the credentials)")
    return line


def client_tls(setting: str, what: str, ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client context for every result destination: it verifies the peer against `ca` (the system
    store if empty) and presents our certificate when one is configured (mutual TLS). A file that
    cannot be loaded stops the start with one line naming `setting` and `what` it tried to load."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
        if cert:
            ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise DaemonError(f"{setting}: cannot load {what} "
                          f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    return ctx


def destinations_from_settings(r: Any) -> tuple:  # r: config.schema.Results
    """Enabled destinations in sending order (STOW-RS, then HL7); none by default."""
    out: list = []
    if r.stow.enabled:
        secret = _read_secret(r.stow.credentials_file, "results.stow.credentials_file") if r.stow.auth != "none" \
            else ""
        if r.stow.auth == "basic" and ":" not in secret:
            raise DaemonError("results.stow.credentials_file: basic auth needs \"user:password\" on its first line")
        tls = client_tls("results.stow.ca", r.stow.ca, ca=r.stow.ca) if r.stow.url.startswith("https:") else None
        out.append(StowDestination(url=r.stow.url, authorization=authorization(r.stow.auth, secret), tls=tls,
                                   timeout_s=r.stow.timeout_s))
    if r.hl7.enabled:
        h = r.hl7
        out.append(Hl7Destination(host=h.host, port=h.port, sending_application=h.sending_application,
                                  sending_facility=h.sending_facility, receiving_application=h.receiving_application,
                                  receiving_facility=h.receiving_facility,
                                  tls=client_tls("results.hl7.ca", h.ca, ca=h.ca) if h.tls else None, timeout_s=h.timeout_s))
    return tuple(out)
