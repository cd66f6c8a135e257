"""Compliance pages: search the audit trail, one event in full, the chain's state and a verification
run, downloads of a period, who looked at the trail, and events and failures per day.

Every route requires the compliance role on the server (`requires_role`), downloads included. Every
page that shows rows of the trail, every download and every verification is itself recorded as the
CLI records it (`audit.query` / `audit.export` / `audit.verify`, DICOM 110101) with the console
user as actor and their address as host, and fails closed: when the use cannot be recorded nothing
is shown. An original Study Instance UID is accepted only by the POST search form with a reason
(never in a URL, where proxies and browser history would keep it); it is mapped to its pseudonym
and the use recorded as `reid.pseudonymize` in the same transaction (`storage.study_use`). Pages
show pseudonymous UIDs only.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date, datetime, timedelta
from html import escape
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.datastructures import MultiDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from daemon.console import audit_search, charts, csrf
from daemon.console.access import current_user, requires_role
from daemon.console.audit_search import FormError, Search
from daemon.console.audit_verify_job import VerifyJob
from daemon.console.templating import plain_page, render
from daemon.runtime import Runtime
from storage.audit_query import AuditFilter
from storage.study_use import StudyChoice

ROLE = "compliance"
MAX_DAYS = 400          # longest per-day chart (a year and a bit)
CHART_DAYS = (7, 30, 90, 365)
SEQ_MAX = 2 ** 63 - 1
EXPORT_BATCH = 500      # events per chunk of a streamed download
FORMATS = {  # format -> (media type, file name suffix)
    "dicom": ("text/plain; charset=utf-8", "dicom-audit.txt"),
    "json": ("application/x-ndjson", "jsonl"),
    "csv": ("text/csv; charset=utf-8", "csv"),
}
ORIGINAL_ONLY_BY_POST = ("an original Study Instance UID is accepted only by the search form's "
                         "\"original Study Instance UID\" section (with a reason), never in a link")


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime


def _common(request: Request) -> dict[str, Any]:
    return {"local_time": audit_search.local_time, "outcome_name": audit_search.outcome_name,
            "families": audit_search.FAMILIES, "page_sizes": audit_search.PAGE_SIZES, "one_day": timedelta(days=1)}


def _record(request: Request, event_type: str, flt: AuditFilter, study: StudyChoice,
            **details: Any) -> Response | None:
    """Record this use as the CLI's `_record` does; a refusal page (nothing shown) if it fails."""
    from storage.errors import AuditError
    from storage.study_use import UseNotRecorded, record_use
    rt, user = _rt(request), current_user(request)
    try:
        record_use(rt.sessions, rt.keys.audit_key, event_type, study, actor=user.actor, host=user.source,
                   filters=flt.as_details(), **details)
    except (UseNotRecorded, AuditError):
        return plain_page("Not shown", "This use of the audit trail could not be recorded, so nothing is "
                          "shown. Tell your administrator.", 503)
    return None


def _no_reason_in_links(params: Any) -> None:
    if (params.get("reason") or "").strip():
        raise FormError(ORIGINAL_ONLY_BY_POST)


# -- search ---------------------------------------------------------------------------------------
def _show_search(request: Request, params: Any, *, view: str, template: str, title: str,
                 extra_events: tuple[str, ...] = ()) -> Response:
    rt = _rt(request)
    ctx = _common(request) | {"title": title, "form": {}, "view": view}
    try:
        if request.method == "GET":
            _no_reason_in_links(params)
        srch = audit_search.read_search(params, lambda: rt.keys.uid_key, extra_events=extra_events)
    except FormError as exc:
        shown = ("since", "until", "month", "actor") + (("study",) if request.method == "GET" else ())
        ctx["form"] = {k: params.get(k, "") for k in shown}  # a POSTed study is an original: never echoed
        ctx["form"] |= {"event": params.getlist("event"), "outcome": params.getlist("outcome")}
        return render(request, template, ctx | {"error": str(exc)}, status_code=400)
    with rt.read_sessions() as s:
        page = audit_search.page(s, srch)
    shown = replace(srch.flt, after_seq=srch.after if srch.before is None else None,
                    upto_seq=srch.before - 1 if srch.before is not None else None)
    refused = _record(request, "audit.query", shown, srch.study, returned=len(page.events), limit=srch.limit,
                      offset=0, view=view)
    if refused is not None:
        return refused
    form = dict(srch.form)
    if srch.study.original:  # the page shows the pseudonym it was mapped to, never the original
        form["study"] = srch.study.pseudonym
        form["reason"] = ""
    links = srch.link_params()
    base = request.url.path
    return render(request, template, ctx | {
        "search": srch, "page": page, "form": form, "mapped": srch.study.original,
        "older_url": f"{base}?{urlencode(links + [('before', str(page.older))])}" if page.older else "",
        "newer_url": f"{base}?{urlencode(links + [('after', str(page.newer))])}" if page.newer else "",
        "newest_url": f"{base}?{urlencode(links)}" if (srch.before or srch.after) else "",
        "export_query": urlencode([(k, v) for k, v in links if k != "limit"]),
    })


@requires_role(ROLE)
def search(request: Request) -> Response:
    return _show_search(request, request.query_params, view="search", template="audit/search.html",
                        title="Audit trail")


@requires_role(ROLE)
def search_original(request: Request) -> Response:
    """The POST form for an original Study Instance UID with its reason (CSRF-checked)."""
    form = csrf.form_of(request)
    if not str(form.get("study", "")).strip() or not str(form.get("reason", "")).strip():
        ctx = _common(request) | {"title": "Audit trail", "view": "search", "form": {"event": [], "outcome": []},
                                  "error": "an original Study Instance UID needs both the UID and a reason"}
        return render(request, "audit/search.html", ctx, status_code=400)
    return _show_search(request, form, view="search", template="audit/search.html", title="Audit trail")


@requires_role(ROLE)
def who_looked(request: Request) -> Response:
    """Every use of the audit trail (DICOM 110101: searches, views, exports, verifications)."""
    params = MultiDict([(k, v) for k, v in request.query_params.multi_items() if k not in ("event", "study")])
    return _show_search(request, params, view="who-looked", template="audit/access.html",
                        title="Who looked at the audit trail", extra_events=(audit_search.AUDIT_USE,))


# -- one event ------------------------------------------------------------------------------------
@requires_role(ROLE)
def event_detail(request: Request) -> Response:
    seq = request.path_params["seq"]
    rt = _rt(request)
    if not 0 < seq <= SEQ_MAX:
        return render(request, "errors/not_found.html", status_code=404)
    with rt.read_sessions() as s:
        ev = audit_search.event(s, seq)
        prev, nxt = audit_search.neighbours(s, seq)
    if ev is None:
        return render(request, "errors/not_found.html", status_code=404)
    refused = _record(request, "audit.query", AuditFilter(after_seq=seq - 1, upto_seq=seq), StudyChoice(),
                      returned=1, limit=1, offset=0, view="event")
    if refused is not None:
        return refused
    from storage.audit_export import EVENT_ID_MEANING
    return render(request, "audit/event.html", _common(request) | {
        "title": f"Audit event {seq}", "ev": ev, "prev": prev, "next": nxt,
        "event_meaning": EVENT_ID_MEANING.get(str(ev["event_id"]), ""),
        "details_json": audit_search.details_json(ev["details"])})


# -- chain state and verification -----------------------------------------------------------------
_JOB_LOCK = threading.Lock()


def _job(request: Request) -> VerifyJob:
    with _JOB_LOCK:
        job = getattr(request.app.state, "audit_verify_job", None)
        if job is None:
            job = VerifyJob()
            request.app.state.audit_verify_job = job
        return job


@requires_role(ROLE)
def chain(request: Request) -> Response:
    """The chain's state. While a verification runs, only its progress (refreshing itself; no rows
    of the trail are read, so nothing to record); otherwise the last verifications, read from the
    trail's own `audit.verify` events (recorded as a use)."""
    rt = _rt(request)
    state = _job(request).snapshot()
    ctx = _common(request) | {"title": "Audit chain", "job": state}
    if state.running:
        return render(request, "audit/chain.html", ctx | {"refresh": 2})
    with rt.read_sessions() as s:
        verifications = audit_search.last_events(s, "audit.verify", limit=10)
        from storage import audit_query
        head = audit_query.head_seq(s)
    refused = _record(request, "audit.query", AuditFilter(events=("audit.verify",)), StudyChoice(),
                      returned=len(verifications), limit=10, offset=0, view="chain")
    if refused is not None:
        return refused
    return render(request, "audit/chain.html", ctx | {"verifications": verifications, "head": head,
                                                       "last": verifications[0] if verifications else None})


@requires_role(ROLE)
def chain_verify(request: Request) -> Response:
    """Start a verification (POST, CSRF-checked); a second start while one runs joins it."""
    user = current_user(request)
    _job(request).start(_rt(request), actor=user.actor, host=user.source)
    return RedirectResponse("/audit/chain", status_code=303)


# -- events and failures per day ------------------------------------------------------------------
def _period(params: Any, today: date) -> tuple[date, date, str]:
    month = (params.get("month") or "").strip()
    if month:
        from storage.audit_query import AuditQueryError, month_bounds
        try:
            month_bounds(month)
        except AuditQueryError as exc:
            raise FormError(str(exc)) from None
        first = date(int(month[:4]), int(month[5:7]), 1)
        nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
        return first, nxt - timedelta(days=1), month
    days_text = (params.get("days") or "30").strip()
    if not days_text.isdigit() or not 1 <= int(days_text) <= MAX_DAYS:
        raise FormError(f"days: a number from 1 to {MAX_DAYS}")
    days = int(days_text)
    return today - timedelta(days=days - 1), today, f"last {days} days"


@requires_role(ROLE)
def activity(request: Request) -> Response:
    rt = _rt(request)
    params = request.query_params
    ctx = _common(request) | {"title": "Audit events per day", "chart_days": CHART_DAYS,
                              "form": {"month": params.get("month", ""), "days": params.get("days", ""),
                                       "event": params.getlist("event"), "outcome": []}}
    try:
        _no_reason_in_links(params)
        first, last, label = _period(params, datetime.now().astimezone().date())
        filters = MultiDict([(k, v) for k, v in params.multi_items() if k in ("event", "actor", "study")])
        srch = audit_search.read_search(filters, lambda: rt.keys.uid_key)
    except FormError as exc:
        return render(request, "audit/activity.html", ctx | {"error": str(exc)}, status_code=400)
    with rt.read_sessions() as s:
        days = audit_search.per_day(s, first, last, flt=srch.flt)
    since, until = audit_search.local_day_bounds(first)[0], audit_search.local_day_bounds(last)[1]
    refused = _record(request, "audit.query", replace(srch.flt, since=since, until=until), srch.study,
                      returned=len(days), limit=len(days), offset=0, view="per-day counts")
    if refused is not None:
        return refused
    return render(request, "audit/activity.html", ctx | {
        "days": days, "label": label, "chart": day_chart(days, label),
        "total_events": sum(d.events for d in days), "total_failures": sum(d.failures for d in days)})


def day_chart(days: list[audit_search.Day], label: str) -> Markup:
    """Events (bars) and failures (darker bars in front) per day as inline SVG; colours come from
    audit.css classes (the CSP forbids inline style). The page shows the same numbers as a table."""
    width, height, left, right, top, bottom = 720, 260, 56, 12, 24, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((d.events for d in days), default=0)
    scale = int(charts.nice_max(max(peak, 4)))  # at least 4, so ticks are whole numbers
    n = max(1, len(days))
    step = plot_w / n
    bar = max(1.0, step * 0.8)
    title = f"Audit events and failures per day, {label}"
    desc = (f"{len(days)} days; at most {peak} events in a day; "
            f"{sum(d.failures for d in days)} failures in all. The table below has every value.")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="audit-chart" viewBox="0 0 {width} {height}" '
             'role="img" aria-labelledby="day-chart-title day-chart-desc">',
             f'<title id="day-chart-title">{escape(title)}</title>', f'<desc id="day-chart-desc">{escape(desc)}</desc>']
    intervals = 5 if scale % 5 == 0 else 4  # whole-number ticks: 0..50 by 10, 0..20 by 5, 0..4 by 1
    for i in range(intervals + 1):
        y = top + plot_h - plot_h * i / intervals
        parts.append(f'<line class="audit-chart-grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>')
        parts.append(f'<text class="audit-chart-tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{scale * i // intervals}</text>')
    for i, d in enumerate(days):
        x = left + i * step + (step - bar) / 2
        for cls, value in (("audit-chart-events", d.events), ("audit-chart-failures", d.failures)):
            h = plot_h * value / scale if scale else 0
            if h:
                parts.append(f'<rect class="{cls}" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                             f'height="{h:.1f}"><title>{d.day.isoformat()}: {d.events} events, '
                             f'{d.failures} failures</title></rect>')
    every = max(1, -(-len(days) // 8))
    for i in range(0, len(days), every):
        x = left + i * step + step / 2
        parts.append(f'<text class="audit-chart-tick" x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                     f'{days[i].day.strftime("%d %b")}</text>')
    parts.append(f'<line class="audit-chart-axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                 f'y2="{top + plot_h}"/>')
    parts.append(f'<rect class="audit-chart-events" x="{left}" y="6" width="12" height="10"/>'
                 f'<text class="audit-chart-legend" x="{left + 16}" y="15">events</text>'
                 f'<rect class="audit-chart-failures" x="{left + 80}" y="6" width="12" height="10"/>'
                 f'<text class="audit-chart-legend" x="{left + 96}" y="15">failures (outcome not 0)</text>')
    if not peak:
        parts.append(f'<text class="audit-chart-legend" x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
                     'text-anchor="middle">no events in this period</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# -- downloads ------------------------------------------------------------------------------------
@requires_role(ROLE)
def downloads(request: Request) -> Response:
    """The download form: a period (a month, or from/until) and a format; filters optional."""
    today = datetime.now().astimezone().date()
    last_month = (today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    return render(request, "audit/downloads.html", _common(request) | {
        "title": "Download the audit trail", "last_month": last_month, "this_month": today.strftime("%Y-%m"),
        "formats": FORMATS})


@requires_role(ROLE)
def export(request: Request) -> Response:
    """A period as DICOM audit messages (one XML AuditMessage per line, as `cxrd audit export`),
    JSON lines or CSV, streamed in keyset batches. Recorded first, pinned to the rows present now,
    as the CLI does for standard output (a download cannot be taken back)."""
    from storage import audit_query
    rt = _rt(request)
    params = request.query_params
    fmt = (params.get("format") or "dicom").strip()
    try:
        if fmt not in FORMATS:
            raise FormError(f"format: one of {', '.join(FORMATS)}")
        _no_reason_in_links(params)
        srch = audit_search.read_search(params, lambda: rt.keys.uid_key)
    except FormError as exc:
        return plain_page("Cannot download", f"{exc}.", 400)
    with rt.read_sessions() as s:
        flt = replace(srch.flt, upto_seq=audit_query.head_seq(s))
        n = audit_query.count(s, flt)
    refused = _record(request, "audit.export", flt, srch.study, format=fmt, exported=n, output="download")
    if refused is not None:
        return refused
    media, suffix = FORMATS[fmt]
    name = f"cxrd-audit-{_period_name(srch)}.{suffix}"
    source_id = f"{rt.settings.dicom.ae_title}@{rt.hostname}"
    return StreamingResponse(_stream(rt, flt, fmt, source_id), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Cache-Control": "no-store", "X-Cxrd-Events": str(n)})


def _period_name(srch: Search) -> str:
    if srch.form.get("month"):
        return srch.form["month"]
    def day(value: str | None) -> str:
        return audit_search.local_time(value)[:10] if value else ""
    if srch.flt.since or srch.flt.until:
        return f"{day(srch.flt.since) or 'start'}_to_{day(srch.flt.until) or 'now'}"
    return "all"


def _stream(rt: Runtime, flt: AuditFilter, fmt: str, source_id: str) -> Iterator[bytes]:
    """The chosen writer of `storage.audit_export`, fed EXPORT_BATCH events at a time, so memory
    stays flat for a year of rows and the bytes are exactly what `cxrd audit export` writes."""
    from storage import audit_export, audit_query
    write: Callable[[list[dict[str, Any]]], str]
    if fmt == "dicom":
        def write(batch: list[dict[str, Any]]) -> str:
            return "".join(audit_export.to_xml(ev, source_id=source_id) + "\n" for ev in batch)
    elif fmt == "json":
        def write(batch: list[dict[str, Any]]) -> str:
            import io
            buf = io.StringIO()
            audit_export.write_json(batch, buf)
            return buf.getvalue()
    else:
        header = audit_export.csv_text([])
        yield header.encode()

        def write(batch: list[dict[str, Any]]) -> str:
            return audit_export.csv_text(batch)[len(header):]
    with rt.read_sessions() as s:
        batch: list[dict[str, Any]] = []
        for ev in audit_query.iter_events(s, flt):
            batch.append(ev)
            if len(batch) >= EXPORT_BATCH:
                yield write(batch).encode()
                batch = []
        if batch:
            yield write(batch).encode()


routes = [
    Route("/audit", search, methods=["GET"]),
    Route("/audit/original", search_original, methods=["POST"]),
    Route("/audit/events/{seq:int}", event_detail, methods=["GET"]),
    Route("/audit/chain", chain, methods=["GET"]),
    Route("/audit/chain/verify", chain_verify, methods=["POST"]),
    Route("/audit/access", who_looked, methods=["GET"]),
    Route("/audit/activity", activity, methods=["GET"]),
    Route("/audit/downloads", downloads, methods=["GET"]),
    Route("/audit/export", export, methods=["GET"]),
]
