"""The read model: the configuration folded from the log, for GETs.

It follows the log by position (notification id), so it also sees what other writers
(other processes, other nodes) appended. It starts from the newest snapshot, not position 0.
`catch_up` before a read makes reads read-your-writes: a write is in the log before its
answer is sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol

from portal_es.domain.balancer import BALANCER_ID
from portal_es.domain.events import BalancerEvent
from portal_es.domain.state import BalancerState
from projections import history

T = TypeVar("T")
PAGE = 1000


class StateView:
    def __init__(self, app: Application[UUID]) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.state = BalancerState()
        self.position = 0  # last notification id folded
        self.version = 0  # the Balancer's version after that

    def _fold(self, event: DomainEventProtocol[UUID]) -> None:
        if event.originator_id != BALANCER_ID:
            return
        if isinstance(event, BalancerEvent):
            event.evolve(self.state)
        self.version = event.originator_version

    def _resume(self) -> None:
        """Start from the newest readable snapshot, not from position 0."""
        folded = history.resume(self._app)
        self.state, self.version, self.position = folded.state, folded.version, folded.position

    def catch_up(self) -> None:
        if self.position == 0:
            self._resume()
        while True:
            notifications = self._app.recorder.select_notifications(
                start=self.position, limit=PAGE, inclusive_of_start=False
            )
            for notification in notifications:
                if notification.id <= self.position:
                    continue  # already in the snapshot resumed from below
                if (notification.originator_id == BALANCER_ID
                        and notification.originator_version != self.version + 1):
                    self._resume()  # the log was archived past us: its snapshot has it
                    if notification.id <= self.position:
                        continue
                    if notification.originator_version != self.version + 1:
                        raise history.LogGap(
                            f"no snapshot covers version {notification.originator_version}")
                self._fold(self._app.mapper.to_domain_event(notification))
                self.position = notification.id
            if len(notifications) < PAGE:
                return

    def read(self, query: Callable[[BalancerState], T]) -> tuple[T, int]:
        """Answer `query` on up-to-date state; returns (answer, version it reflects)."""
        with self._lock:
            self.catch_up()
            return query(self.state), self.version
