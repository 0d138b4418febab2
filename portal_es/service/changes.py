"""The application side of a cluster change: each function is one transaction on the log.

- `request`: the command's Balancer events and the ChangeRequested event, in one save. With an
  Idempotency-Key the change id is fixed by the key: a second request with the same key finds
  the change (or loses the race to save it: the store's unique version refuses the second
  ChangeRequested, and with it the second copy of the events) and appends nothing.
- `commit`, `time_out`: the per-node results and the decision, in one save.
- `compensate`: the results, ChangeCompensated and the inverse Balancer events, in one save.
Synchronous (the eventsourcing library is): run them in the store's worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from portal_es.domain.balancer import Balancer, Meta
from portal_es.domain.change import Change
from portal_es.domain.commands import Command
from portal_es.domain.events import BalancerEvent
from portal_es.service.app import Outcome, PortalApplication


@dataclass(frozen=True)
class ChangeSpec:
    change_id: str
    origin: str
    idempotency_key: str
    targets: list[str]


@dataclass(frozen=True)
class NodeResult:
    node: str
    position: int
    errors: dict[str, str]
    failed: bool


@dataclass(frozen=True)
class Requested:
    """A new change: the command's outcome and the Change saved with it (None when the
    command changed nothing: there is no change to decide)."""

    outcome: Outcome
    change: Change | None


class _Existing(Exception):
    def __init__(self, change: Change) -> None:
        self.change = change


def find(app: PortalApplication, change_id: str) -> Change | None:
    try:
        change: Change = app.repository.get(Change.create_id(change_id))
    except AggregateNotFoundError:
        return None
    return change


def request(
    app: PortalApplication, command: Command, meta: Meta, expected_version: int | None,
    spec: ChangeSpec,
) -> Requested | Change:
    """The new change, or the change the Idempotency-Key already names."""
    created: list[Change] = []

    def attach(balancer: Balancer, events: Sequence[BalancerEvent]) -> list[Aggregate]:
        if not events:  # only the Balancer's creation (a no-op first command): no change
            return []
        if spec.idempotency_key:
            existing = find(app, spec.change_id)
            if existing is not None:
                raise _Existing(existing)
        created[:] = [Change(
            change_id=spec.change_id, origin=spec.origin, command=type(command).__name__,
            actor=meta.actor, request_id=meta.request_id, idempotency_key=spec.idempotency_key,
            config_version=balancer.version, targets=list(spec.targets),
        )]
        return list(created)

    try:
        outcome = app.execute(command, meta, expected_version, attach=attach)
    except _Existing as e:
        return e.change
    return Requested(outcome, created[0] if outcome.events else None)


# The decisions take the Change object that `request` saved (the saga holds it: no reload).
# Whoever else decided it meanwhile makes the save fail on the Change's version.


def _with_results(change: Change, results: Sequence[NodeResult]) -> Change:
    for r in results:
        change.record(r.node, r.position, r.errors, r.failed)
    return change


def commit(app: PortalApplication, change: Change, results: Sequence[NodeResult],
           result: Any, skipped: list[str]) -> None:
    _with_results(change, results).commit(result if change.idempotency_key else None, skipped)
    app.save(change)


def time_out(app: PortalApplication, change: Change, results: Sequence[NodeResult],
             waiting: list[str], reason: str, result: Any = None) -> None:
    _with_results(change, results).time_out(
        waiting, reason, result if change.idempotency_key else None)
    app.save(change)


def compensate(
    app: PortalApplication, change: Change, results: Sequence[NodeResult],
    events: Sequence[BalancerEvent], meta: Meta, expected_version: int, message: str,
    status: int, skipped: list[str],
) -> Outcome:
    def attach(balancer: Balancer, inverses: Sequence[BalancerEvent]) -> list[Aggregate]:
        _with_results(change, results).compensate(message, status, skipped)
        return [change]

    return app.compensate(events, meta, expected_version, attach=attach)
