"""Changes as the log tells them (GET /changes, `portal-es changes`), and the open ones.

Folds only the Change events (the store filters by topic), each through the aggregate's own
event classes, so a summary here is exactly what loading the aggregate would give. Decided
changes beyond `keep` are forgotten (oldest first); GET /changes/<id> loads any change from
the store itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.utils import get_topic

from portal_es.domain.change import Change, ChangeState

PAGE = 1000
CHANGE_TOPICS = [
    get_topic(getattr(Change, name)) for name in (
        "ChangeRequested", "NodeApplied", "NodeFailed", "ChangeCommitted", "ChangeCompensated",
        "ChangeTimedOut",
    )
]


class ChangesView:
    def __init__(self, app: Application[UUID], keep: int = 10_000) -> None:
        self._app = app
        self._keep = keep
        self._lock = threading.Lock()
        self._position = 0
        self._changes: OrderedDict[UUID, Change] = OrderedDict()  # oldest request first

    def catch_up(self) -> None:
        with self._lock:
            head = self._app.recorder.max_notification_id() or 0
            while self._position < head:
                notifications = self._app.recorder.select_notifications(
                    start=self._position, limit=PAGE, stop=head, topics=CHANGE_TOPICS,
                    inclusive_of_start=False)
                for n in notifications:
                    event: Any = self._app.mapper.to_domain_event(n)
                    key = UUID(str(n.originator_id))
                    self._changes[key] = event.mutate(self._changes.get(key))
                if len(notifications) < PAGE:
                    break
                self._position = notifications[-1].id
            self._position = head
            self._forget()

    def _forget(self) -> None:
        excess = len(self._changes) - self._keep
        for key in [k for k, c in self._changes.items() if c.state != ChangeState.requested]:
            if excess <= 0:
                break
            del self._changes[key]
            excess -= 1

    def open_changes(self) -> list[Change]:
        """Requested and not decided (after catch_up)."""
        with self._lock:
            return [c for c in self._changes.values() if c.state == ChangeState.requested]

    def recent(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest changes first."""
        with self._lock:
            out = []
            for change in reversed(self._changes.values()):
                if state is None or change.state == state:
                    out.append(change.summary())
                    if len(out) >= limit:
                        break
            return out
