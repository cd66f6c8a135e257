"""An in-process console for the operations tests: the real app (Starlette's TestClient) on an
initialised state, with people of each role signed in through real console sessions."""
from __future__ import annotations

import json

import pytest


class Harness:
    def __init__(self, rt, app):
        self.rt, self.app = rt, app

    def client(self, name: str, role: str):  # noqa: ANN201 - TestClient
        from starlette.testclient import TestClient

        from daemon.console import cookies
        from storage import accounts
        with self.rt.sessions.begin() as s:
            if accounts.get(s, name) is None:
                accounts.add(s, name, role, "not-a-usable-hash")
            token = accounts.open_session(s, name=name, role=role, via="local", source="testclient")
        c = TestClient(self.app, base_url="http://testserver", follow_redirects=False)
        c.cookies.set(cookies.SESSION_COOKIE, token)
        c.csrf = cookies.token_for(token)
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


@pytest.fixture()
def harness(cli_state):
    from config import load_settings
    from daemon.console.app import build_app
    from daemon.runtime import Runtime
    rt = Runtime(load_settings(None))
    yield Harness(rt, build_app(rt))
    rt.engine.dispose()
