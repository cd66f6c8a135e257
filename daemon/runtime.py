"""Settings turned into the plain things commands and services use: engine, keys, vault, registry.

Everything is created lazily and once, and each library is imported only when its object is first
asked for: `cxrd check-config` touches nothing on disk and imports no database code, `cxrd status`
opens only the database, and only commands that use the model import torch (a test holds this).
"""
from __future__ import annotations

import functools
import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings
from daemon.errors import DaemonError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from cxrmodel.registry import Registry
    from storage.keys import Keys
    from storage.vault import Vault


@dataclass
class Runtime:
    settings: Settings
    config_file: str | None = None

    @property
    def state_dir(self) -> Path:
        return Path(self.settings.storage.state_dir)

    @functools.cached_property
    def engine(self) -> Engine:
        from storage import db
        return db.engine_from_url(self.settings.storage.database_url,
                                  self.settings.storage.database_password_file)

    @functools.cached_property
    def sessions(self) -> sessionmaker[Session]:
        from storage import db
        return db.sessions(self.engine)

    @functools.cached_property
    def read_sessions(self) -> sessionmaker[Session]:
        from storage import db
        return db.sessions(db.readonly(self.engine))

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def vault_dir(self) -> Path:
        return self.state_dir / "vault"

    @property
    def actor(self) -> str:
        """Who is running this command, for audit rows (OS user, never a patient): see `os_actor`."""
        return os_actor()

    @property
    def hostname(self) -> str:
        return socket.gethostname()

    def require_state(self) -> None:
        """Refuse, creating nothing, unless `cxrd init` (or `serve`, or `restore`) made this state.

        Every command except those three and `check-config` calls this first (daemon/cli/main.py), so
        one run from the wrong directory, or with the wrong settings, says where it looked instead of
        failing half-way or creating an empty state of its own beside the real one.
        """
        state = self.state_dir
        if not state.is_dir():
            problem = "does not exist"
        elif (db_file := self.sqlite_file) is not None and not _non_empty_file(db_file):
            problem = f"has no database {db_file}"
        elif not self.keyring_file.is_file():
            problem = f"has no keyring {self.keyring_file}"
        else:
            return
        from config.loader import origin
        raise DaemonError(
            f"no initialised cxrd state: {state} {problem} (storage.state_dir: "
            f"{origin('storage.state_dir', self.config_file)}); run `cxrd init` to create it there, or "
            "point to yours with --config FILE, CXRD_STORAGE__STATE_DIR or storage.state_dir")

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file, or None when the database is not a SQLite file."""
        from config.loader import sqlite_file
        name = sqlite_file(self.settings.storage.database_url)
        return None if name is None else Path(name)

    def ensure_state_dir(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.state_dir

    @property
    def key_file(self) -> Path:
        return Path(self.settings.security.key_file)

    @property
    def keyring_file(self) -> Path:
        """Always in the state directory: a systemd credential's directory is read-only."""
        return self.state_dir / "keys" / "keyring.json"

    def ensure_keys(self) -> str:
        """Create the master key (mode 0600) and keyring when missing; return the key path for messages."""
        from storage import keys as key_store
        self.keyring_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_store.init_keys(self.key_file, self.keyring_file)
        return str(self.key_file)

    @functools.cached_property
    def keys(self) -> Keys:
        from storage import keys as key_store
        return key_store.load_keys(self.key_file, self.keyring_file)

    @functools.cached_property
    def vault(self) -> Vault:
        """The encrypted object store, keyed by the keyring (which reloads itself after a rotation)."""
        from storage.vault import Vault
        return Vault(self.vault_dir, self.keys.keyring)

    def audit(self, event_type: str, *, outcome: int = 0, study_uid: str = "", object_uid: str = "",
              actor: str | None = None, host: str | None = None, **details) -> None:  # noqa: ANN003
        """Append one audit row in its own transaction; the actor is the person running this command
        unless another (a calling AE title) is named."""
        from storage import audit
        with self.sessions() as session, session.begin():
            audit.append(session, self.keys.audit_key, event_type=event_type, outcome=outcome,
                         actor=self.actor if actor is None else actor,
                         host=self.hostname if host is None else host,
                         study_uid=study_uid, object_uid=object_uid, details=details)

    @functools.cached_property
    def registry(self) -> Registry:
        """The model versions on disk; importing it imports torch, so only model commands ask for it."""
        from cxrmodel.registry import Registry
        return Registry(self.models_dir)

    def current_model_summary(self) -> str | None:
        """One line naming the current model, read without torch (see `cxrmodel.pointer`)."""
        from cxrmodel.pointer import current_summary
        info = current_summary(self.models_dir)
        return None if info is None else f"{info['version']} (created {info['created']}, {info['source']})"


# The kernel's "unset" login uid: a process not started from a login session (a service, a container).
_NO_LOGIN_UID = 4294967295
LOGINUID_FILE = Path("/proc/self/loginuid")


def os_actor() -> str:
    """The person behind this process, from credentials the caller cannot choose.

    The effective uid says whose rights the command runs with; the kernel's login uid (set once by
    pam_loginuid at login, kept across sudo/su, and not writable by an unprivileged process) says who
    logged in. `sudo -u cxrd cxrd audit query` by alice is `os:alice(as:cxrd)`, so
    `--actor 'os:alice*'` finds her actions; without a login uid, or the same user, `os:cxrd`.
    Environment variables (SUDO_USER, USER, LOGNAME) are never read: anyone can set them.
    """
    euid = os.geteuid()
    user = _user_name(euid)
    login = _login_uid()
    if login is None or login == euid:
        return f"os:{user}"
    return f"os:{_user_name(login)}(as:{user})"


def _login_uid() -> int | None:
    try:
        value = int(LOGINUID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return None if value in (_NO_LOGIN_UID, -1) else value


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (some containers): the number is still the truth
        return f"uid{uid}"


def _non_empty_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False
