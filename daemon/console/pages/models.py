"""Model pages: the current model, its evaluation, history; promotion and rollback (admin, with a
typed confirmation). Built by the console-ops slice."""
from __future__ import annotations

routes: list = []
