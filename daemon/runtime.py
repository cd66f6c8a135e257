"""Settings turned into the plain things commands and services use: engine, keys, vault, registry.

Everything is created lazily and once, and each library is imported only when its object is first
asked for: `cxrd check-config` touches nothing on disk and imports no database code, `cxrd status`
opens only the database, and only commands that use the model import torch (a test holds this).
"""
from __future__ import annotations

import functools
import getpass
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings

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
        """Who is running this command, for audit rows (OS user, never a patient).

        Under sudo (or `systemd-run -E SUDO_USER`, as docs/compliance.md shows) the person who asked is
        named first: `os:alice(as:cxrd)`, so `--actor 'os:alice*'` finds their actions.
        """
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry in some containers
            user = "unknown"
        sudo = os.environ.get("SUDO_USER", "").strip()
        if sudo and sudo != user and sudo.isprintable() and len(sudo) <= 64:
            return f"os:{sudo}(as:{user})"
        return f"os:{user}"

    @property
    def hostname(self) -> str:
        return socket.gethostname()

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
