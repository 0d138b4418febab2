"""The nodes of the cluster, as one node sees them: members from the log, liveness from
heartbeats, how far each applied the log from its acknowledgements.

A node is alive while its heartbeats (or acks) keep arriving; silent for longer than
`node_timeout` it is down: changes stop waiting for it, and it catches up from the store
when it is back. The coordinator waits on `changed()` for acks instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.utils import get_topic

from portal_es.domain.membership import Member

PAGE = 1000
MEMBER_TOPICS = [get_topic(c) for c in (Member.NodeJoined, Member.NodeRejoined, Member.NodeLeft)]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Ack:
    """A node applied the log up to `position`; `was_ok`: it had no errors before."""

    position: int
    errors: dict[str, str]
    was_ok: bool

    @property
    def failed(self) -> bool:
        """This apply broke a node that was fine: the change it held is to blame."""
        return bool(self.errors) and self.was_ok


@dataclass(frozen=True)
class MemberRecord:
    name: str
    left: bool  # NodeLeft, else NodeJoined or NodeRejoined
    incarnation: str
    balancer: str
    at: datetime


@dataclass
class NodeInfo:
    name: str
    incarnation: str = ""
    balancer: str = ""
    member: bool = False  # joined in the log
    left: bool = False  # left (a clean stop), and not back since
    left_incarnation: str = ""  # the process (start) that left
    joined: datetime | None = None
    last_seen: float | None = None  # monotonic time of the last heartbeat or ack
    position: int = 0
    version: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    relay: bool = False
    ack: Ack | None = None


class ClusterView:
    def __init__(
        self, app: Application[UUID], node_name: str, node_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self.node_name = node_name
        self.node_timeout = node_timeout
        self._clock = clock
        self.nodes: dict[str, NodeInfo] = {node_name: NodeInfo(node_name)}
        self._position = 0
        self._names: dict[UUID, str] = {}  # member id -> node name (from NodeJoined)
        self._read_lock = threading.Lock()
        self._changed = asyncio.Event()

    # --- membership from the log (a worker thread) ------------------------------------------

    def read_members(self) -> list[MemberRecord]:
        """What the log says of the members since the last read (a worker thread: it reads
        the store; `merge` the result on the event loop, which owns `nodes`)."""
        records: list[MemberRecord] = []
        with self._read_lock:
            head = self._app.recorder.max_notification_id() or 0
            while self._position < head:
                notifications = self._app.recorder.select_notifications(
                    start=self._position, limit=PAGE, stop=head, topics=MEMBER_TOPICS,
                    inclusive_of_start=False)
                for n in notifications:
                    event: Any = self._app.mapper.to_domain_event(n)
                    if isinstance(event, Member.NodeJoined):  # type: ignore[attr-defined]
                        self._names[event.originator_id] = str(event.name)
                    records.append(MemberRecord(
                        self._names.get(event.originator_id, event.originator_id.hex),
                        isinstance(event, Member.NodeLeft),  # type: ignore[attr-defined]
                        str(event.incarnation), str(getattr(event, "balancer", "")),
                        event.timestamp))
                if len(notifications) < PAGE:
                    break
                self._position = notifications[-1].id
            self._position = head
        return records

    def merge(self, records: list[MemberRecord]) -> None:
        for record in records:
            info = self.nodes.setdefault(record.name, NodeInfo(record.name))
            info.member = True
            if record.left:
                info.left, info.left_incarnation = True, record.incarnation
            elif record.incarnation != info.left_incarnation:
                info.left = False
                info.balancer = record.balancer or info.balancer
                info.joined = record.at

    # --- heartbeats and acks (the event loop) -----------------------------------------------

    def observe(self, kind: str, node: str, data: dict[str, Any]) -> bool:
        """A heartbeat or ack from a node. True when the node was not alive before
        (it is new or back): it should hear from us at once, not at our next heartbeat."""
        info = self.nodes.setdefault(node, NodeInfo(node))
        was_alive = self.alive(node)
        incarnation = str(data.get("incarnation", ""))
        if incarnation and incarnation != info.incarnation:
            info.incarnation, info.left, info.ack = incarnation, False, None
        if data.get("leaving"):  # a clean stop: not waited for from now on
            info.left, info.left_incarnation, info.last_seen = True, incarnation, None
            self._pulse()
            return False
        info.last_seen = self._clock()
        position = int(data.get("position", 0))
        if position >= info.position:
            info.position = position
            info.version = int(data.get("version", info.version))
            info.errors = dict(data.get("errors") or {})
        if kind == "heartbeat":
            info.balancer = str(data.get("balancer", info.balancer))
            info.relay = bool(data.get("relay", False))
        elif kind == "ack" and (info.ack is None or position >= info.ack.position):
            info.ack = Ack(position, dict(data.get("errors") or {}), bool(data.get("was_ok")))
        self._pulse()
        return not was_alive

    def record_local(self, position: int, version: int, errors: dict[str, str],
                     was_ok: bool) -> None:
        info = self.nodes[self.node_name]
        info.last_seen = self._clock()
        info.position, info.version, info.errors = position, version, dict(errors)
        info.ack = Ack(position, dict(errors), was_ok)
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> None:
        """Wait until something is heard (or `timeout` seconds)."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    # --- questions --------------------------------------------------------------------------

    def alive(self, node: str) -> bool:
        if node == self.node_name:
            return True
        info = self.nodes.get(node)
        if info is None or info.last_seen is None:
            return False
        if info.left and info.left_incarnation == info.incarnation:
            return False
        return self._clock() - info.last_seen <= self.node_timeout

    def live(self) -> list[str]:
        """The nodes a change waits for: this one and every node heard from lately."""
        return sorted(n for n in self.nodes if self.alive(n))

    def incarnations(self) -> frozenset[tuple[str, str]]:
        """The live nodes and which start of each: changes when one dies or restarts."""
        return frozenset((n, self.nodes[n].incarnation) for n in self.live())

    def ack(self, node: str) -> Ack | None:
        info = self.nodes.get(node)
        return info.ack if info else None

    def health(self, info: NodeInfo) -> str:
        if self.alive(info.name):
            return "failing" if info.errors else "alive"
        return "left" if info.left else "down"

    def rows(self, head: int, tracked: dict[str, int]) -> list[dict[str, Any]]:
        """GET /cluster/nodes: each node, its position, its lag behind the head, its health."""
        now = self._clock()
        out = []
        for name in sorted(self.nodes):
            info = self.nodes[name]
            position = max(info.position, tracked.get(name, 0))
            seen = None if info.last_seen is None else round(now - info.last_seen, 3)
            out.append({
                "node": name,
                "health": self.health(info),
                "position": position,
                "lag": max(0, head - position),
                "last_seen": 0.0 if name == self.node_name else seen,
                "errors": info.errors,
                "balancer": info.balancer,
                "relay": info.relay and self.alive(name),
                "incarnation": info.incarnation,
                "joined": info.joined.isoformat() if info.joined else None,
                "self": name == self.node_name,
            })
        return out
