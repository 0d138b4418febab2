"""The log's history over the API: the configuration at a point, what changed between two
points, and a restore of a past point (a change like any other, through the coordinator).

A point is a log position (as GET /events shows them) or an ISO 8601 time (the last event at
or before it); `at` left out means now.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from portal_es.entrypoints import api
from portal_es.entrypoints.json_input import BadInput, decode, folded
from portal_es.entrypoints.log_commands import restore_command
from projections import history


def _point(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > 64:
        raise BadInput(f"query parameter '{name}' must be a log position or an ISO 8601 time")
    return value


def _state_at(app: Any, point: str | None) -> history.Folded:
    return history.state_at(app, None if point is None else history.resolve(app, point))


def _answer(folded: history.Folded) -> dict[str, Any]:
    return {"point": folded.point(), "state": folded.state.portal_json()}


async def get_state(request: web.Request) -> web.Response:
    """GET /state?at=POINT: the whole configuration then (now without `at`)."""
    app, at = request.app[api.APP_KEY], _point(request, "at")
    folded_state = await api._in_worker(request, lambda: _state_at(app, at))
    # ETag only for now: an old version sent back as If-Match could only fail (412)
    return api._json(_answer(folded_state), version=folded_state.version if at is None else None)


async def get_state_diff(request: web.Request) -> web.Response:
    """GET /state/diff?from=A&to=B: per object, what was added, removed, changed."""
    app = request.app[api.APP_KEY]
    a, b = _point(request, "from"), _point(request, "to")
    if a is None:
        raise BadInput("query parameter 'from' is required (a log position or an ISO time)")

    def compare() -> dict[str, Any]:
        before, after = _state_at(app, a), _state_at(app, b)
        changes = history.diff(before.state, after.state)
        return {"from": before.point(), "to": after.point(), "changed": history.changed(changes),
                "changes": changes}

    return api._json(await api._in_worker(request, compare))


async def post_restore(request: web.Request) -> web.Response:
    """POST /state/restore {"at": POINT, "reason": "..."}: make the configuration what it was
    at POINT, recorded as the events that do it plus a Restored marker; applied by this node
    (and rolled back if it cannot) like every other write."""
    body = folded(decode(await request.read()))
    at, reason = (body.get("at"), body.get("reason", "")) if isinstance(body, dict) else (0, 0)
    if isinstance(at, int) and not isinstance(at, bool) and at >= 0:
        at = str(at)
    if not isinstance(at, str) or not at.strip() or not isinstance(reason, str):
        raise BadInput('give {"at": <log position or ISO 8601 time>, "reason": "<why>"}')
    app = request.app[api.APP_KEY]
    command, report = await api._in_worker(request, lambda: restore_command(app, at, reason))
    state, version = await api._execute(request, command)
    return api._json({"restored": report, "state": state.portal_json()}, version=version)


def add_routes(web_app: web.Application) -> None:
    web_app.router.add_get("/state", get_state)
    web_app.router.add_get("/state/diff", get_state_diff)
    web_app.router.add_post("/state/restore", post_restore)
