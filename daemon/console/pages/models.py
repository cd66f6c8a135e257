"""Model pages: the current model and its evaluation (per-finding AUROC with 95% CI, ROC curves), every
version, who promoted or rolled back what and when, and the retraining runs.

Roles `operations` and `admin` can view; only `admin` can change which model is current. A change
needs a typed confirmation: the name of the version that will become current, typed again. It
goes through `daemon.stages.model_changes`, the code path of `cxrd model promote|rollback`: the
weights are verified, the evidence is judged against the same promotion floor
(`[model.promotion]`), a refusal is audited as `model.rejected`, and a change as `model.promoted` /
`model.rollback`, with the console user as actor and the client address as host. The console never
forces a promotion past the floor; that stays a deliberate act on the command line (`--force`).

Viewing never imports torch (`daemon.console.ops_models` reads the JSON files); promoting does,
once, to verify the weights.
"""
from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.console import charts, csrf, ops_models
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

    from daemon.console import ops_queries
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
    return render(request, "models/overview.html", {
        "title": "Models", "versions": versions, "current": current,
        "verdicts": {v.version: _verdict(request, v) for v in versions if not v.error},
        "roc": _roc(current) if current is not None and not current.error else None,
        "runs": runs, "events": events, "pointer_history": ops_models.pointer_history(rt.models_dir)[:50],
        "db_error": db_error, "can_change": user.role == "admin", "rollback_to": rollback_target(rt),
        "local_iso": local_iso, "done": request.query_params.get("done", "")[:300],
        "error": error or request.query_params.get("error", "")[:300]}, status_code=status_code)


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


def _back(path: str, **query: str) -> RedirectResponse:
    return RedirectResponse(path + ("?" + urlencode(query) if query else ""), status_code=303)


@requires_role("admin")
def promote(request: Request) -> Response:
    from cxrmodel.errors import ModelError
    from daemon.stages.model_changes import PromotionRefused
    from daemon.stages.model_changes import promote as promote_version
    rt = request.app.state.runtime
    form = csrf.form_of(request)
    version = str(form.get("version", "")).strip()
    typed = str(form.get("confirm", "")).strip()
    back = f"/models/{quote(version, safe='')}" if ops_models.find(rt.models_dir, version) else "/models"
    if not version or ops_models.find(rt.models_dir, version) is None:
        return _back("/models", error="no such model version")
    if typed != version:
        return _back(back, error=f"not promoted: the confirmation must be the version name exactly ({version}); "
                                 "nothing was changed")
    user = current_user(request)
    try:
        done = promote_version(rt, version, actor=user.actor, host=user.source, via="console")
    except PromotionRefused as exc:
        return _back(back, error=f"{version} not promoted: {exc.verdict.summary} (the promotion floor "
                                 "[model.promotion] applies; audited)")
    except ModelError as exc:
        return _back(back, error=f"{version} not promoted: {exc}")
    was = f" (was {done.previous})" if done.previous and done.previous != version else ""
    return _back("/models", done=f"{version} is now the current model{was}. Evidence: {done.verdict.summary}")


@requires_role("admin")
def rollback(request: Request) -> Response:
    from cxrmodel.errors import ModelError
    from daemon.stages.model_changes import rollback as roll_back
    from daemon.stages.model_changes import rollback_target
    rt = request.app.state.runtime
    typed = str(csrf.form_of(request).get("confirm", "")).strip()
    target = rollback_target(rt)
    if target is None:
        return _back("/models", error="nothing to roll back to: no model was current before this one")
    if typed != target:
        return _back("/models", error=f"not rolled back: the confirmation must be the name of the version to "
                                      f"return to ({target}) exactly; nothing was changed")
    user = current_user(request)
    try:
        version, before = roll_back(rt, actor=user.actor, host=user.source, via="console")
    except ModelError as exc:
        return _back("/models", error=f"not rolled back: {exc}")
    return _back("/models", done=f"Rolled back: {version} is the current model again" +
                 (f" (was {before})." if before else "."))


routes = [
    Route("/models", overview, methods=["GET"]),
    Route("/models/promote", promote, methods=["POST"]),
    Route("/models/rollback", rollback, methods=["POST"]),
    Route("/models/{version}", version_page, methods=["GET"]),
]
