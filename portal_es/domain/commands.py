"""Commands: what a client asks for, in the imperative. Each maps to one Balancer method."""

from __future__ import annotations

from dataclasses import dataclass

from portal_es.domain.models import CertBundle, ErrorPages, Route, RouteKey, Server, Service, Vip
from portal_es.domain.state import BalancerState


class Command:
    """Base of every command (for typing and dispatch)."""


@dataclass(frozen=True)
class AddService(Command):
    service: Service


@dataclass(frozen=True)
class UpdateService(Command):
    service_id: str
    service: Service


@dataclass(frozen=True)
class ReplaceServices(Command):
    services: tuple[Service, ...]


@dataclass(frozen=True)
class RemoveService(Command):
    service_id: str


@dataclass(frozen=True)
class AddServer(Command):
    service_id: str
    server: Server


@dataclass(frozen=True)
class ReplaceServers(Command):
    service_id: str
    servers: tuple[Server, ...]


@dataclass(frozen=True)
class RemoveServer(Command):
    service_id: str
    server_id: str


@dataclass(frozen=True)
class AddRoute(Command):
    route: Route


@dataclass(frozen=True)
class ReplaceRoutes(Command):
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class RemoveRoute(Command):
    key: RouteKey


@dataclass(frozen=True)
class AddCert(Command):
    cert: CertBundle


@dataclass(frozen=True)
class ReplaceCerts(Command):
    certs: tuple[CertBundle, ...]


@dataclass(frozen=True)
class RemoveCert(Command):
    cert_id: str  # the certificate's fingerprint


@dataclass(frozen=True)
class AddVip(Command):
    vip: Vip


@dataclass(frozen=True)
class ReplaceVips(Command):
    vips: tuple[Vip, ...]


@dataclass(frozen=True)
class RemoveVip(Command):
    address: str


@dataclass(frozen=True)
class SetErrorPages(Command):
    pages: ErrorPages


@dataclass(frozen=True)
class RestoreState(Command):
    """Put the configuration back as it was at a point of the log (folded by the caller)."""

    target: BalancerState
    position: int  # the point: log position, Balancer version, time of its last event
    version: int
    time: str
    reason: str
