"""A change: one client write as a saga across the cluster's nodes (pure: no I/O).

    requested -> each node: applied | failed -> committed | compensated | timed out

The Change is saved in the same transaction as the Balancer events it requests, so the log
never holds configuration events without the change that asked for them (nor the reverse).
Per-node results are recorded with the decision, in one save: the log tells who was waited
for, who applied, who failed and why, and what was decided. A decision is final: a change is
decided once (a second decision is refused, whoever attempts it).
"""

from __future__ import annotations

import enum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from portal_es.domain.errors import DomainError

CHANGES = uuid5(NAMESPACE_URL, "portal-es:changes")


class ChangeState(enum.StrEnum):
    requested = "requested"
    committed = "committed"
    compensated = "compensated"
    timed_out = "timed_out"


def change_id_for_key(actor: str, key: str) -> str:
    """The change an Idempotency-Key names. Scoped by the client (actor), so two clients
    that happen to pick the same key do not see each other's results."""
    return str(uuid5(CHANGES, f"{actor}\n{key}"))


class ChangeAlreadyDecided(DomainError):
    status = 409

    def __init__(self, change_id: str, state: str) -> None:
        super().__init__(f"Change {change_id} was already decided: {state}")


class Change(Aggregate):
    @staticmethod
    def create_id(change_id: str) -> UUID:
        return UUID(change_id)

    @event("ChangeRequested")
    def __init__(
        self, change_id: str, origin: str, command: str, actor: str, request_id: str,
        idempotency_key: str, config_version: int, targets: list[str],
    ) -> None:
        self.change_id = change_id
        self.origin = origin  # the node that took the request and decides the change
        self.command = command
        self.actor = actor
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self.config_version = config_version  # the Balancer's version once the change is in
        self.targets = list(targets)  # the live nodes waited for
        self.state = ChangeState.requested
        self.applied: dict[str, dict[str, Any]] = {}  # node -> {position, errors}
        self.failed: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []  # went silent while waited for: not waited for
        self.waiting: list[str] = []  # still silent-but-alive at the time-out
        self.result: Any = None  # kept for idempotent retries (only when a key was sent)
        self.message = ""  # what the API answered when the change was not committed
        self.status = 0

    def check_open(self) -> None:
        if self.state != ChangeState.requested:
            raise ChangeAlreadyDecided(self.change_id, self.state)

    # --- per-node results (recorded together with the decision) ----------------------------

    def record(self, node: str, position: int, errors: dict[str, str], failed: bool) -> None:
        """A node's acknowledgement: applied up to `position`; `failed` when this change made
        it fail (a node already failing before the change applied it, with its old errors)."""
        self.check_open()
        if failed:
            self._node_failed(node, position, errors)
        else:
            self._node_applied(node, position, errors)

    @event("NodeApplied")
    def _node_applied(self, node: str, position: int, errors: dict[str, str]) -> None:
        self.applied[node] = {"position": position, "errors": dict(errors)}

    @event("NodeFailed")
    def _node_failed(self, node: str, position: int, errors: dict[str, str]) -> None:
        self.failed[node] = {"position": position, "errors": dict(errors)}

    # --- decisions ------------------------------------------------------------------------

    def commit(self, result: Any, skipped: list[str]) -> None:
        self.check_open()
        self._committed(result, sorted(skipped))

    @event("ChangeCommitted")
    def _committed(self, result: Any, skipped: list[str]) -> None:
        self.state = ChangeState.committed
        self.result = result
        self.skipped = list(skipped)
        self.status = 200

    def compensate(self, message: str, status: int, skipped: list[str]) -> None:
        """Undone: the inverse events are saved with this event (same transaction)."""
        self.check_open()
        if not self.failed:
            raise ValueError("a change is compensated only when a node failed it")
        self._compensated(message, status, sorted(skipped))

    @event("ChangeCompensated")
    def _compensated(self, message: str, status: int, skipped: list[str]) -> None:
        self.state = ChangeState.compensated
        self.message = message
        self.status = status
        self.skipped = list(skipped)

    def time_out(self, waiting: list[str], reason: str, result: Any) -> None:
        """Not decided in time: the change is kept (the log is the truth; the nodes named
        converge on it when they catch up) and says whom it was still waiting for."""
        self.check_open()
        self._timed_out(sorted(waiting), reason, result)

    @event("ChangeTimedOut")
    def _timed_out(self, waiting: list[str], reason: str, result: Any) -> None:
        self.state = ChangeState.timed_out
        self.waiting = list(waiting)
        self.message = reason
        self.result = result
        self.status = 202

    def summary(self) -> dict[str, Any]:
        """The change as the API shows it."""
        return {
            "id": self.change_id,
            "state": str(self.state),
            "command": self.command,
            "origin": self.origin,
            "actor": self.actor,
            "request_id": self.request_id,
            "idempotency_key": self.idempotency_key,
            "version": self.config_version,
            "requested": self.created_on.isoformat(),
            "decided": None if self.state == ChangeState.requested
            else self.modified_on.isoformat(),
            "targets": self.targets,
            "applied": self.applied,
            "failed": self.failed,
            "skipped": self.skipped,
            "waiting": self.waiting,
            "message": self.message,
        }
