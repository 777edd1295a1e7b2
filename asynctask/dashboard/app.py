"""The dashboard's web application: pages, the JSON API under ``/api/``, and the actions.

:func:`create_app` builds a Starlette application around one open transport (transports are safe
to share between threads: the synchronous endpoints run in Starlette's thread pool, and the
:class:`~asynctask.dashboard.sampler.Sampler` thread uses the same transport).  Pages are HTML
shells (Jinja2 templates) that the page's own script (``static/dashboard.js``, no framework, no
network) fills from the API and refreshes every 2 seconds; the actions are HTML forms, so they work
without the script too (the answer is then a redirect back to the page).

Routes (the JSON API is documented in docs/guide.rst, *Dashboard*)::

    GET  /                                 queues (paginated) and the backlog/throughput chart
    GET  /queues/{queue}                   one queue's counts and its dead letters (paginated)
    GET  /workers, /schedules, /task       the worker registry, the schedules, a task by id
    GET  /api/about                        transport (password masked), version, read-only
    GET  /api/queues?page=&per_page=&prefix=
    GET  /api/queues/{queue}
    GET  /api/queues/{queue}/dead?after=&limit=
    GET  /api/history[?queue=]
    GET  /api/workers
    GET  /api/schedules
    GET  /api/tasks/{id}[?queue=]
    POST /api/queues/{queue}/dead/replay   ids (form fields or JSON list); none: all
    POST /api/queues/{queue}/dead/purge    ids as above; confirm=yes is required

Every POST passes :class:`~asynctask.dashboard.security.Guard` first (credentials, CSRF token,
read-only).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

import asynctask
from asynctask.config import Settings
from asynctask.cron import ScheduleEntry
from asynctask.errors import AsyncTaskError, TransportUnavailableError
from asynctask.transports.base import Transport

from . import api
from .sampler import Sampler
from .security import CSRF_FIELD, Credentials, Guard, new_csrf_token

__all__ = ["DashboardState", "create_app"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


class DashboardState:
    """What every request of one dashboard reads: the transport, the settings, the sampler."""

    def __init__(  # noqa: PLR0913 - each by keyword
        self,
        transport: Transport,
        *,
        transport_url: str,
        settings: Settings | None,
        schedule_entries: list[ScheduleEntry] | None,
        read_only: bool,
        csrf_token: str,
        sampler: Sampler | None,
    ) -> None:
        self.transport = transport
        self.shown_url = api.shown_url(transport_url)
        self.settings = settings
        self.schedule_entries = schedule_entries
        self.read_only = read_only
        self.csrf_token = csrf_token
        self.sampler = sampler


def create_app(  # noqa: PLR0913 - the options by keyword
    transport: Transport,
    *,
    transport_url: str | None = None,
    settings: Settings | None = None,
    schedule_entries: list[ScheduleEntry] | None = None,
    credentials: Credentials | None = None,
    read_only: bool = False,
    sample_s: float | None = 5.0,
    csrf_token: str | None = None,
) -> Starlette:
    """The dashboard application on ``transport`` (not closed by it).

    ``settings`` and ``schedule_entries`` feed the Schedules page (None: "the configuration does
    not load"); ``sample_s``: the sampler's period (None: no sampler, no history).
    """
    sampler = Sampler(transport, api.list_supervisors_or_none, sample_s) if sample_s else None
    state = DashboardState(
        transport,
        transport_url=transport_url if transport_url is not None else transport.url,
        settings=settings,
        schedule_entries=schedule_entries,
        read_only=read_only,
        csrf_token=csrf_token or new_csrf_token(),
        sampler=sampler,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sampler is not None:
            sampler.start()
        try:
            yield
        finally:
            if sampler is not None:
                await run_in_threadpool(sampler.stop)

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    pages = Pages(state, templates)
    routes = [
        Route("/", pages.page("queues.html", "queues")),
        Route("/queues/{queue}", pages.page("dead.html", "dead")),
        Route("/workers", pages.page("workers.html", "workers")),
        Route("/schedules", pages.page("schedules.html", "schedules")),
        Route("/task", pages.page("task.html", "task")),
        Route("/api/about", _json(lambda r: _about(state))),
        Route("/api/queues", _json(lambda r: api.queues_page(transport, *_args(r, "page", "per_page", "prefix")))),
        Route("/api/queues/{queue}", _json(lambda r: api.queue_stats(transport, r.path_params["queue"]))),
        Route(
            "/api/queues/{queue}/dead",
            _json(lambda r: api.dead_letters(transport, r.path_params["queue"], *_args(r, "after", "limit"))),
        ),
        Route("/api/history", _json(lambda r: _history(state, r))),
        Route("/api/workers", _json(lambda r: api.workers(transport))),
        Route("/api/schedules", _json(lambda r: api.schedules(settings, schedule_entries, transport))),
        Route(
            "/api/tasks/{task_id}",
            _json(lambda r: api.find_task(transport, r.path_params["task_id"], *_args(r, "queue"))),
        ),
        Route("/api/queues/{queue}/dead/replay", Action(state, "replay"), methods=["POST"]),
        Route("/api/queues/{queue}/dead/purge", Action(state, "purge"), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(Guard, csrf_token=state.csrf_token, credentials=credentials, read_only=read_only)]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.dashboard = state
    return app


def _args(request: Request, *names: str) -> list[str]:
    return [request.query_params.get(name, "") for name in names]


def _about(state: DashboardState) -> dict[str, Any]:
    return {
        "transport": state.shown_url,
        "version": asynctask.__version__,
        "read_only": state.read_only,
        "sample_s": state.sampler.interval_s if state.sampler else None,
    }


def _history(state: DashboardState, request: Request) -> dict[str, Any]:
    if state.sampler is None:
        return {"interval_s": None, "history_s": 0, "queue": None, "samples": []}
    return state.sampler.history(request.query_params.get("queue") or None)


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, api.ApiError):
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)
    if isinstance(exc, TransportUnavailableError):
        return JSONResponse({"error": exc.message}, status_code=503)
    assert isinstance(exc, AsyncTaskError)
    return JSONResponse({"error": exc.message}, status_code=502)


def _json(build: Callable[[Request], Any]) -> Callable[[Request], Response]:
    """A synchronous endpoint (Starlette runs it in its thread pool) answering ``build``'s value."""

    def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(build(request), headers={"cache-control": "no-store"})
        except (api.ApiError, AsyncTaskError) as exc:
            return _error(exc)

    return endpoint


class Pages:
    """The HTML pages: shells the page's script fills from the API."""

    def __init__(self, state: DashboardState, templates: Jinja2Templates) -> None:
        self.state = state
        self.templates = templates

    def page(self, template: str, name: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            context = {
                "page": name,
                "transport": self.state.shown_url,
                "read_only": self.state.read_only,
                "csrf_token": self.state.csrf_token,
                "csrf_field": CSRF_FIELD,
                "version": asynctask.__version__,
                "queue": request.path_params.get("queue", ""),
                "query": dict(request.query_params),
            }
            return self.templates.TemplateResponse(request, template, context, headers={"cache-control": "no-store"})

        return endpoint


class Action:
    """``POST /api/queues/{queue}/dead/replay|purge``: from the page's script (JSON answer) or
    from a plain HTML form (a redirect back to the queue's page)."""

    def __init__(self, state: DashboardState, what: str) -> None:
        self.state = state
        self.what = what

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        queue = request.path_params["queue"]
        try:
            ids, confirmed, from_form = _action_body(await request.body(), request.headers.get("content-type", ""))
            count = await run_in_threadpool(self.run, queue, ids, confirmed)
        except (api.ApiError, AsyncTaskError) as exc:
            return _error(exc)
        if from_form and "application/json" not in request.headers.get("accept", ""):
            return RedirectResponse(f"/queues/{quote(queue)}", status_code=303)
        key = "replayed" if self.what == "replay" else "purged"
        return JSONResponse({"queue": queue, key: count})

    def run(self, queue: str, ids: list[str] | None, confirmed: bool) -> int:
        transport = self.state.transport
        api.known_queue(transport, queue)
        if self.what == "replay":
            count = transport.replay_dead(queue, ids)
        else:
            if not confirmed:
                raise api.ApiError(400, "purge needs confirm=yes: dead letters purged are gone for good")
            count = transport.purge_dead(queue, ids)
        logger.info(
            "dashboard: %s %d dead tasks of %s (%s)",
            "replayed" if self.what == "replay" else "purged",
            count,
            queue,
            "all" if ids is None else f"{len(ids)} named",
        )
        return count


def _action_body(body: bytes, content_type: str) -> tuple[list[str] | None, bool, bool]:
    """``(ids, confirmed, from a form)`` from a form or a JSON body; ids None (no ``id`` field, no
    ``ids`` key): all; an empty JSON list: none."""
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise api.ApiError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise api.ApiError(400, 'the body is a JSON object: {"ids": [...], "confirm": "yes"}')
        ids = data.get("ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            raise api.ApiError(400, "ids: a list of task id strings is allowed")
        return ids, data.get("confirm") in ("yes", True), False
    fields = parse_qs(body.decode("utf-8", "replace"))
    return fields.get("id") or None, fields.get("confirm", [""])[0] == "yes", True
