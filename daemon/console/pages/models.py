"""Model pages: the current model and its evaluation (per-finding AUROC with 95% CI, ROC curves), every
version, who promoted or rolled back what and when, and the retraining runs.

Roles `operations` and `admin` can view; only `admin` can change which model is current. A change
needs a typed confirmation: the name of the version that will become current, typed again. It
goes through `daemon.stages.model_changes`, the code path of `cxrd model promote|rollback`: the
weights are verified, the evidence is judged against the same promotion floor
(`[model.promotion]`), a refusal is audited as `model.rejected`, and a change as `model.promoted` /
`model.rollback`, with the console user as actor and the client address as host. The console never
forces a promotion past the floor; that stays a deliberate act on the command line (`--force`).

The shadow candidate (`daemon.console.ops_shadow`): which version runs beside the current model,
since when, chosen by whom or what, and its live comparison (per finding current vs candidate
AUROC with 95% CIs, and the verdict a promotion would be judged on). An admin starts or stops a
shadow with a typed confirmation (the version's name), through `daemon.stages.model_changes`
`start_shadow` / `stop_shadow`, the code path of `cxrd model shadow VERSION|--off`: the weights are
verified, a version that prepares images differently is refused, and the change is audited as
`model.shadow` / `model.shadow.off` with the console user as actor and the client address as host.

Viewing never imports torch (`daemon.console.ops_models` reads the JSON files); promoting does,
once, to verify the weights.
"""
from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.console import charts, csrf, notices, ops_models
from daemon.console.access import current_user, requires_role
from daemon.console.pages.operations import local_iso
from daemon.console.templating import render

VIEW_ROLES = ("operations", "admin")


def _roc(version: ops_models.Version) -> charts.Chart:
    findings = [f for f in version.findings() if f.roc is not None]
    return charts.roc_chart("chart-roc", f"ROC curves of {version.version}, per finding",
                            [charts.Curve(f.label, f.roc[0], f.roc[1]) for f in findings],  # type: ignore[index]
                            aucs=[f.auroc for f in findings])


def _verdict(request: Request, version: ops_models.Version):  # noqa: ANN202 - cxrmodel.promotion.Verdict
    from cxrmodel.promotion import Floor, judge
    return judge(version.metrics, Floor.of(request.app.state.runtime.settings.model.promotion))


def _overview(request: Request, *, status_code: int = 200, error: str = "") -> Response:
    from daemon.stages.model_changes import rollback_target
    from storage import db
    from storage.errors import DatabaseUnavailable

    from daemon.console import ops_queries, ops_shadow
    rt = request.app.state.runtime
    versions = ops_models.versions(rt.models_dir)
    current = next((v for v in versions if v.current), None)
    runs: list = []
    events: list = []
    db_error = ""
    try:
        with db.reachable(rt.engine), rt.read_sessions() as s:
            runs = ops_models.retrain_runs(s)
            events = ops_queries.model_events(s)
    except DatabaseUnavailable as exc:
        db_error = str(exc)
    user = current_user(request)
    shadow = ops_shadow.view(rt)
    return render(request, "models/overview.html", {
        "shadow": shadow, "shadow_choices": [v.version for v in versions if not v.current and not v.error
                                             and v.version != shadow.version],
        "title": "Models", "versions": versions, "current": current,
        "verdicts": {v.version: _verdict(request, v) for v in versions if not v.error},
        "roc": _roc(current) if current is not None and not current.error else None,
        "runs": runs, "events": events, "pointer_history": ops_models.pointer_history(rt.models_dir)[:50],
        "db_error": db_error, "can_change": user.role == "admin", "rollback_to": rollback_target(rt),
        "local_iso": local_iso, "done": notices.shown(request, "done"),
        "error": error or notices.shown(request, "error")}, status_code=status_code)


@requires_role(*VIEW_ROLES)
def overview(request: Request) -> Response:
    return _overview(request)


@requires_role(*VIEW_ROLES)
def version_page(request: Request) -> Response:
    rt = request.app.state.runtime
    name = request.path_params["version"]
    version = ops_models.find(rt.models_dir, name)
    if version is None:
        return render(request, "errors/not_found.html", status_code=404)
    user = current_user(request)
    return render(request, "models/version.html", {
        "title": f"Model {version.version}", "v": version, "verdict": None if version.error else _verdict(request, version),
        "roc": None if version.error else _roc(version), "can_change": user.role == "admin",
        "local_iso": local_iso})


def _back(request: Request, path: str, **query: str) -> RedirectResponse:
    """Back to `path` with a notice signed for this session (notices.py: a link cannot forge one)."""
    return RedirectResponse(path + ("?" + notices.query(request, **query) if query else ""), status_code=303)


def _typed(request: Request) -> str:
    return str(csrf.form_of(request).get("confirm", "")).strip()


def _unconfirmed(request: Request, back: str, not_done: str, expected: str, what: str) -> Response | None:
    """Every change here needs its target's name typed exactly (a slip of the mouse changes nothing):
    None when it was, else the way back saying nothing was changed."""
    if _typed(request) == expected:
        return None
    return _back(request, back, error=f"{not_done}: the confirmation must be {what} ({expected}) exactly; "
                                      "nothing was changed")


def _chosen_version(request: Request) -> str | None:
    """The version a form names, when it is one the registry holds."""
    version = str(csrf.form_of(request).get("version", "")).strip()
    found = version and ops_models.find(request.app.state.runtime.models_dir, version) is not None
    return version if found else None


@requires_role("admin")
def promote(request: Request) -> Response:
    from cxrmodel.errors import ModelError
    from daemon.stages.model_changes import PromotionRefused
    from daemon.stages.model_changes import promote as promote_version
    rt = request.app.state.runtime
    version = _chosen_version(request)
    if version is None:
        return _back(request, "/models", error="no such model version")
    back = f"/models/{quote(version, safe='')}"
    if refused := _unconfirmed(request, back, "not promoted", version, "the version name"):
        return refused
    user = current_user(request)
    try:
        done = promote_version(rt, version, actor=user.actor, host=user.source, via="console")
    except PromotionRefused as exc:
        return _back(request, back, error=f"{version} not promoted: {exc.reason} (the promotion floor "
                                 "[model.promotion] and, for a version that ran in shadow, its live comparison "
                                 "apply; audited)")
    except ModelError as exc:
        return _back(request, back, error=f"{version} not promoted: {exc}")
    was = f" (was {done.previous})" if done.previous and done.previous != version else ""
    return _back(request, "/models", done=f"{version} is now the current model{was}. Evidence: {done.verdict.summary}")


@requires_role("admin")
def rollback(request: Request) -> Response:
    from cxrmodel.errors import ModelError
    from daemon.stages.model_changes import rollback as roll_back
    from daemon.stages.model_changes import rollback_target
    rt = request.app.state.runtime
    target = rollback_target(rt)
    if target is None:
        return _back(request, "/models", error="nothing to roll back to: no model was current before this one")
    if refused := _unconfirmed(request, "/models", "not rolled back", target, "the name of the version to return to"):
        return refused
    user = current_user(request)
    try:
        version, before = roll_back(rt, actor=user.actor, host=user.source, via="console")
    except ModelError as exc:
        return _back(request, "/models", error=f"not rolled back: {exc}")
    return _back(request, "/models", done=f"Rolled back: {version} is the current model again" +
                 (f" (was {before})." if before else "."))


@requires_role("admin")
def shadow_start(request: Request) -> Response:
    from cxrmodel.errors import ModelError
    from daemon.stages.model_changes import ShadowRefused, start_shadow
    rt = request.app.state.runtime
    version = _chosen_version(request)
    if version is None:
        return _back(request, "/models", error="no such model version")
    if refused := _unconfirmed(request, "/models", "shadow not started", version, "the version name"):
        return refused
    user = current_user(request)
    try:
        done = start_shadow(rt, version, origin=user.actor, actor=user.actor, host=user.source, via="console")
    except (ShadowRefused, ModelError) as exc:
        return _back(request, "/models", error=f"shadow not started: {exc}")
    replaced = f" (replaces {done.previous})" if done.previous and done.previous != version else ""
    return _back(request, "/models", done=f"{version} now runs in shadow beside {done.current or 'no current model yet'}; "
                                 f"nothing it says is sent{replaced}. Audited.")


@requires_role("admin")
def shadow_stop(request: Request) -> Response:
    from cxrmodel.errors import ModelError
    from cxrmodel.shadow_pointer import read_shadow
    from daemon.stages.model_changes import stop_shadow
    rt = request.app.state.runtime
    try:
        running = read_shadow(rt.models_dir)["version"]
    except ModelError as exc:
        running = None
        if _typed(request):
            return _back(request, "/models", error=f"shadow not stopped: {exc}")
    if running is None:
        return _back(request, "/models", error="no shadow is running")
    if refused := _unconfirmed(request, "/models", "shadow not stopped", running, "the name of the version in shadow"):
        return refused
    user = current_user(request)
    try:
        previous = stop_shadow(rt, origin=f"stopped by {user.actor}", actor=user.actor, host=user.source,
                               via="console")
    except ModelError as exc:
        return _back(request, "/models", error=f"shadow not stopped: {exc}")
    return _back(request, "/models", done=f"Shadow stopped (was {previous}). Audited." if previous else "No shadow was running.")


routes = [
    Route("/models", overview, methods=["GET"]),
    Route("/models/shadow/start", shadow_start, methods=["POST"]),
    Route("/models/shadow/stop", shadow_stop, methods=["POST"]),
    Route("/models/promote", promote, methods=["POST"]),
    Route("/models/rollback", rollback, methods=["POST"]),
    Route("/models/{version}", version_page, methods=["GET"]),
]
