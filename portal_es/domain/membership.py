"""Cluster membership in the log: a node joins (each start) and leaves (a clean stop).

Liveness is not in the log (heartbeats would flood it): heartbeats over the broker say which
members are alive; the log says who the members are and since when.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

MEMBERS = uuid5(NAMESPACE_URL, "portal-es:members")


def member_id(name: str) -> UUID:
    return uuid5(MEMBERS, name)


class Member(Aggregate):
    @staticmethod
    def create_id(name: str) -> UUID:
        return member_id(name)

    @event("NodeJoined")
    def __init__(self, name: str, incarnation: str, balancer: str) -> None:
        self.name = name
        self.incarnation = incarnation  # one per process start: tells restarts apart
        self.balancer = balancer
        self.present = True

    def rejoin(self, incarnation: str, balancer: str) -> None:
        self._rejoined(incarnation, balancer)

    @event("NodeRejoined")
    def _rejoined(self, incarnation: str, balancer: str) -> None:
        self.incarnation = incarnation
        self.balancer = balancer
        self.present = True

    def leave(self, incarnation: str) -> bool:
        """Leave, unless a newer start of the same node has joined since (then: no-op)."""
        if not self.present or incarnation != self.incarnation:
            return False
        self._left(incarnation)
        return True

    @event("NodeLeft")
    def _left(self, incarnation: str) -> None:
        self.present = False
