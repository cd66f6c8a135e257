"""The operations dashboard (role `operations`): the service at a glance, and Retry for parked results.

One page, `GET /operations?hours=N`, built from `daemon.console.ops_dashboard.collect` (a bounded
number of aggregate queries, whatever the size of the database) and drawn with
`daemon.console.charts` (inline SVG plus the same numbers as tables; no JavaScript). Only
pseudonymous UIDs, AE titles and reasons are shown, as `cxrd status` and `cxrd results list` show.

`POST /operations/results/retry` does what `cxrd results retry [--study UID]` does, through the
same function (`daemon.stages.results.retry_failed`), in one transaction with its `results.retry`
audit row naming the console user and the client address: the change and its record commit
together or not at all. The role is checked on the server for both routes (`requires_role`), and
the form carries the session's CSRF token (checked by the console's middleware).
"""
from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.console import charts, csrf, notices
from daemon.console.access import current_user, requires_role
from daemon.console.ops_dashboard import Dashboard, collect
from daemon.console.ops_queries import MAX_HOURS
from daemon.console.templating import render
from storage.study_use import PSEUDONYM

HOUR_CHOICES = (6, 24, 72, 168)


def _hours(request: Request) -> int:
    try:
        hours = int(request.query_params.get("hours", "24"))
    except ValueError:
        return 24
    return max(1, min(hours, MAX_HOURS))


def local(moment: datetime, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A UTC moment in the server's local time, which is the hospital's (as the CLI prints)."""
    return moment.astimezone().strftime(fmt)


def local_iso(text: str) -> str:
    """A stored ISO time (audit rows, isoformat columns) in local time; left as is if unreadable."""
    try:
        return local(datetime.fromisoformat(text.replace("Z", "+00:00")), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text


def _charts(board: Dashboard) -> dict[str, charts.Chart]:
    labels = [local(b.start, "%H:%M") if board.hours <= 48 else local(b.start, "%d %H:%M") for b in board.hourly]
    states = [s for s in board.states if board.states[s] or s in ("received", "predicted", "reported", "failed")]
    return {
        "states": charts.bar_chart("chart-states", "Stored images by state", [s.replace("_", " ") for s in states],
                                   [board.states[s] for s in states], y_label="images", x_title="state"),
        "throughput": charts.line_chart(
            "chart-throughput", f"Images per hour, last {board.hours} hours", labels,
            [charts.Series("received", [b.received for b in board.hourly]),
             charts.Series("predicted", [b.predicted for b in board.hourly])],
            y_label="images per hour", x_title="hour starting", integer=True),
        "latency": charts.line_chart(
            "chart-latency", f"Receipt to prediction, last {board.hours} hours", labels,
            [charts.Series("median seconds", [b.latency_median_s for b in board.hourly]),
             charts.Series("95th percentile seconds", [b.latency_p95_s for b in board.hourly])],
            y_label="seconds", x_title="hour starting", digits=2),
    }


@requires_role("operations")
def dashboard(request: Request) -> Response:
    rt = request.app.state.runtime
    board = collect(rt, _hours(request))
    context = {"board": board, "charts": _charts(board) if board.database.get("reachable") else {},
               "hour_choices": HOUR_CHOICES, "local": local, "local_iso": local_iso,
               "retried": notices.shown(request, "retried") or None, "retry_study": notices.shown(request, "study"),
               "error": notices.shown(request, "error")}
    return render(request, "operations/dashboard.html", context)


@requires_role("operations")
def retry_results(request: Request) -> Response:
    form = csrf.form_of(request)
    study = str(form.get("study_uid") or "").strip()
    if study and not PSEUDONYM.fullmatch(study):
        return RedirectResponse("/operations?" + notices.query(request, error="not a pseudonymous study UID (2.25.…)")
                                + "#results", status_code=303)
    n = retry(request, study or None)
    query = {"retried": str(n)}
    if study:
        query["study"] = study
    return RedirectResponse("/operations?" + notices.query(request, **query) + "#results", status_code=303)


def retry(request: Request, study_uid: str | None) -> int:
    """`cxrd results retry [--study]` for the signed-in user: requeue and audit in one transaction."""
    from daemon.stages.results import retry_failed
    from storage.study_use import StudyChoice, record_use
    rt = request.app.state.runtime
    user = current_user(request)
    return record_use(rt.sessions, rt.keys.audit_key, "results.retry", StudyChoice(study_uid), actor=user.actor,
                      host=user.source, via="console",
                      change=lambda s: {"requeued": retry_failed(s, study_uid=study_uid)})["requeued"]


routes = [
    Route("/operations", dashboard, methods=["GET"]),
    Route("/operations/results/retry", retry_results, methods=["POST"]),
]
