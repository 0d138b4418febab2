"""A snapshot of the Balancer: the folded state at a version, and the log position it matches.

The library's snapshots record only the aggregate's version; the read model and every node's
projector follow the log by position (notification id), so the position of the snapshot's last
event is stored with it. Snapshots are a cache: one that is missing, unreadable or of another
format is skipped and the log is folded instead (see projections/history.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventsourcing.domain import Snapshot

from portal_es.domain.balancer import BALANCER_ID, Balancer
from portal_es.domain.state import BalancerState

# Bumped when the stored shape changes: snapshots of another format are ignored, not upcast
# (they are rebuilt from the log, which is the one thing that must stay readable).
FORMAT = 1


class BalancerSnapshot(Snapshot):
    """state = {"state": BalancerState, "position": int, "time": str, "format": FORMAT}."""

    @classmethod
    def of(
        cls, state: BalancerState, version: int, position: int, time: datetime | None
    ) -> BalancerSnapshot:
        return cls(
            originator_id=BALANCER_ID,  # type: ignore[call-arg]
            originator_version=version,  # type: ignore[call-arg]
            timestamp=cls.create_timestamp(),  # type: ignore[call-arg]
            topic="portal_es.domain.balancer:Balancer",  # type: ignore[call-arg]
            state={  # type: ignore[call-arg]
                "state": state, "position": position, "format": FORMAT,
                "time": time.isoformat() if time else "",  # of the last event folded
            },
        )

    @property
    def balancer_state(self) -> BalancerState:
        state = self.state["state"]
        if self.state.get("format") != FORMAT or not isinstance(state, BalancerState):
            raise ValueError(f"snapshot v{self.originator_version}: unknown format")
        return state

    @property
    def position(self) -> int:
        return int(self.state["position"])

    @property
    def event_time(self) -> datetime | None:
        time = self.state.get("time")
        return datetime.fromisoformat(time) if time else None

    def mutate(self, _: Any) -> Balancer:
        """The Balancer at this version (used by the library's repository)."""
        balancer = object.__new__(Balancer)
        object.__setattr__(balancer, "__dict__", {
            "state": self.balancer_state,
            "_id": self.originator_id,
            "_version": self.originator_version,
            "_created_on": self.timestamp,  # not kept: nothing in portal-es reads them
            "_modified_on": self.timestamp,
            "_pending_events": [],
        })
        return balancer
