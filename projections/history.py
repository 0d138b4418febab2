"""The configuration at any point of the log: resume from a snapshot, fold to a position,
find the position of a time, compare two points.

A point is a log position (notification id, as GET /events shows) or an ISO 8601 time, which
means the last event at or before it. The state at position P is every Balancer event with a
position <= P folded in order. Folding starts from the newest readable snapshot at or before
P (never from 0 when one exists) and checks that Balancer versions follow each other, so a
log archived past a reader is noticed rather than folded into a wrong state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import Notification

from portal_es.adapters import log_tables
from portal_es.domain.balancer import BALANCER_ID
from portal_es.domain.errors import DomainError
from portal_es.domain.events import BalancerEvent
from portal_es.domain.snapshot import BalancerSnapshot
from portal_es.domain.state import BalancerState
from portal_es.service.snapshots import readable_snapshots

log = logging.getLogger(__name__)

PAGE = 1000


class PointUnavailable(DomainError):
    """A point that is not in the live log (in the future, or archived)."""

    status = 404


class BadPoint(DomainError):
    status = 400


class LogGap(RuntimeError):
    """Balancer versions jump: events this fold needs are not in the live log (archived)."""


@dataclass
class Folded:
    """A state and the point it reflects."""

    state: BalancerState = field(default_factory=BalancerState)
    version: int = 0  # the Balancer's version
    position: int = 0  # the last log position folded
    time: datetime | None = None  # of the last Balancer event folded

    def point(self) -> dict[str, Any]:
        return {"position": self.position, "version": self.version,
                "time": self.time.isoformat() if self.time else None}


Observer = Callable[[BalancerEvent], None]


def _snapshot_state(snapshot: BalancerSnapshot) -> Folded:
    return Folded(snapshot.balancer_state, snapshot.originator_version, snapshot.position,
                  snapshot.event_time)


def snapshots(app: Application[UUID]) -> Iterator[BalancerSnapshot]:
    if app.snapshots is None:
        return iter(())
    return readable_snapshots(app.snapshots, BALANCER_ID)


def resume(app: Application[UUID], at_or_before: int | None = None) -> Folded:
    """Where to start folding: the newest readable snapshot at or before the position, else
    the empty state at 0 (when the log is whole: after an archive there is no going back
    further than its snapshot)."""
    for snapshot in snapshots(app):
        if at_or_before is None or snapshot.position <= at_or_before:
            return _snapshot_state(snapshot)
    base = log_tables.log_base_version(app)
    if base > 0:
        raise PointUnavailable(
            f"the log up to version {base} was archived and no readable snapshot holds that "
            "state: import the archive (portal-es replay --import FILE)"
        )
    return Folded()


def _pages(
    app: Application[UUID], after: int, stop: int | None
) -> Iterator[Sequence[Notification]]:
    while True:
        page = app.recorder.select_notifications(
            start=after, limit=PAGE, stop=stop, inclusive_of_start=False
        )
        if page:
            yield page
            after = page[-1].id
        if len(page) < PAGE:
            return


def fold(
    app: Application[UUID], folded: Folded, stop: int | None = None,
    observe: Observer | None = None,
) -> Folded:
    """Fold the log after `folded.position` (up to `stop`) into it; returns it."""
    for page in _pages(app, folded.position, stop):
        for n in page:
            if n.originator_id == BALANCER_ID:
                if n.originator_version != folded.version + 1:
                    raise LogGap(f"version {n.originator_version} at position {n.id} follows "
                                 f"version {folded.version}")
                event = cast(DomainEvent, app.mapper.to_domain_event(n))
                if isinstance(event, BalancerEvent):
                    event.evolve(folded.state)
                    if observe is not None:
                        observe(event)
                folded.version = n.originator_version
                folded.time = event.timestamp
            folded.position = n.id
    return folded


def head(app: Application[UUID]) -> int:
    return app.recorder.max_notification_id() or 0


def state_at(app: Application[UUID], position: int | None = None) -> Folded:
    """The configuration at `position` (None: now)."""
    last = head(app)
    if position is not None and position > last:
        raise PointUnavailable(f"position {position} is beyond the head of the log ({last})")
    folded = resume(app, position)
    try:
        return fold(app, folded, position)
    except LogGap:
        raise PointUnavailable(f"position {position} was archived") from None


def _event_time(app: Application[UUID], n: Notification) -> datetime:
    event = cast(DomainEvent, app.mapper.to_domain_event(n))
    return event.timestamp


def position_at_time(app: Application[UUID], moment: datetime) -> int:
    """The position of the last event at or before `moment` (0 when none is). A binary search
    over positions: event times follow log order (clocks of several writers may differ by
    a little; the search then lands on one side of the overlap)."""
    lo, hi = 0, head(app)  # every event <= lo is not after moment; every one > hi is
    while lo < hi:
        mid = (lo + hi + 1) // 2
        found = app.recorder.select_notifications(start=mid, limit=1, stop=hi)
        if found and _event_time(app, found[0]) <= moment:
            lo = found[0].id
        else:
            hi = mid - 1
    return lo


def parse_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadPoint(f"'{value}' is neither a log position nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def resolve(app: Application[UUID], point: str) -> int:
    """A point as given by a person (position or ISO time) -> a log position."""
    value = point.strip()
    if value.isascii() and value.isdigit():
        if len(value) > 19:
            raise BadPoint(f"position '{value}' is out of range")
        return int(value)
    return position_at_time(app, parse_time(value))


RECENT_PAGES = 20  # at most 20,000 events back: a restart forgets drains older than that


def recent_events(
    app: Application[UUID], before: int, since: datetime
) -> list[BalancerEvent]:
    """Balancer events at positions <= `before` whose time is after `since`, oldest first
    (what a projector resuming from a snapshot needs to know which servers still drain)."""
    newest_first: list[BalancerEvent] = []
    stop = before
    for _ in range(RECENT_PAGES):
        if stop <= 0:
            break
        start = max(stop - PAGE, 0)
        page = app.recorder.select_notifications(
            start=start, limit=PAGE + 1, stop=stop, inclusive_of_start=False
        )
        for n in reversed(page):
            if n.originator_id != BALANCER_ID:
                continue
            try:
                event = app.mapper.to_domain_event(n)
            except Exception as e:  # drains are best effort; the state comes from the snapshot
                log.warning("position %d is unreadable, drains before it are not known: %s",
                            n.id, e)
                return newest_first[::-1]
            if isinstance(event, BalancerEvent):
                if event.timestamp <= since:
                    return newest_first[::-1]
                newest_first.append(event)
        stop = start
    return newest_first[::-1]


# --- comparing two points -----------------------------------------------------------------


def _by_key(items: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    return {_label(k): v.portal_json() for k, v in items.items()}


def _label(key: Any) -> str:
    if isinstance(key, tuple):  # a route: subdomain, domain, path
        subdomain, domain, path = key
        host = ".".join(p for p in (subdomain, domain) if p)
        return f"{host}{path}" or "/"
    return str(key)


def diff_collection(old: dict[Any, Any], new: dict[Any, Any]) -> dict[str, Any]:
    """Per object: added, removed, changed (with before and after), and whether the order of
    the kept ones changed."""
    before, after = _by_key(old), _by_key(new)
    return {
        "added": [after[_label(k)] for k in new if k not in old],
        "removed": [before[_label(k)] for k in old if k not in new],
        "changed": [{"id": _label(k), "before": before[_label(k)], "after": after[_label(k)]}
                    for k in new if k in old and old[k] != new[k]],
        "reordered": [k for k in old if k in new] != [k for k in new if k in old],
    }


def diff(a: BalancerState, b: BalancerState) -> dict[str, Any]:
    out: dict[str, Any] = {name: diff_collection(getattr(a, name), getattr(b, name))
                           for name in ("services", "routes", "certs", "vips")}
    out["errors"] = (None if a.error_pages == b.error_pages else
                     {"before": a.error_pages.portal_json(), "after": b.error_pages.portal_json()})
    return out


def changed(d: dict[str, Any]) -> bool:
    return d["errors"] is not None or any(
        c["added"] or c["removed"] or c["changed"] or c["reordered"]
        for name, c in d.items() if name != "errors"
    )
