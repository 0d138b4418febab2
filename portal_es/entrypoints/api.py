"""The REST API (Portal-compatible): parse, validate, dispatch; nothing else.

Writes become commands executed by the application (in one worker thread: the eventsourcing
library is synchronous); reads are answered from the folded read model. Every answer is
compact JSON; every error is {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from portal_es.adapters.interfaces import NoSuchInterface, first_address
from portal_es.adapters.proxy import ProxyServer
from portal_es.domain import commands as c
from portal_es.domain.balancer import Meta
from portal_es.domain.errors import DomainError, ServerNotFound, ServiceNotFound
from portal_es.domain.models import (
    CertBundle,
    ErrorPages,
    Route,
    Server,
    Service,
    Vip,
    is_interface_name,
)
from portal_es.domain.pem import fingerprint
from portal_es.domain.state import BalancerState
from portal_es.entrypoints import openapi
from portal_es.entrypoints.json_input import BAD_JSON, BadInput, decode, folded, to_model, to_models
from portal_es.service.app import PortalApplication
from portal_es.service.coordinator import ChangeCoordinator, ChangePending
from projections.audit import EventFilter, list_events
from projections.node import NodeProjector
from projections.state_view import StateView

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 1024 * 1024  # 1 MiB: a whole configuration of thousands of services fits
MAX_QUERY_INT = 2**63 - 1  # log positions are signed 64-bit integers in every store
SUCCESS = {"msg": "Success"}

APP_KEY = web.AppKey("portal", PortalApplication)
COORDINATOR_KEY = web.AppKey("coordinator", ChangeCoordinator)
VIEW_KEY = web.AppKey("view", StateView)
TOKEN_KEY = web.AppKey("token", str)
EXECUTOR_KEY = web.AppKey("executor", ThreadPoolExecutor)


def _json(data: Any, status: int = 200, version: int | None = None) -> web.Response:
    response = web.json_response(data, status=status, dumps=_dumps)
    if version is not None:
        response.headers["ETag"] = f'"{version}"'
    return response


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


# --- plumbing: auth, errors, the worker thread ------------------------------------------


def _actor(token: str) -> str:
    if not token:
        return "anonymous"
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer, error or not, carries the request id its events are recorded under."""
    given = request.headers.get("X-Request-Id", "")
    request["request_id"] = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    response = await _answer_or_error(request, handler)
    response.headers["X-Request-Id"] = request["request_id"]
    return response


_REQUEST_ID = re.compile(r"[\w.:/-]{1,128}")


async def _answer_or_error(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DomainError as e:
        response = _error(e.status, str(e))
        if isinstance(e, ChangePending) and e.location:  # 202: where to follow the change
            response.headers["Location"] = e.location
        return response
    except BadInput as e:
        return _error(400, str(e))
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"Request body too large (limit {MAX_BODY} bytes)")
    except web.HTTPException as e:
        if e.status >= 400:
            response = _error(e.status, e.reason)
            if "Allow" in e.headers:  # a 405 must name the allowed methods (RFC 9110)
                response.headers["Allow"] = e.headers["Allow"]
            return response
        raise
    except Exception:
        log.exception("internal error in %s %s (request %s)", request.method, request.path,
                      request.get("request_id"))
        return _error(500, f"Internal error (request id {request.get('request_id')})")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app[TOKEN_KEY]
    if expected and request.path != "/openapi.json":
        given = request.headers.get("X-AUTH-TOKEN") or request.query.get("X-AUTH-TOKEN", "")
        if not given and request.content_type == "application/x-www-form-urlencoded":
            given = str((await request.post()).get("X-AUTH-TOKEN", ""))
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return _error(401, "Unauthorized")
    return await handler(request)


async def _in_worker(request: web.Request, fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(request.app[EXECUTOR_KEY], fn)


_IF_MATCH = re.compile(r'\*|(?:W/)?"([0-9]+)"')


def _expected_version(request: web.Request) -> int | None:
    value = request.headers.get("If-Match")
    if value is None:
        return None
    match = _IF_MATCH.fullmatch(value.strip())
    if match is None:
        raise BadInput(f"If-Match must be a version this API sent as ETag, not {value!r}")
    return None if match.group(1) is None else int(match.group(1))


async def _execute(request: web.Request, command: c.Command) -> tuple[Any, int]:
    meta = Meta(actor=_actor(request.app[TOKEN_KEY]), request_id=request["request_id"])
    expected = _expected_version(request)
    key = request.headers.get("Idempotency-Key") or None  # a retry with it appends nothing
    outcome = await request.app[COORDINATOR_KEY].submit(command, meta, expected, key)
    for event in outcome.events:
        log.info("%s v%d by %s (request %s)", type(event).__name__, event.originator_version,
                 meta.actor, meta.request_id)
    return outcome.result, outcome.version


async def _read(request: web.Request, query: Callable[[BalancerState], T]) -> tuple[T, int]:
    view = request.app[VIEW_KEY]
    return await _in_worker(request, lambda: view.read(query))


async def _body(request: web.Request) -> Any:
    return decode(await request.read())


# --- services ---------------------------------------------------------------------------


async def _with_interface_address(value: Any) -> Any:
    """A service given by interface takes that interface's address as its host."""
    value = folded(value)
    name = value.get("interface") if isinstance(value, dict) else None
    if isinstance(name, str) and is_interface_name(name):  # a bad name: the model says why
        try:
            value["host"] = await first_address(name)
        except NoSuchInterface as e:
            raise BadInput(str(e)) from None
    return value


async def _service(request: web.Request) -> Service:
    return to_model(Service, await _with_interface_address(await _body(request)))


async def get_services(request: web.Request) -> web.Response:
    data, version = await _read(request, lambda s: [v.portal_json() for v in s.services.values()])
    return _json(data, version=version)


async def post_service(request: web.Request) -> web.Response:
    service, version = await _execute(request, c.AddService(await _service(request)))
    return _json(service.portal_json(), version=version)


async def put_services(request: web.Request) -> web.Response:
    body = await _body(request)
    items = [await _with_interface_address(v) for v in body] if isinstance(body, list) else body
    services, version = await _execute(request, c.ReplaceServices(to_models(Service, items)))
    return _json([s.portal_json() for s in services], version=version)


def _get_service(state: BalancerState, service_id: str) -> Service:
    try:
        return state.services[service_id]
    except KeyError:
        raise ServiceNotFound from None


async def get_service(request: web.Request) -> web.Response:
    service_id = request.match_info["service_id"]
    data, version = await _read(request, lambda s: _get_service(s, service_id).portal_json())
    return _json(data, version=version)


async def put_service(request: web.Request) -> web.Response:
    command = c.UpdateService(request.match_info["service_id"], await _service(request))
    service, version = await _execute(request, command)
    return _json(service.portal_json(), version=version)


async def delete_service(request: web.Request) -> web.Response:
    _, version = await _execute(request, c.RemoveService(request.match_info["service_id"]))
    return _json(SUCCESS, version=version)


# --- servers ----------------------------------------------------------------------------


async def get_servers(request: web.Request) -> web.Response:
    service_id = request.match_info["service_id"]
    data, version = await _read(
        request, lambda s: [v.portal_json() for v in _get_service(s, service_id).servers]
    )
    return _json(data, version=version)


async def post_server(request: web.Request) -> web.Response:
    server = to_model(Server, await _body(request))
    result, version = await _execute(
        request, c.AddServer(request.match_info["service_id"], server)
    )
    return _json(result.portal_json(), version=version)


async def put_servers(request: web.Request) -> web.Response:
    servers = to_models(Server, await _body(request))
    result, version = await _execute(
        request, c.ReplaceServers(request.match_info["service_id"], servers)
    )
    return _json([s.portal_json() for s in result], version=version)


def _get_server(state: BalancerState, service_id: str, server_id: str) -> Server:
    server = _get_service(state, service_id).server(server_id)
    if server is None:
        raise ServerNotFound
    return server


async def get_server(request: web.Request) -> web.Response:
    service_id, server_id = request.match_info["service_id"], request.match_info["server_id"]
    data, version = await _read(
        request, lambda s: _get_server(s, service_id, server_id).portal_json()
    )
    return _json(data, version=version)


async def delete_server(request: web.Request) -> web.Response:
    command = c.RemoveServer(request.match_info["service_id"], request.match_info["server_id"])
    _, version = await _execute(request, command)
    return _json(SUCCESS, version=version)


# --- routes -----------------------------------------------------------------------------


async def get_routes(request: web.Request) -> web.Response:
    data, version = await _read(request, lambda s: [r.portal_json() for r in s.routes.values()])
    return _json(data, version=version)


async def post_route(request: web.Request) -> web.Response:
    route, version = await _execute(request, c.AddRoute(to_model(Route, await _body(request))))
    return _json(route.portal_json(), version=version)


async def put_routes(request: web.Request) -> web.Response:
    routes = to_models(Route, await _body(request))
    result, version = await _execute(request, c.ReplaceRoutes(routes))
    return _json([r.portal_json() for r in result], version=version)


async def delete_route(request: web.Request) -> web.Response:
    raw = await request.read()
    keys = ("subdomain", "domain", "path")
    fields = {k: request.query[k] for k in keys if k in request.query}
    if raw.strip():
        if fields:  # which one was meant? refuse rather than guess
            raise BadInput("give the route in the body or in the query, not both")
        route = to_model(Route, decode(raw))
    else:
        route = to_model(Route, fields)
    _, version = await _execute(request, c.RemoveRoute(route.key))
    return _json(SUCCESS, version=version)


# --- certs ------------------------------------------------------------------------------


async def get_certs(request: web.Request) -> web.Response:
    data, version = await _read(request, lambda s: [b.portal_json() for b in s.certs.values()])
    return _json(data, version=version)


async def post_cert(request: web.Request) -> web.Response:
    cert = to_model(CertBundle, await _body(request))
    result, version = await _execute(request, c.AddCert(cert))
    return _json(result.portal_json(), version=version)


async def put_certs(request: web.Request) -> web.Response:
    certs = to_models(CertBundle, await _body(request))
    result, version = await _execute(request, c.ReplaceCerts(certs))
    return _json([b.portal_json() for b in result], version=version)


async def delete_cert(request: web.Request) -> web.Response:
    body = folded(await _body(request))
    if not isinstance(body, dict) or not isinstance(body.get("cert"), str):
        raise BadInput(BAD_JSON)
    try:
        cert_id = fingerprint(body["cert"])
    except ValueError as e:
        raise BadInput(str(e)) from None
    _, version = await _execute(request, c.RemoveCert(cert_id))
    return _json(SUCCESS, version=version)


# --- vips -------------------------------------------------------------------------------


async def get_vips(request: web.Request) -> web.Response:
    data, version = await _read(request, lambda s: [v.portal_json() for v in s.vips.values()])
    return _json(data, version=version)


async def post_vip(request: web.Request) -> web.Response:
    vip, version = await _execute(request, c.AddVip(to_model(Vip, await _body(request))))
    return _json(vip.portal_json(), version=version)


async def put_vips(request: web.Request) -> web.Response:
    result, version = await _execute(
        request, c.ReplaceVips(to_models(Vip, await _body(request)))
    )
    return _json([v.portal_json() for v in result], version=version)


async def delete_vip(request: web.Request) -> web.Response:
    vip = to_model(Vip, await _body(request))
    _, version = await _execute(request, c.RemoveVip(vip.address))
    return _json(SUCCESS, version=version)


# --- error pages ------------------------------------------------------------------------


async def get_errors(request: web.Request) -> web.Response:
    data, version = await _read(request, lambda s: s.error_pages.portal_json())
    return _json(data, version=version)


async def put_errors(request: web.Request) -> web.Response:
    pages = to_model(ErrorPages, await _body(request))
    result, version = await _execute(request, c.SetErrorPages(pages))
    return _json(result.portal_json(), version=version)


# --- beyond Portal: the audit log, the API document ---------------------------------------


def _int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    # ASCII only: str.isdigit() also takes "²", which int() refuses; positions are 64-bit
    # (and int() refuses strings of thousands of digits: check the length first).
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_QUERY_INT))
    if not digits or int(value) > MAX_QUERY_INT:
        raise BadInput(f"query parameter '{name}' must be an integer from 0 to {MAX_QUERY_INT}")
    return int(value)


def _time_param(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"query parameter '{name}' must be an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def get_events(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 100) or 0
    if not 1 <= limit <= 1000:
        raise BadInput("query parameter 'limit' must be 1 to 1000")
    event_filter = EventFilter(
        since=_int_param(request, "since"),
        until=_int_param(request, "until"),
        since_time=_time_param(request, "since_time"),
        until_time=_time_param(request, "until_time"),
        entity=request.query.get("entity") or None,
        type=request.query.get("type") or None,
        limit=limit,
    )
    app = request.app[APP_KEY]
    events, next_position = await _in_worker(request, lambda: list_events(app, event_filter))
    return _json({"events": events, "next": next_position})


async def get_status(request: web.Request) -> web.Response:
    """This node: which balancer, how far it applied the log, and how the kernel differs."""
    node = request.app[COORDINATOR_KEY].node
    head = await _in_worker(request, request.app[APP_KEY].recorder.max_notification_id) or 0
    if node is None:
        return _json({"node": None, "head": head})
    drift = await node.run_in_worker(node.drift)
    return _json({
        "node": node.node_name,
        "balancer": node.l4.name,
        "head": head,
        "applied": node.last.position,
        "version": node.last.version,
        "lag": head - node.last.position,
        "errors": node.last.errors,
        "drift": drift,
    })


PROXY_KEY = web.AppKey("proxy", ProxyServer)


async def get_routes_health(request: web.Request) -> web.Response:
    """Node-local health of every route target (health checks are not events)."""
    return _json(request.app[PROXY_KEY].health())


async def get_metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[PROXY_KEY].metrics)
    return web.Response(body=body, content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


def add_proxy_routes(web_app: web.Application, proxy: ProxyServer) -> None:
    web_app[PROXY_KEY] = proxy
    web_app.router.add_get("/routes/health", get_routes_health)
    web_app.router.add_get("/metrics", get_metrics)


async def get_openapi(request: web.Request) -> web.Response:
    return _json(openapi.document())


def create_app(
    app: PortalApplication, view: StateView, token: str, node: NodeProjector | None = None,
    apply_timeout: float = 10.0,
    coordinator: Callable[[ThreadPoolExecutor], ChangeCoordinator] | None = None,
) -> web.Application:
    web_app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_BODY
    )
    web_app[APP_KEY] = app
    web_app[VIEW_KEY] = view
    web_app[TOKEN_KEY] = token
    # One worker thread: store access stays sequential, so the read model needs no copies.
    executor = ThreadPoolExecutor(1, thread_name_prefix="store")
    web_app[EXECUTOR_KEY] = executor
    web_app[COORDINATOR_KEY] = (  # cluster mode brings its own (the saga across nodes)
        coordinator(executor) if coordinator else ChangeCoordinator(app, executor, node,
                                                                    apply_timeout)
    )

    async def shutdown(_: web.Application) -> None:
        web_app[EXECUTOR_KEY].shutdown(wait=True)

    web_app.on_cleanup.append(shutdown)
    r = web_app.router
    r.add_get("/services", get_services)
    r.add_post("/services", post_service)
    r.add_put("/services", put_services)
    r.add_get("/services/{service_id}", get_service)
    r.add_put("/services/{service_id}", put_service)
    r.add_delete("/services/{service_id}", delete_service)
    r.add_get("/services/{service_id}/servers", get_servers)
    r.add_post("/services/{service_id}/servers", post_server)
    r.add_put("/services/{service_id}/servers", put_servers)
    r.add_get("/services/{service_id}/servers/{server_id}", get_server)
    r.add_delete("/services/{service_id}/servers/{server_id}", delete_server)
    for path, get, post, put, delete in (
        ("/routes", get_routes, post_route, put_routes, delete_route),
        ("/certs", get_certs, post_cert, put_certs, delete_cert),
        ("/vips", get_vips, post_vip, put_vips, delete_vip),
    ):
        r.add_get(path, get)
        r.add_post(path, post)
        r.add_put(path, put)
        r.add_delete(path, delete)
    r.add_get("/errors", get_errors)
    r.add_put("/errors", put_errors)
    r.add_get("/events", get_events)
    r.add_get("/status", get_status)
    r.add_get("/openapi.json", get_openapi)
    from portal_es.entrypoints import history_api  # it builds on this module's helpers

    history_api.add_routes(web_app)
    return web_app
