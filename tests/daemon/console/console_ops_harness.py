"""People of each console role signed in through the real sign-in form of an in-process console
(the root conftest's `console_client`), for the operations and model page tests."""
from __future__ import annotations

import json

PASSWORD = "correct horse battery"
HOME = {"operations": "/operations", "admin": "/models", "compliance": "/operations"}  # a page with the sign-out form


class Harness:
    def __init__(self, make):  # noqa: ANN001 - the console_client factory
        self.make = make
        self.rt = make().rt

    def client(self, name: str, role: str):  # noqa: ANN201 - conftest.ConsoleClient
        """A client signed in as `name` with `role`; `.csrf_token` is its session's form token."""
        from storage import accounts
        c = self.make()
        with self.rt.read_sessions() as s:
            known = accounts.get(s, name) is not None
        if not known:
            c.add_user(name, role, PASSWORD)
        assert c.sign_in(name, PASSWORD).status_code == 303
        c.csrf_token = c.csrf(HOME[role])  # every signed-in page, a 403 one too, carries the sign-out form
        return c

    def audit_rows(self, event_type: str) -> list[dict]:
        from sqlalchemy import select

        from storage.models import AuditEvent
        with self.rt.read_sessions() as s:
            rows = s.execute(select(AuditEvent.actor, AuditEvent.host, AuditEvent.study_uid, AuditEvent.outcome,
                                    AuditEvent.details).where(AuditEvent.event_type == event_type)
                             .order_by(AuditEvent.seq)).all()
        return [{"actor": a, "host": h, "study_uid": st, "outcome": o, "details": json.loads(d)}
                for a, h, st, o, d in rows]
