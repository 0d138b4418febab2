"""The audit trail: the log as records a person reads (who changed what, when, from what)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from eventsourcing.application import Application
from eventsourcing.domain import DomainEvent

from portal_es.domain.balancer import BALANCER_ID
from portal_es.domain.events import BalancerEvent
from portal_es.domain.models import CertBundle, Route, Server, Service, Vip

REDACTED = "<redacted>"
PAGE = 500


@dataclass(frozen=True)
class EventFilter:
    since: int | None = None  # position, exclusive
    until: int | None = None  # position, inclusive
    since_time: datetime | None = None
    until_time: datetime | None = None
    entity: str | None = None  # an object's id: service, server, route path, cert, vip
    type: str | None = None  # event type name, e.g. ServiceAdded
    limit: int = 100


def _plain(value: Any) -> Any:
    """Domain values as JSON, private keys redacted (the audit log is not a key store)."""
    if isinstance(value, CertBundle):
        return {"id": value.id, "cert": value.cert, "key": REDACTED}
    if hasattr(value, "portal_json"):
        return value.portal_json()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def subjects(event: DomainEvent) -> set[str]:
    """The ids of the objects an event concerns (for the `entity` filter)."""
    out: set[str] = set()
    for value in vars(event).values():
        if isinstance(value, (Service, Server)):
            out.add(value.id)
        elif isinstance(value, Route):
            out.update(part for part in value.key if part)
        elif isinstance(value, CertBundle):
            out.add(value.id)
        elif isinstance(value, Vip):
            out.update({value.ip, value.address, value.alias} - {""})
        elif isinstance(value, str) and value:
            out.add(value)
    if event.originator_id != BALANCER_ID:  # a change's saga events name their change
        out.add(str(event.originator_id))
    return out


def record(position: int, event: DomainEvent) -> dict[str, Any]:
    out = {
        "position": position,
        "version": event.originator_version,
        "time": event.timestamp.isoformat(),
        "type": type(event).__name__,
        "actor": "system",
        "request_id": "",
        "data": {},
    }
    if isinstance(event, BalancerEvent):
        out["actor"], out["request_id"] = event.actor, event.request_id
        out["data"] = {k: _plain(v) for k, v in event.payload().items()}
    elif event.originator_id != BALANCER_ID:  # a cluster change's saga, a node's membership
        fields = {k: v for k, v in vars(event).items() if k not in _BASE_FIELDS}
        out["actor"] = fields.pop("actor", "system")
        out["request_id"] = fields.pop("request_id", "")
        out["data"] = {k: _plain(v) for k, v in fields.items()}
    return out


_BASE_FIELDS = {"originator_id", "originator_version", "originator_topic", "timestamp"}


def _matches(f: EventFilter, event: DomainEvent) -> bool:
    if f.type and type(event).__name__ != f.type:
        return False
    if f.since_time and event.timestamp <= f.since_time:
        return False
    if f.until_time and event.timestamp > f.until_time:
        return False
    return not (f.entity and f.entity not in subjects(event))


def list_events(app: Application[Any], f: EventFilter) -> tuple[list[dict[str, Any]], int | None]:
    """One page of matching events, and the position to continue from (None at the end)."""
    out: list[dict[str, Any]] = []
    start = f.since or 0
    while True:
        notifications = app.recorder.select_notifications(
            start=start, limit=PAGE, stop=f.until, inclusive_of_start=False
        )
        for n in notifications:
            event = cast(DomainEvent, app.mapper.to_domain_event(n))
            if _matches(f, event):
                out.append(record(n.id, event))
                if len(out) == f.limit:
                    return out, n.id
        if len(notifications) < PAGE:
            return out, None
        start = notifications[-1].id
