"""A history that uses every kind of event, the state after each step, and stores to run it
on (the real SQLite file and the machine's PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portal_es.adapters import store
from portal_es.domain import commands as c
from portal_es.domain.balancer import BALANCER_ID, Meta
from portal_es.domain.models import ErrorPages, Route, Server, Service, Vip
from portal_es.service.app import PortalApplication
from tests.unit.certs import BUNDLES

KEY = "Q0lQSEVSS0VZQ0lQSEVSS0VZQ0lQSEVSS0VZQ0lQSEU="  # 32 bytes, base64
META = Meta("tester", "req")


def open_app(url: str, interval: int = 1000) -> PortalApplication:
    env = store.application_env(url, KEY)
    env["SNAPSHOT_INTERVAL"] = str(interval)
    return PortalApplication(env)


def sqlite_url(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    url = store.database_url("", directory)
    store.migrate(url)
    return url


def server(host: int, port: int = 8080, weight: int = 1) -> Server:
    return Server(host=f"10.1.0.{host}", port=port, weight=weight)


def service(n: int, *servers: Server, scheduler: str = "wlc") -> Service:
    return Service(host=f"10.0.0.{n}", port=80, scheduler=scheduler, servers=servers)


def route(domain: str, *targets: str, path: str = "") -> Route:
    return Route(domain=domain, path=path, targets=targets)


STEPS: list[c.Command] = [
    c.AddService(service(1, server(1), server(2))),
    c.AddService(service(2, server(3))),
    c.AddServer(service(2).id, server(4)),
    c.ReplaceServers(service(1).id, (server(2, weight=3), server(5))),
    c.UpdateService(service(2).id, service(2, server(3), server(4), scheduler="rr")),
    c.AddRoute(route("a.test", "http://10.2.0.1:80")),
    c.AddRoute(route("b.test", "http://10.2.0.2:80", path="/api")),
    c.ReplaceRoutes((route("b.test", "http://10.2.0.2:80", path="/api"),
                     route("a.test", "http://10.2.0.9:80"))),
    c.AddCert(BUNDLES[0]),
    c.AddCert(BUNDLES[1]),
    c.RemoveCert(BUNDLES[0].id),
    c.AddVip(Vip(ip="10.3.0.1", interface="eth0", alias="eth0:1")),
    c.ReplaceVips((Vip(ip="10.3.0.2"), Vip(ip="10.3.0.1", interface="eth0", alias="eth0:1"))),
    c.SetErrorPages(ErrorPages(no_routes="none here", no_healthy="all down")),
    c.ReplaceServices((service(2, server(3), server(4), scheduler="rr"), service(3, server(6)))),
    c.RemoveServer(service(3).id, server(6).id),
    c.RemoveRoute(route("b.test", path="/api").key),
    c.RemoveVip("10.3.0.2"),
]


@dataclass
class Recorded:
    """The configuration after a step, and the point of the log it was at."""

    position: int
    version: int
    state: dict[str, Any]


def play(app: PortalApplication, steps: list[c.Command] = STEPS) -> list[Recorded]:
    recorded = []
    for step in steps:
        outcome = app.execute(step, META)
        assert outcome.events, step
        # as the aggregate saw it (the library's repository), not as history folds it
        recorded.append(Recorded(outcome.position, outcome.version,
                                 app.repository.get(BALANCER_ID).state.portal_json()))
    return recorded
