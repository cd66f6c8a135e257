"""Load settings from embedded defaults, an optional TOML file and `CXRD_<SECTION>__<KEY>` variables.

Validation is driven by the schema's dataclass fields, so a key added to the schema is documented,
typed and overridable without touching this file. Every problem becomes one `ConfigError` whose
message names the file or key and says what is allowed; the CLI prints it on one line.

A `CXRD_` variable that names no key (`CXRD_DICOM_PORT`, `CXRD_DICOM__PROT`) is an error like an
unknown key in the file, with the closest real variable suggested: ignoring it would run with a
setting the operator believes changed.

Relative paths must not depend on where a command happens to be run from in ways nobody can tell:
a path written in the config file is resolved against that file's directory; one from the embedded
defaults or the environment against the current directory. Every path leaves here absolute, so
each command (and `cxrd check-config`) says exactly which directory it uses; `origin` says where a
key's value came from, for messages.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

from config.schema import Settings

ENV_PREFIX = "CXRD_"


class ConfigError(Exception):
    """A configuration problem a person must fix; the message is safe to print as is."""


def load_settings(path: str | os.PathLike | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Return validated, effective settings (derived paths filled in, state_dir made absolute)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "embedded defaults"
    if path is not None:
        raw = _read_toml(Path(path))
        source = str(path)
    env_keys = _apply_env(raw, env)
    settings = _build(Settings, raw, "", _Sources(source, env_keys))
    file_dir = Path(path).absolute().parent if path is not None else None

    def base(key: str) -> Path:
        """The directory a relative path under `key` is relative to (see the module docstring)."""
        node: Any = raw
        for part in key.split("."):  # nested tables too (results.stow.credentials_file)
            node = node.get(part) if isinstance(node, dict) else None
        in_file = file_dir is not None and node is not None and key not in env_keys
        return file_dir if in_file else Path.cwd()

    return _derive(settings, env, base)


def origin(key: str, path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> str:
    """Where the effective value of dotted `key` came from, in words, with what a relative path in it
    is resolved against: for messages such as "no initialised state in DIR (...)"."""
    env = os.environ if env is None else env
    var = ENV_PREFIX + "__".join(p.upper() for p in key.split("."))
    if var in env:
        return f"set by {var}, relative to the current directory"
    if path is not None:
        node: Any = _read_toml(Path(path))
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return f"set in {Path(path).absolute()}, relative to that file's directory"
        return f"the default, not set in {Path(path).absolute()}; relative to the current directory"
    return "the embedded default, relative to the current directory"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory") from None
    except PermissionError:
        raise ConfigError(f"config file {path}: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


class _Sources:
    """Names where a key's value came from: the environment variable if one set it, else the file."""

    def __init__(self, default: str, env_keys: dict[str, str]):
        self.default, self.env_keys = default, env_keys

    def of(self, key: str) -> str:
        if key in self.env_keys:
            return f"environment variable {self.env_keys[key]}"
        return self.default


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Merge `CXRD_A__B__C=value` into raw["a"]["b"]["c"]; a value that parses as TOML is typed.
    Returns dotted key -> variable name, so errors can name the variable."""
    keys: dict[str, str] = {}
    known = _env_names()
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        if name not in known:
            raise ConfigError(_unknown_variable(name, known))
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if any(not p for p in parts):
            raise ConfigError(f"environment variable {name}: malformed name")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: {part} is not a section")
            node = child
        node[parts[-1]] = _env_value(env[name])
        keys[".".join(parts)] = name
    return keys


def _env_names(cls: type = Settings, prefix: str = ENV_PREFIX) -> dict[str, str]:
    """Every variable that names a key or a section: `CXRD_DICOM__PORT` -> `dicom.port`."""
    names: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        var = prefix + f.name.upper()
        names[var] = var[len(ENV_PREFIX):].lower().replace("__", ".")
        if dataclasses.is_dataclass(hints[f.name]):
            names.update(_env_names(hints[f.name], var + "__"))
    return names


def _unknown_variable(name: str, known: dict[str, str]) -> str:
    import difflib
    # Compare with the separators removed, so CXRD_DICOM_PORT finds CXRD_DICOM__PORT.
    flat = {var.replace("_", ""): var for var in known}
    close = difflib.get_close_matches(name.upper().replace("_", ""), flat, n=1, cutoff=0.75)
    hint = (f"; did you mean {flat[close[0]]} ('{known[flat[close[0]]]}')?" if close else
            "; settings are CXRD_<SECTION>__<KEY> with two underscores, e.g. CXRD_DICOM__PORT")
    return f"environment variable {name} names no setting{hint}"


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, raw: Any, prefix: str, sources: _Sources) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{sources.of(where)}: [{where}] must be a table of settings")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"{sources.of(key)}: unknown key '{key}' (allowed in {where}: {allowed})")
    values = {}
    for name, value in raw.items():
        f = fields[name]
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key + ".", sources)
        else:
            values[name] = _check_value(key, value, hint, f.metadata, sources.of(key))
    return cls(**values)


def _check_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any], source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list) or not all(_is_type(v, item_type) for v in value):
            raise ConfigError(f"{source}: '{key}' must be a list of {item_type.__name__}")
        choices = meta.get("choices")
        if choices:  # a list of named options: each one known, none twice
            for v in value:
                if v not in choices:
                    raise ConfigError(f"{source}: '{key}' entries must be among {', '.join(map(str, choices))}; "
                                      f"got {v!r}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{source}: '{key}' lists an entry twice")
        return list(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not _is_type(value, hint):
        got = "" if meta.get("secret") else f", got {value!r}"
        raise ConfigError(f"{source}: '{key}' must be {_type_name(hint)}{got}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{source}: '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{source}: '{key}' must be {bound}; got {value!r}")
    return value


def _is_type(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, hint) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(t: Any) -> str:
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(t, getattr(t, "__name__", str(t)))


def _absolute(value: str, base: Path) -> str:
    """`value` as an absolute path, a relative one taken from `base`; empty stays empty."""
    if not value:
        return value
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def sqlite_file(url: str) -> str | None:
    """The file name in a SQLite URL (`sqlite:///rel.db`, `sqlite+pysqlite:////abs.db?mode=ro`), or
    None for another database, an in-memory one or a `file:` URI. Parsed here, without SQLAlchemy,
    so loading settings stays cheap for commands that never open the database."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] != "sqlite" or not rest.startswith("/"):
        return None
    name = rest[1:].split("?", 1)[0]
    return None if not name or name == ":memory:" or name.startswith("file:") else name


def _absolute_sqlite(url: str, base: Path) -> str:
    """A SQLite URL with a relative file name made absolute (SQLite would open it from the cwd)."""
    name = sqlite_file(url)
    if name is None or name.startswith("/"):
        return url
    scheme, _, rest = url.partition("://")
    query = rest[1:][len(name):]
    return f"{scheme}:///{_absolute(name, base)}{query}"


def _derive(s: Settings, env: Mapping[str, str], base: Callable[[str], Path]) -> Settings:
    """Fill the keys whose default depends on state_dir or on systemd's credentials directory, and
    make every path absolute (see the module docstring for what a relative one is relative to)."""
    state = Path(_absolute(s.storage.state_dir, base("storage.state_dir")))
    storage = dataclasses.replace(
        s.storage, state_dir=str(state),
        database_url=_absolute_sqlite(s.storage.database_url, base("storage.database_url"))
        or f"sqlite:///{state / 'cxrd.db'}")
    key_file = _absolute(s.security.key_file, base("security.key_file"))
    if not key_file:
        creds = env.get("CREDENTIALS_DIRECTORY")
        key_file = str(Path(creds) / "cxrd.key") if creds else str(state / "keys" / "master.key")
    security = dataclasses.replace(s.security, key_file=key_file)
    password_file = _absolute(s.storage.database_password_file, base("storage.database_password_file"))
    creds = env.get("CREDENTIALS_DIRECTORY")
    if not password_file and creds and (Path(creds) / "cxrd.dbpass").is_file():
        password_file = str(Path(creds) / "cxrd.dbpass")
    storage = dataclasses.replace(storage, database_password_file=password_file)
    retrain = dataclasses.replace(
        s.retrain, inbox=_absolute(s.retrain.inbox, base("retrain.inbox")) or str(state / "inbox"))
    if s.dicom.tls.enabled and not (s.dicom.tls.cert and s.dicom.tls.key):
        raise ConfigError("'dicom.tls.cert' and 'dicom.tls.key' are required when 'dicom.tls.enabled' is true")
    if s.dicom.tls.require_client_cert and not s.dicom.tls.ca:
        raise ConfigError("'dicom.tls.ca' is required when 'dicom.tls.require_client_cert' is true")
    _check_certificate_rules(s.dicom.tls)
    if len(s.dicom.ae_title.strip()) == 0 or len(s.dicom.ae_title) > 16:
        raise ConfigError("'dicom.ae_title' must be 1 to 16 characters")
    _check_networks("dicom.allowed_hosts", s.dicom.allowed_hosts)
    if s.dicom.allow_any_host and s.dicom.allowed_hosts:
        raise ConfigError("'dicom.allow_any_host' is true but 'dicom.allowed_hosts' lists addresses: "
                          "empty the list to accept any host, or set allow_any_host = false")
    _check_cron(s.retrain.schedule)
    if s.results.send_heatmap and not s.results.heatmap_objects:
        raise ConfigError("'results.send_heatmap' is true but 'results.heatmap_objects' is empty: list "
                          "\"secondary_capture\" and/or \"segmentation\", or set send_heatmap = false")
    results = _check_result_destinations(s.results, base)
    console = _check_console(s.console, state, env, base)
    return dataclasses.replace(s, storage=storage, security=security, retrain=retrain, results=results,
                               console=console)


CONSOLE_ROLES = ("compliance", "operations", "admin")


def _check_console(c: Any, state: Path, env: Mapping[str, str], base: Callable[[str], Path]) -> Any:
    """`console.*`: certificate paths (default: the pair `cxrd init` makes), proxies, LDAP mapping."""
    import urllib.parse
    _check_networks("console.trusted_proxies", c.trusted_proxies)
    if c.session_absolute_s < c.session_idle_s:
        raise ConfigError("'console.session_absolute_s' must be at least 'console.session_idle_s'")
    ldap = c.ldap
    password_file = _absolute(ldap.bind_password_file, base("console.ldap.bind_password_file"))
    creds = env.get("CREDENTIALS_DIRECTORY")
    if not password_file and creds and (Path(creds) / "cxrd.ldappass").is_file():
        password_file = str(Path(creds) / "cxrd.ldappass")
    ldap = dataclasses.replace(ldap, bind_password_file=password_file,
                               ca=_absolute(ldap.ca, base("console.ldap.ca")))
    for entry in ldap.role_groups:
        group, arrow, role = entry.rpartition("=>")
        if not arrow or not group.strip() or role.strip() not in CONSOLE_ROLES:
            raise ConfigError(f"'console.ldap.role_groups': {entry!r} must be 'GROUP DN => ROLE' with ROLE one "
                              f"of {', '.join(CONSOLE_ROLES)}")
    if ldap.enabled:
        if not ldap.url.startswith(("ldap://", "ldaps://")):
            raise ConfigError("'console.ldap.url' must be an ldaps:// or ldap:// URL when 'console.ldap.enabled' "
                              "is true")
        if not ldap.base_dn or not ldap.role_groups:
            raise ConfigError("'console.ldap.base_dn' and 'console.ldap.role_groups' are required when "
                              "'console.ldap.enabled' is true")
        host = urllib.parse.urlsplit(ldap.url).hostname or ""
        if ldap.url.startswith("ldap://") and not ldap.start_tls and host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError("'console.ldap.url' is ldap:// without 'console.ldap.start_tls': passwords would "
                              "cross the network in clear; use ldaps:// or set start_tls = true")
        if "{user}" not in ldap.user_filter or "{dn}" not in ldap.group_filter:
            raise ConfigError("'console.ldap.user_filter' must contain {user} and 'console.ldap.group_filter' {dn}")
    return dataclasses.replace(
        c, ldap=ldap,
        tls_cert=_absolute(c.tls_cert, base("console.tls_cert")) or str(state / "console" / "tls.crt"),
        tls_key=_absolute(c.tls_key, base("console.tls_key")) or str(state / "console" / "tls.key"))


def _check_result_destinations(r: Any, base: Callable[[str], Path]) -> Any:
    """`results.stow` and `results.hl7`: complete when enabled, no credentials in clear, paths absolute."""
    import urllib.parse
    stow = dataclasses.replace(r.stow, credentials_file=_absolute(r.stow.credentials_file,
                                                                  base("results.stow.credentials_file")),
                               ca=_absolute(r.stow.ca, base("results.stow.ca")))
    hl7 = dataclasses.replace(r.hl7, ca=_absolute(r.hl7.ca, base("results.hl7.ca")))
    if stow.enabled:
        u = urllib.parse.urlsplit(stow.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError("'results.stow.url' must be an http:// or https:// URL when 'results.stow.enabled' "
                              "is true (e.g. https://pacs.example/dicom-web)")
        if u.username or u.password:
            raise ConfigError("'results.stow.url' must not carry a user or password: set 'results.stow.auth' "
                              "and put them in 'results.stow.credentials_file'")
        try:
            u.port
        except ValueError:
            raise ConfigError("'results.stow.url' has an invalid port") from None
        if stow.auth != "none" and not stow.credentials_file:
            raise ConfigError(f"'results.stow.credentials_file' is required when 'results.stow.auth' is "
                              f"{stow.auth!r}")
        if stow.ca and u.scheme != "https":
            raise ConfigError("'results.stow.ca' is set but 'results.stow.url' is not https")
    if hl7.enabled:
        if not hl7.host.strip():
            raise ConfigError("'results.hl7.host' is required when 'results.hl7.enabled' is true")
        for key in ("sending_application", "sending_facility", "receiving_application", "receiving_facility"):
            value = getattr(hl7, key)
            if len(value) > 227 or any(c in value for c in "|^~\\&\r\n"):
                raise ConfigError(f"'results.hl7.{key}' must be at most 227 characters without HL7 delimiters "
                                  "(| ^ ~ \\ &)")
    return dataclasses.replace(r, stow=stow, hl7=hl7)


def _check_certificate_rules(tls: Any) -> None:
    """`dicom.tls.client_certificates`: only with required client certificates, each entry
    `IDENTITY => AE1, AE2` (the daemon's `daemon.dicom.tls_identity` applies them)."""
    import ipaddress
    import re
    if not tls.client_certificates:
        return
    if not (tls.enabled and tls.require_client_cert):
        raise ConfigError("'dicom.tls.client_certificates' needs 'dicom.tls.enabled' and "
                          "'dicom.tls.require_client_cert' true (the binding is checked on verified certificates)")
    for entry in tls.client_certificates:
        m = re.match(r"^\s*(CN=|DNS:|URI:|IP:|SHA256:)(.+?)\s*=>\s*(.+?)\s*$", entry)
        ok = m is not None
        if ok and m.group(1) == "IP:":
            try:
                ipaddress.ip_address(m.group(2).strip())
            except ValueError:
                ok = False
        if ok and m.group(1) == "SHA256:":
            ok = re.fullmatch(r"[0-9a-f]{64}", m.group(2).strip().replace(":", "").lower()) is not None
        if ok:
            ok = all(re.fullmatch(r"[\x20-\x5b\x5d-\x7e]{1,16}", a.strip()) and a.strip()
                     for a in m.group(3).split(","))
        if not ok:
            raise ConfigError(f"'dicom.tls.client_certificates': {entry!r} must be 'IDENTITY => AE1, AE2' with "
                              "IDENTITY one of CN=name, DNS:name, URI:uri, IP:address, SHA256:fingerprint and "
                              "AE titles of 1 to 16 characters")


def _check_networks(key: str, entries: list[str]) -> None:
    """Every entry an IP address or CIDR network, so `serve` never meets one it cannot parse."""
    import ipaddress
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"'{key}': {entry[:60]!r} is not an IP address or CIDR network "
                              f"(e.g. \"10.1.2.3\" or \"10.1.2.0/24\")") from None


def _check_cron(expr: str) -> None:
    try:
        from apscheduler.triggers.cron import CronTrigger
        CronTrigger.from_crontab(expr)
    except ValueError as exc:
        raise ConfigError(f"'retrain.schedule' is not a valid cron expression ({exc}); "
                          f"example: \"0 2 * * *\"") from None


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as a nested dict with secrets (passwords in URLs) hidden."""
    def walk(obj: Any) -> Any:
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = walk(value)
            elif f.metadata.get("secret") and isinstance(value, str):
                out[f.name] = _redact_url(value)
            else:
                out[f.name] = value
        return out
    return walk(settings)


def _redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: hide it whole
        return "***" if url else url


def documented_toml() -> str:
    """`config/cxrd.toml`: every key, commented with its documentation, set to its default."""
    lines = ["# cxrd settings. Every key is shown with its default; delete what you do not change.",
             "# Any key can be overridden by an environment variable CXRD_<SECTION>__<KEY>, e.g.",
             "# CXRD_DICOM__PORT=104 or CXRD_DICOM__TLS__ENABLED=true. Generated by `python -m config`.",
             ""]

    def section(cls: type, name: str) -> None:
        hints = typing.get_type_hints(cls)
        nested = []
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                nested.append((hints[f.name], f"{name}.{f.name}"))
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"# {f.metadata['doc']}")
            if f.metadata.get("choices"):
                kind = "any of" if typing.get_origin(hints[f.name]) is list else "one of"
                lines.append(f"# {kind}: {', '.join(f.metadata['choices'])}")
            lines.append(f"{f.name} = {_toml_value(default)}")
        lines.append("")
        for cls2, name2 in nested:
            section(cls2, name2)

    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        lines.append(f"# --- {f.metadata['doc']} ---")
        section(hints[f.name], f.name)
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    import json
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)
