"""The cluster's REST routes (cluster mode only): the nodes, and the changes' sagas.

GET /cluster/nodes       each node: health (alive, failing, down, left), position, lag, ...
GET /changes?state=&limit=   the latest changes, newest first
GET /changes/{id}        one change: its state, who was waited for, who applied or failed
"""

from __future__ import annotations

from aiohttp import web

from portal_es.domain.change import ChangeState
from portal_es.domain.errors import DomainError
from portal_es.entrypoints.api import APP_KEY, _in_worker, _int_param, _json
from portal_es.entrypoints.cluster import ClusterRuntime
from portal_es.entrypoints.json_input import BadInput
from portal_es.service import changes

CLUSTER_KEY = web.AppKey("cluster", ClusterRuntime)


class ChangeNotFound(DomainError):
    status = 404

    def __init__(self) -> None:
        super().__init__("No Change Found")


async def get_nodes(request: web.Request) -> web.Response:
    runtime = request.app[CLUSTER_KEY]
    records, head, tracked = await _in_worker(request, runtime.read_positions)
    return _json(runtime.nodes(records, head, tracked))


async def get_changes(request: web.Request) -> web.Response:
    state = request.query.get("state") or None
    if state is not None and state not in set(ChangeState):
        raise BadInput(f"query parameter 'state' must be one of {', '.join(ChangeState)}")
    limit = _int_param(request, "limit", 100) or 0
    if not 1 <= limit <= 1000:
        raise BadInput("query parameter 'limit' must be 1 to 1000")
    view = request.app[CLUSTER_KEY].changes

    def recent() -> object:
        view.catch_up()
        return view.recent(state, limit)

    return _json(await _in_worker(request, recent))


async def get_change(request: web.Request) -> web.Response:
    change_id = request.match_info["change_id"]
    app = request.app[APP_KEY]

    def load() -> object:
        try:
            change = changes.find(app, change_id)
        except ValueError:  # not a UUID: no such change
            change = None
        if change is None:
            raise ChangeNotFound
        return change.summary()

    return _json(await _in_worker(request, load))


def add_routes(web_app: web.Application, runtime: ClusterRuntime) -> None:
    web_app[CLUSTER_KEY] = runtime
    web_app.router.add_get("/cluster/nodes", get_nodes)
    web_app.router.add_get("/changes", get_changes)
    web_app.router.add_get("/changes/{change_id}", get_change)
