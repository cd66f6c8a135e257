"""Directory sign-in (LDAP / Active Directory) by search-then-bind, and the group -> role mapping.

The service account finds the one entry whose `user_filter` matches the name typed, the person's own
password is checked by binding as that entry, and the person's groups (searched with `group_filter`)
are mapped through `console.ldap.role_groups`. Fail closed: no entry, several entries, a failed bind,
no mapped group, or groups mapping to more than one role all refuse the sign-in. An empty password is
refused before any bind (LDAP treats it as an anonymous bind, which "succeeds").
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from config.schema import ConsoleLdap


@dataclass(frozen=True)
class DirectoryAnswer:
    role: str | None     # the one console role, or None when refused
    reason: str          # why refused ("" when signed in): for the audit row, never shown to the person
    found: bool          # an entry matched the name (for the audit row)


def _norm_dn(dn: str) -> str:
    return ",".join(part.strip() for part in dn.split(",")).casefold()


def role_mapping(cfg: ConsoleLdap) -> dict[str, str]:
    out = {}
    for entry in cfg.role_groups:
        group, _, role = entry.rpartition("=>")
        out[_norm_dn(group.strip())] = role.strip()
    return out


def _server(cfg: ConsoleLdap):  # noqa: ANN202
    from ldap3 import Server, Tls
    u = urlsplit(cfg.url)
    secure = u.scheme == "ldaps"
    tls = Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT, ca_certs_file=cfg.ca or None)
    return Server(u.hostname or "", port=u.port or (636 if secure else 389), use_ssl=secure,
                  tls=tls if (secure or cfg.start_tls) else None, get_info="NO_INFO",
                  connect_timeout=max(1, int(cfg.timeout_s)))


def _bound(cfg: ConsoleLdap, server, user: str, password: str):  # noqa: ANN001, ANN202
    """A connection bound as `user`, or None when the directory refuses the credentials."""
    from ldap3 import Connection
    conn = Connection(server, user=user, password=password, receive_timeout=max(1, int(cfg.timeout_s)),
                      raise_exceptions=False, read_only=True, auto_referrals=False)
    if not conn.open() and conn.closed:
        raise DirectoryError("the directory server cannot be reached")
    if cfg.start_tls and not conn.start_tls():
        conn.unbind()
        raise DirectoryError("StartTLS with the directory server failed")
    if not conn.bind():
        conn.unbind()
        return None
    return conn


class DirectoryError(Exception):
    """The directory could not be asked (unreachable, TLS failed, service account refused, busy)."""


SIZE_LIMIT_EXCEEDED = 4  # LDAP result code (RFC 4511 4.1.9)


def _answered(conn, what: str, *also: int) -> int:  # noqa: ANN001
    """The result code of the search just made on `conn`: success, or one of `also`, else DirectoryError.
    A busy, unavailable or timed-out directory answers with an empty result, which must not read as
    "no such person" (that would refuse a sign-in, or end a session, for the directory's trouble)."""
    code = (conn.result or {}).get("result", 0)
    if code == 0 or code in also:
        return code
    raise DirectoryError(f"the {what} search failed (LDAP result {code})")


def service_password(cfg: ConsoleLdap) -> str:
    if not cfg.bind_password_file:
        return ""
    try:
        return Path(cfg.bind_password_file).read_text().splitlines()[0]
    except (OSError, IndexError) as exc:
        raise DirectoryError(f"cannot read console.ldap.bind_password_file {cfg.bind_password_file}") from exc


def authenticate(cfg: ConsoleLdap, name: str, password: str) -> DirectoryAnswer:
    """Sign-in: the person's entry, a bind with their password, then their role."""
    if not password:
        return DirectoryAnswer(None, "empty password", False)
    return _ask(cfg, name, password)


def current_role(cfg: ConsoleLdap, name: str) -> DirectoryAnswer:
    """The role the directory gives `name` now, asked with the service account alone (no password):
    how a signed-in person's session is checked again (`directory_sessions`)."""
    return _ask(cfg, name, None)


def _ask(cfg: ConsoleLdap, name: str, password: str | None) -> DirectoryAnswer:
    """The one entry matching `name`, bound as with `password` unless it is None, and its role."""
    from ldap3 import SUBTREE
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars
    try:
        server = _server(cfg)
        svc = _bound(cfg, server, cfg.bind_dn, service_password(cfg)) if cfg.bind_dn else _bound(cfg, server, "", "")
        if svc is None:
            raise DirectoryError("the directory refused the service account (console.ldap.bind_dn)")
        try:
            svc.search(cfg.base_dn, cfg.user_filter.replace("{user}", escape_filter_chars(name)),
                       search_scope=SUBTREE, attributes=[], size_limit=2, time_limit=int(cfg.timeout_s))
            _answered(svc, "person", SIZE_LIMIT_EXCEEDED)  # two entries of the size limit: "several"
            entries = [e for e in svc.response or [] if e.get("type") == "searchResEntry"]
            if len(entries) != 1:
                return DirectoryAnswer(None, "no directory entry" if not entries else "several directory entries",
                                       False)
            dn = entries[0]["dn"]
            if password is not None:
                person = _bound(cfg, server, dn, password)
                if person is None:
                    return DirectoryAnswer(None, "wrong password", True)
                person.unbind()
            svc.search(cfg.group_base_dn or cfg.base_dn, cfg.group_filter.replace("{dn}", escape_filter_chars(dn)),
                       search_scope=SUBTREE, attributes=[], size_limit=1000, time_limit=int(cfg.timeout_s))
            # a partial list could hide a second role: refused, never read as complete
            if _answered(svc, "group", SIZE_LIMIT_EXCEEDED) == SIZE_LIMIT_EXCEEDED:
                return DirectoryAnswer(None, "in more groups than one search returns (size limit)", True)
            groups = {_norm_dn(e["dn"]) for e in svc.response or [] if e.get("type") == "searchResEntry"}
        finally:
            svc.unbind()
    except (LDAPException, OSError) as exc:  # ssl.SSLError is an OSError
        raise DirectoryError(f"directory error ({type(exc).__name__})") from exc
    mapping = role_mapping(cfg)
    roles = {mapping[g] for g in groups if g in mapping}
    if not roles:
        return DirectoryAnswer(None, "no console role (in no mapped group)", True)
    if len(roles) > 1:
        return DirectoryAnswer(None, "several console roles (" + ", ".join(sorted(roles)) + ")", True)
    return DirectoryAnswer(roles.pop(), "", True)
