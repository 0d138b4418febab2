"""Domain events: every accepted change to the load balancer, in the past tense.

Each event knows how to evolve the folded state (`evolve`, pure, runs again on every replay)
and what undoes it (`inverse`): compensation is data, new events, never a side channel.
Added/Removed events carry the position of the object in its list, so that an inverse puts
it back exactly where it was and GET output after a rollback equals GET output before.

Schema evolution: events written by every earlier version must keep loading (the log is the
backup; tests/history/fixtures/log-v1.jsonl is a log recorded by version 1). Topics
(module:ClassName) are stored with every event: a class that moves or is renamed keeps its old
topic through eventsourcing.utils.register_topic. A class whose fields change gets
`class_version = N + 1` and a static `upcast_vN_vN+1(state: dict) -> None` that turns the
stored fields of version N into those of N + 1 (the library runs them in order on load).
"""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import AggregateEvent

from portal_es.domain.models import CertBundle, ErrorPages, Route, Server, Service, Vip
from portal_es.domain.state import BalancerState, insert_at, reorder, replace_at

Inverse = tuple[type["BalancerEvent"], dict[str, Any]]


class BalancerEvent(AggregateEvent):
    """Base of every configuration event: who made the change and in which request."""

    actor: str
    request_id: str

    def apply(self, aggregate: Any) -> None:
        self.evolve(aggregate.state)

    def evolve(self, state: BalancerState) -> None:
        """Apply this event to the folded state."""

    def inverse(self) -> Inverse:
        """The event (class, fields) that undoes this one."""
        raise NotImplementedError

    def payload(self) -> dict[str, Any]:
        """The event's own fields, for the audit log."""
        skip = {"originator_id", "originator_version", "timestamp", "actor", "request_id"}
        return {k: v for k, v in vars(self).items() if k not in skip}


def _service(state: BalancerState, service_id: str) -> Service:
    return state.services[service_id]


def _with_servers(service: Service, servers: dict[str, Server]) -> Service:
    return service.model_copy(update={"servers": tuple(servers.values())})


# --- services -----------------------------------------------------------------------------


class ServiceAdded(BalancerEvent):
    service: Service
    position: int

    def evolve(self, state: BalancerState) -> None:
        insert_at(state.services, self.service.id, self.service, self.position)

    def inverse(self) -> Inverse:
        return ServiceRemoved, {"previous": self.service, "position": self.position}


class ServiceUpdated(BalancerEvent):
    """A service replaced in place; its id may change (PUT /services/{id})."""

    service: Service
    previous: Service

    def evolve(self, state: BalancerState) -> None:
        replace_at(state.services, self.previous.id, self.service.id, self.service)

    def inverse(self) -> Inverse:
        return ServiceUpdated, {"service": self.previous, "previous": self.service}


class ServiceRemoved(BalancerEvent):
    previous: Service
    position: int

    def evolve(self, state: BalancerState) -> None:
        del state.services[self.previous.id]

    def inverse(self) -> Inverse:
        return ServiceAdded, {"service": self.previous, "position": self.position}


# --- servers ------------------------------------------------------------------------------


class ServerAdded(BalancerEvent):
    service_id: str
    server: Server
    position: int

    def evolve(self, state: BalancerState) -> None:
        service = _service(state, self.service_id)
        servers = {s.id: s for s in service.servers}
        insert_at(servers, self.server.id, self.server, self.position)
        state.services[self.service_id] = _with_servers(service, servers)

    def inverse(self) -> Inverse:
        return ServerRemoved, {
            "service_id": self.service_id, "previous": self.server, "position": self.position
        }


class ServerUpdated(BalancerEvent):
    service_id: str
    server: Server
    previous: Server

    def evolve(self, state: BalancerState) -> None:
        service = _service(state, self.service_id)
        servers = {s.id: s for s in service.servers}
        replace_at(servers, self.previous.id, self.server.id, self.server)
        state.services[self.service_id] = _with_servers(service, servers)

    def inverse(self) -> Inverse:
        return ServerUpdated, {
            "service_id": self.service_id, "server": self.previous, "previous": self.server
        }


class ServerRemoved(BalancerEvent):
    service_id: str
    previous: Server
    position: int

    def evolve(self, state: BalancerState) -> None:
        service = _service(state, self.service_id)
        servers = {s.id: s for s in service.servers if s.id != self.previous.id}
        state.services[self.service_id] = _with_servers(service, servers)

    def inverse(self) -> Inverse:
        return ServerAdded, {
            "service_id": self.service_id, "server": self.previous, "position": self.position
        }


# --- routes -------------------------------------------------------------------------------


class RouteAdded(BalancerEvent):
    route: Route
    position: int

    def evolve(self, state: BalancerState) -> None:
        insert_at(state.routes, self.route.key, self.route, self.position)

    def inverse(self) -> Inverse:
        return RouteRemoved, {"previous": self.route, "position": self.position}


class RouteUpdated(BalancerEvent):
    route: Route
    previous: Route

    def evolve(self, state: BalancerState) -> None:
        replace_at(state.routes, self.previous.key, self.route.key, self.route)

    def inverse(self) -> Inverse:
        return RouteUpdated, {"route": self.previous, "previous": self.route}


class RouteRemoved(BalancerEvent):
    previous: Route
    position: int

    def evolve(self, state: BalancerState) -> None:
        del state.routes[self.previous.key]

    def inverse(self) -> Inverse:
        return RouteAdded, {"route": self.previous, "position": self.position}


# --- certs --------------------------------------------------------------------------------


class CertAdded(BalancerEvent):
    cert: CertBundle
    position: int

    def evolve(self, state: BalancerState) -> None:
        insert_at(state.certs, self.cert.id, self.cert, self.position)

    def inverse(self) -> Inverse:
        return CertRemoved, {"previous": self.cert, "position": self.position}


class CertRemoved(BalancerEvent):
    previous: CertBundle
    position: int

    def evolve(self, state: BalancerState) -> None:
        del state.certs[self.previous.id]

    def inverse(self) -> Inverse:
        return CertAdded, {"cert": self.previous, "position": self.position}


# --- vips ---------------------------------------------------------------------------------


class VipAdded(BalancerEvent):
    vip: Vip
    position: int

    def evolve(self, state: BalancerState) -> None:
        insert_at(state.vips, self.vip.address, self.vip, self.position)

    def inverse(self) -> Inverse:
        return VipRemoved, {"previous": self.vip, "position": self.position}


class VipRemoved(BalancerEvent):
    previous: Vip
    position: int

    def evolve(self, state: BalancerState) -> None:
        del state.vips[self.previous.address]

    def inverse(self) -> Inverse:
        return VipAdded, {"vip": self.previous, "position": self.position}


# --- order and error pages ----------------------------------------------------------------


class Reordered(BalancerEvent):
    """A PUT kept some objects but in another order. `collection` is one of
    services, routes, certs, vips or servers (then `service_id` names the service)."""

    collection: str
    service_id: str
    order: tuple[Any, ...]
    previous: tuple[Any, ...]

    def evolve(self, state: BalancerState) -> None:
        # Route keys come back from JSON as lists; dict keys must be tuples again.
        order: list[Any] = [tuple(k) if isinstance(k, list) else k for k in self.order]
        if self.collection == "servers":
            service = _service(state, self.service_id)
            servers = {s.id: s for s in service.servers}
            reorder(servers, order)
            state.services[self.service_id] = _with_servers(service, servers)
        else:
            reorder(getattr(state, self.collection), order)

    def inverse(self) -> Inverse:
        return Reordered, {
            "collection": self.collection,
            "service_id": self.service_id,
            "order": self.previous,
            "previous": self.order,
        }


class ErrorPagesSet(BalancerEvent):
    pages: ErrorPages
    previous: ErrorPages

    def evolve(self, state: BalancerState) -> None:
        state.error_pages = self.pages

    def inverse(self) -> Inverse:
        return ErrorPagesSet, {"pages": self.previous, "previous": self.pages}



# --- history ------------------------------------------------------------------------------


class Restored(BalancerEvent):
    """The configuration was put back as it was at an earlier point of the log.

    The events just before this marker (same request) carried the change itself; this one
    names the point restored to and why, so the audit log reads "restored to P by X: reason".
    It changes no state: folding it is a no-op, and the log stays linear.
    """

    restored_position: int
    restored_version: int
    restored_time: str  # ISO 8601 time of the last event at or before that point ("" = none)
    reason: str

    def inverse(self) -> Inverse:
        return RestoreRolledBack, self.payload()


class RestoreRolledBack(BalancerEvent):
    """A restore that a node could not apply was undone (compensation of `Restored`)."""

    restored_position: int
    restored_version: int
    restored_time: str
    reason: str

    def inverse(self) -> Inverse:
        return Restored, self.payload()
