"""The console's routes under ``/ui/``: pages to read, charts, and the action forms.

Pages are plain HTML: everything reads with JavaScript off, and every action is a form
POST answered with a page saying why it was refused, or a 303 back to the page it
changed.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from factsync.daemon.api_routes import ApiContext
from factsync.daemon.console.actions import (
    Fields,
    Refused,
    authorise,
    fact_url,
    notice,
    read_form,
    retry_fact,
    revert_fact,
    roll_back,
)
from factsync.daemon.console.charts import ChartCache
from factsync.daemon.console.facts import fact_view, facts_view, quarantine_view
from factsync.daemon.console.jobs import job_view, jobs_view
from factsync.daemon.console.rendering import Pages
from factsync.daemon.console.versions import version_view, versions_view
from factsync.kpis.report import Metric

PREFIX = "/ui"
LIST_LIMIT = 500
"""Rows a list page shows at most; narrow the search for the rest."""
MAX_ID = 2**63 - 1
"""Largest id SQLite stores."""
SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
"""matplotlib styles its SVG inline; nothing else may load or run in it."""


def console_router(context: ApiContext) -> APIRouter:
    """The console's routes, reading and acting through ``context`` (the API's own)."""
    pages = Pages()
    charts = ChartCache()
    stylesheet = files("factsync.daemon.console").joinpath("static/console.css").read_text()
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def page(request: Request, template: str, *, title: str, status_code: int = 200,
             **values: Any) -> HTMLResponse:
        return pages.render(
            template, status_code=status_code, title=title, daemon=context.status(),
            token_required=context.token is not None, notice=notice(request.query_params),
            **values,
        )

    def missing(request: Request, message: str) -> HTMLResponse:
        return page(request, "message.html", title="Not found", status_code=404,
                    message=message, back="/ui/")

    def refuse(request: Request, refused: Refused, back: str) -> HTMLResponse:
        return page(request, "message.html", title="Not done", status_code=refused.status,
                    message=refused.message, back=back)

    async def act(request: Request, action: Callable[[Fields], str],
                  back: Callable[[Fields], str]) -> Response:
        # The store, the rollback and the pages block, so they run in the thread pool as
        # plain handlers do; only reading the form is async.
        try:
            fields = await read_form(request, max_bytes=context.max_body_bytes)
        except Refused as refused:
            return await run_in_threadpool(refuse, request, refused, "/ui/")
        return await run_in_threadpool(act_now, request, fields, action, back(fields))

    def act_now(request: Request, fields: Fields, action: Callable[[Fields], str],
                back: str) -> Response:
        try:
            authorise(context, token=fields.get("token", ""),
                      confirm=fields.get("confirm", ""))
            url = action(fields)
        except Refused as refused:
            return refuse(request, refused, back)
        return RedirectResponse(url, status_code=HTTPStatus.SEE_OTHER)

    @router.get("/")
    def versions(request: Request) -> HTMLResponse:
        return page(request, "versions.html", title="Versions", **versions_view(context.store))

    @router.get("/versions/{version_id}")
    def version(request: Request, version_id: str) -> HTMLResponse:
        try:
            values = version_view(context.store, version_id)
        except KeyError:
            return missing(request, f"There is no version {version_id}.")
        return page(request, "version.html", title=f"Version {version_id}", **values)

    @router.get("/charts/{name}.svg")
    def chart(name: str) -> Response:
        try:
            metric = Metric.parse(name)
        except ValueError:
            return Response(f"no metric {name}", status_code=404, media_type="text/plain")
        svg = charts.chart(context.store.versions(), metric,
                           live_id=context.store.live_version().id)
        return Response(svg, media_type="image/svg+xml",
                        headers={"Content-Security-Policy": SVG_POLICY})

    @router.get("/jobs")
    def jobs(request: Request, state: str = "", limit: str = "100") -> HTMLResponse:
        values = jobs_view(context.store, state=state, limit=_limit(limit, 100))
        return page(request, "jobs.html", title="Jobs", **values)

    @router.get("/jobs/{job_id}")
    def job(request: Request, job_id: str) -> HTMLResponse:
        number = _number(job_id)
        try:
            if number is None or number > MAX_ID:
                raise KeyError(job_id)
            values = job_view(context.store, number)
        except KeyError:
            return missing(request, f"There is no job {job_id}.")
        return page(request, "job.html", title=f"Job {number}", **values)

    @router.get("/facts")
    def facts(request: Request, q: str = "", state: str = "") -> HTMLResponse:
        values = facts_view(context.store, query=q.strip(), state=state, limit=LIST_LIMIT)
        return page(request, "facts.html", title="Facts", **values)

    @router.get("/fact")
    def fact(request: Request, subject: str = "", relation: str = "") -> HTMLResponse:
        try:
            values = fact_view(context.store, subject=subject, relation=relation)
        except KeyError:
            return missing(request, f"There is no fact with subject {subject!r} and "
                                    f"relation {relation!r}.")
        return page(request, "fact.html", title=f"{subject} · {relation}", **values)

    @router.get("/quarantine")
    def quarantine(request: Request, limit: str = "100") -> HTMLResponse:
        values = quarantine_view(context.store, limit=_limit(limit, 100))
        return page(request, "quarantine.html", title="Quarantine", **values)

    @router.get("/health")
    def health(request: Request) -> HTMLResponse:
        return page(request, "health.html", title="Alerts and health")

    @router.get("/static/console.css")
    def css() -> Response:
        return Response(stylesheet, media_type="text/css",
                        headers={"Cache-Control": "max-age=300"})

    @router.post("/actions/rollback")
    async def rollback(request: Request) -> Response:
        return await act(request, lambda f: roll_back(context, to=f.get("to", "")),
                         back=lambda f: "/ui/")

    @router.post("/actions/revert")
    async def revert(request: Request) -> Response:
        return await act(request, lambda f: revert_fact(context, **_fact_key(f)),
                         back=lambda f: fact_url(**_fact_key(f)))

    @router.post("/actions/retry")
    async def retry(request: Request) -> Response:
        return await act(request, lambda f: retry_fact(context, **_fact_key(f)),
                         back=lambda f: fact_url(**_fact_key(f)))

    @router.get("/{rest:path}")
    def unknown(request: Request, rest: str) -> HTMLResponse:
        return missing(request, f"The console has no page /ui/{rest}.")

    return router


def _fact_key(fields: Fields) -> dict[str, str]:
    return {"subject": fields.get("subject", ""), "relation": fields.get("relation", "")}


def _limit(value: str, default: int) -> int:
    """A list length from the query: ``default`` if it is not a number, else clamped to
    1..``LIST_LIMIT``."""
    number = _number(value)
    return default if number is None else max(1, min(number, LIST_LIMIT))


def _number(text: str) -> int | None:
    """``text`` as a non-negative integer, or ``None`` if it is not ASCII digits (at most
    20 of them: ids and limits are smaller)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None
    return int(text)
