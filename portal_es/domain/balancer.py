"""The Balancer aggregate: the one consistency boundary of a portal-es cluster.

All configuration lives in one aggregate, so that every invariant (a vip's address and alias
are unique, a PUT of a whole list is atomic, If-Match versions) is checked against one
version, and the store's optimistic concurrency on that version serialises writers on any node.
Each command method checks everything first, then triggers its events: a refused command
triggers nothing. A command that changes nothing triggers nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from portal_es.domain import events as ev
from portal_es.domain.errors import (
    ServerNotFound,
    ServiceConflict,
    ServiceNotFound,
    SocketInUse,
    StaleVersion,
    VipInUse,
)
from portal_es.domain.models import CertBundle, ErrorPages, Route, RouteKey, Server, Service, Vip
from portal_es.domain.state import BalancerState

BALANCER_ID: UUID = uuid5(NAMESPACE_URL, "portal-es:balancer")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Socket = tuple[str, int]
_ANY_ADDRESS = ("0.0.0.0", "::")


@dataclass(frozen=True)
class Meta:
    """Who asked for a change, in which request; recorded on every event."""

    actor: str = "anonymous"
    request_id: str = ""


@dataclass
class ListPlan(Generic[K, V]):
    """The smallest set of changes that turns an ordered collection into a new list."""

    removed: list[tuple[int, V]] = field(default_factory=list)  # (old position, value)
    reorder: tuple[list[K], list[K]] | None = None  # (new order, old order) of kept keys
    updated: list[tuple[V, V]] = field(default_factory=list)  # (old, new)
    added: list[tuple[int, V]] = field(default_factory=list)  # (new position, value)


def plan_list(old: dict[K, V], new: Iterable[V], key: Callable[[V], K]) -> ListPlan[K, V]:
    """Diff `old` against `new` (deduplicated by key, the last one winning)."""
    wanted: dict[K, V] = {}
    for item in new:
        wanted[key(item)] = item
    plan: ListPlan[K, V] = ListPlan()
    plan.removed = [(i, v) for i, (k, v) in enumerate(old.items()) if k not in wanted]
    plan.removed.reverse()  # highest position first, so earlier positions stay valid
    kept_old = [k for k in old if k in wanted]
    kept_new = [k for k in wanted if k in old]
    if kept_old != kept_new:
        plan.reorder = (kept_new, kept_old)
    plan.updated = [(old[k], wanted[k]) for k in kept_new if old[k] != wanted[k]]
    plan.added = [(i, v) for i, (k, v) in enumerate(wanted.items()) if k not in old]
    return plan


def check_socket(service: Service, reserved: Iterable[Socket]) -> None:
    """A service may not take the address and port of the API or of a proxy listener."""
    if service.type != "tcp":
        return
    for host, port in reserved:
        if port == service.port and (host == service.host or host in _ANY_ADDRESS):
            raise SocketInUse(service.host, service.port)


def check_vips(vips: Sequence[Vip]) -> None:
    """No two vips share an address or a (non-empty) alias."""
    addresses = [v.address for v in vips]
    aliases = [v.alias for v in vips if v.alias]
    if len(set(addresses)) != len(addresses) or len(set(aliases)) != len(aliases):
        raise VipInUse


def _position(items: dict[K, Any], key: K) -> int:
    return list(items).index(key)


class Balancer(Aggregate):
    def __init__(self) -> None:
        self.state = BalancerState()

    @staticmethod
    def create_id() -> UUID:
        return BALANCER_ID

    def check_version(self, expected: int | None) -> None:
        if expected is not None and expected != self.version:
            raise StaleVersion(expected, self.version)

    def _trigger(self, meta: Meta, event_class: type[ev.BalancerEvent], **fields: Any) -> None:
        self.trigger_event(event_class, actor=meta.actor, request_id=meta.request_id, **fields)

    def _apply_plan(
        self,
        meta: Meta,
        plan: ListPlan[Any, Any],
        collection: str,
        added: type[ev.BalancerEvent],
        updated: type[ev.BalancerEvent] | None,
        removed: type[ev.BalancerEvent],
        field_name: str,
        **scope: Any,
    ) -> None:
        for position, old in plan.removed:
            self._trigger(meta, removed, previous=old, position=position, **scope)
        if plan.reorder:
            order, previous = plan.reorder
            self._trigger(
                meta, ev.Reordered, collection=collection,
                service_id=scope.get("service_id", ""), order=tuple(order),
                previous=tuple(previous),
            )
        for old, new in plan.updated:
            if updated is None:  # no in-place update for this kind: swap it
                position = _position(self._collection(collection, scope), self._key(old))
                self._trigger(meta, removed, previous=old, position=position, **scope)
                self._trigger(meta, added, position=position, **{field_name: new}, **scope)
            else:
                self._trigger(meta, updated, previous=old, **{field_name: new}, **scope)
        for position, new in plan.added:
            self._trigger(meta, added, position=position, **{field_name: new}, **scope)

    def _collection(self, collection: str, scope: dict[str, Any]) -> dict[Any, Any]:
        if collection == "servers":
            return {s.id: s for s in self.state.services[scope["service_id"]].servers}
        items: dict[Any, Any] = getattr(self.state, collection)
        return items

    @staticmethod
    def _key(item: Any) -> Any:
        if isinstance(item, Route):
            return item.key
        if isinstance(item, Vip):
            return item.address
        return item.id

    # --- services -------------------------------------------------------------------------

    def get_service(self, service_id: str) -> Service:
        try:
            return self.state.services[service_id]
        except KeyError:
            raise ServiceNotFound from None

    def add_service(self, meta: Meta, service: Service, reserved: Iterable[Socket]) -> Service:
        existing = self.state.services.get(service.id)
        if existing is not None:
            return existing
        check_socket(service, reserved)
        self._trigger(meta, ev.ServiceAdded, service=service, position=len(self.state.services))
        return service

    def update_service(
        self, meta: Meta, service_id: str, service: Service, reserved: Iterable[Socket]
    ) -> Service:
        previous = self.get_service(service_id)
        if service.id != service_id and service.id in self.state.services:
            raise ServiceConflict(service.id)
        check_socket(service, reserved)
        if service != previous:
            self._trigger(meta, ev.ServiceUpdated, service=service, previous=previous)
        return service

    def replace_services(
        self, meta: Meta, services: Sequence[Service], reserved: Iterable[Socket]
    ) -> list[Service]:
        for service in services:
            check_socket(service, reserved)
        plan = plan_list(self.state.services, services, lambda s: s.id)
        self._apply_plan(
            meta, plan, "services", ev.ServiceAdded, ev.ServiceUpdated, ev.ServiceRemoved,
            "service",
        )
        return list(self.state.services.values())

    def remove_service(self, meta: Meta, service_id: str) -> None:
        previous = self.state.services.get(service_id)
        if previous is not None:
            position = _position(self.state.services, service_id)
            self._trigger(meta, ev.ServiceRemoved, previous=previous, position=position)

    # --- servers --------------------------------------------------------------------------

    def get_server(self, service_id: str, server_id: str) -> Server:
        server = self.get_service(service_id).server(server_id)
        if server is None:
            raise ServerNotFound
        return server

    def add_server(self, meta: Meta, service_id: str, server: Server) -> Server:
        service = self.get_service(service_id)
        existing = service.server(server.id)
        if existing is not None:
            return existing
        self._trigger(
            meta, ev.ServerAdded, service_id=service_id, server=server,
            position=len(service.servers),
        )
        return server

    def replace_servers(
        self, meta: Meta, service_id: str, servers: Sequence[Server]
    ) -> list[Server]:
        service = self.get_service(service_id)
        plan = plan_list({s.id: s for s in service.servers}, servers, lambda s: s.id)
        self._apply_plan(
            meta, plan, "servers", ev.ServerAdded, ev.ServerUpdated, ev.ServerRemoved, "server",
            service_id=service_id,
        )
        return list(self.state.services[service_id].servers)

    def remove_server(self, meta: Meta, service_id: str, server_id: str) -> None:
        service = self.state.services.get(service_id)
        server = service.server(server_id) if service else None
        if service is not None and server is not None:
            position = [s.id for s in service.servers].index(server_id)
            self._trigger(
                meta, ev.ServerRemoved, service_id=service_id, previous=server, position=position
            )

    # --- routes ---------------------------------------------------------------------------

    def add_route(self, meta: Meta, route: Route) -> Route:
        previous = self.state.routes.get(route.key)
        if previous is None:
            self._trigger(meta, ev.RouteAdded, route=route, position=len(self.state.routes))
        elif previous != route:
            self._trigger(meta, ev.RouteUpdated, route=route, previous=previous)
        return route

    def replace_routes(self, meta: Meta, routes: Sequence[Route]) -> list[Route]:
        plan = plan_list(self.state.routes, routes, lambda r: r.key)
        self._apply_plan(
            meta, plan, "routes", ev.RouteAdded, ev.RouteUpdated, ev.RouteRemoved, "route"
        )
        return list(self.state.routes.values())

    def remove_route(self, meta: Meta, key: RouteKey) -> None:
        previous = self.state.routes.get(key)
        if previous is not None:
            position = _position(self.state.routes, key)
            self._trigger(meta, ev.RouteRemoved, previous=previous, position=position)

    # --- certs ----------------------------------------------------------------------------

    def add_cert(self, meta: Meta, cert: CertBundle) -> CertBundle:
        plan = plan_list(self.state.certs, [*self.state.certs.values(), cert], lambda c: c.id)
        self._apply_plan(meta, plan, "certs", ev.CertAdded, None, ev.CertRemoved, "cert")
        return cert

    def replace_certs(self, meta: Meta, certs: Sequence[CertBundle]) -> list[CertBundle]:
        plan = plan_list(self.state.certs, certs, lambda c: c.id)
        self._apply_plan(meta, plan, "certs", ev.CertAdded, None, ev.CertRemoved, "cert")
        return list(self.state.certs.values())

    def remove_cert(self, meta: Meta, cert_id: str) -> None:
        previous = self.state.certs.get(cert_id)
        if previous is not None:
            position = _position(self.state.certs, cert_id)
            self._trigger(meta, ev.CertRemoved, previous=previous, position=position)

    # --- vips -----------------------------------------------------------------------------

    def add_vip(self, meta: Meta, vip: Vip) -> Vip:
        existing = self.state.vips.get(vip.address)
        if existing == vip:
            return vip
        check_vips([*self.state.vips.values(), vip])
        self._trigger(meta, ev.VipAdded, vip=vip, position=len(self.state.vips))
        return vip

    def replace_vips(self, meta: Meta, vips: Sequence[Vip]) -> list[Vip]:
        check_vips(vips)
        plan = plan_list(self.state.vips, vips, lambda v: v.address)
        self._apply_plan(meta, plan, "vips", ev.VipAdded, None, ev.VipRemoved, "vip")
        return list(self.state.vips.values())

    def remove_vip(self, meta: Meta, address: str) -> None:
        previous = self.state.vips.get(address)
        if previous is not None:
            position = _position(self.state.vips, address)
            self._trigger(meta, ev.VipRemoved, previous=previous, position=position)

    # --- error pages ----------------------------------------------------------------------

    def set_error_pages(self, meta: Meta, pages: ErrorPages) -> ErrorPages:
        if pages != self.state.error_pages:
            self._trigger(meta, ev.ErrorPagesSet, pages=pages, previous=self.state.error_pages)
        return pages

    # --- history --------------------------------------------------------------------------

    def restore(
        self, meta: Meta, target: BalancerState, reserved: Iterable[Socket],
        point: tuple[int, int, str], reason: str,
    ) -> BalancerState:
        """Make the configuration equal `target` (the state at an earlier point of the log,
        `point` = (position, version, time)) with the usual events, the smallest set each
        PUT of a whole list would make, then a Restored marker naming the point and why.
        Checked like those PUTs (sockets, vips); a restore that changes nothing triggers
        nothing."""
        before = len(self.pending_events)
        self.replace_services(meta, list(target.services.values()), reserved)
        self.replace_routes(meta, list(target.routes.values()))
        self.replace_certs(meta, list(target.certs.values()))
        self.replace_vips(meta, list(target.vips.values()))
        self.set_error_pages(meta, target.error_pages)
        if len(self.pending_events) > before:
            position, version, time = point
            self._trigger(
                meta, ev.Restored, restored_position=position, restored_version=version,
                restored_time=time, reason=reason,
            )
        s = self.state  # a copy of the collections: the caller may read it after the save
        return BalancerState(dict(s.services), dict(s.routes), dict(s.certs), dict(s.vips),
                             s.error_pages)

    # --- compensation ---------------------------------------------------------------------

    def compensate(self, meta: Meta, applied: Sequence[ev.BalancerEvent]) -> None:
        """Undo `applied` (the events of one change), newest first, with inverse events."""
        for event in reversed(applied):
            event_class, fields = event.inverse()
            self._trigger(meta, event_class, **fields)
