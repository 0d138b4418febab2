"""Cluster mode wiring: the broker, the relay, membership and heartbeats, the saga.

One place that connects the node's projector to the cluster:
- log batches from the broker -> the projector (in order, duplicates skipped by position);
- every apply -> an ack on the broker (and straight into this node's own view);
- heartbeats out every heartbeat-interval, and at once to a node heard for the first time;
- on every (re)connection to the broker: catch up from the store first, then consume;
- NodeJoined/NodeRejoined at start, NodeLeft at a clean stop (in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import TrackingRecorder

from portal_es.adapters.broker import ACK, HEARTBEAT, Broker, BrokerUnavailable, Envelope
from portal_es.adapters.broker import notifications_from as log_batch
from portal_es.adapters.pglocks import AdvisoryLock, conninfo
from portal_es.adapters.tracking import PositionRecorder
from portal_es.config import Settings
from portal_es.domain.membership import Member, member_id
from portal_es.service.app import PortalApplication
from portal_es.service.relay import Relay
from portal_es.service.saga import ClusterCoordinator
from projections.changes import ChangesView
from projections.cluster import ClusterView, MemberRecord
from projections.node import Applied, NodeProjector

log = logging.getLogger(__name__)

MEMBERSHIP_REFRESH = 5  # heartbeats between re-reads of the members from the log


class ClusterRuntime:
    def __init__(
        self, settings: Settings, app: PortalApplication, node: NodeProjector, db_url: str
    ) -> None:
        self.settings = settings
        self.app = app
        self.node = node
        self.name = node.node_name
        self.incarnation = uuid.uuid4().hex[:12]
        dsn = conninfo(db_url)
        self.view = ClusterView(app, self.name, settings.node_timeout)
        self.changes = ChangesView(app)
        self.broker = Broker(
            settings.cluster_connection, settings.cluster_name, self.name,
            settings.cluster_token, on_log=self._on_log, on_control=self._on_control,
            on_connected=self._on_connected,
        )
        self.relay = Relay(dsn, settings.cluster_name, self.broker)
        self.change_lock = AdvisoryLock(dsn, settings.cluster_name, "change")
        self._tracking: TrackingRecorder = app.factory.tracking_recorder()  # type: ignore[attr-defined]
        self._coordinator: ClusterCoordinator | None = None
        self._ack: dict[str, Any] | None = None  # the newest ack, not yet published
        self._ack_ready = asyncio.Event()
        self._was_ok = True  # was this node fine before the position it last applied?
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        node.listeners.append(self._on_applied)
        self.positions = PositionRecorder(dsn)
        node.record_position = self.positions.record

    def coordinator(self, executor: ThreadPoolExecutor) -> ClusterCoordinator:
        self._coordinator = ClusterCoordinator(
            self.app, executor, self.node, self.view, self.changes, self.change_lock,
            self.settings.apply_timeout, self.settings.change_timeout,
        )
        return self._coordinator

    async def stop_changes(self) -> None:
        """First thing at shutdown, while the store's worker thread still runs."""
        if self._coordinator is not None:
            await self._coordinator.close()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._join)
        self.view.merge(await asyncio.to_thread(self.view.read_members))
        self._tasks = [
            asyncio.create_task(self.broker.run(), name="broker"),
            asyncio.create_task(self.relay.run(), name="relay"),
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self._acks(), name="acks"),
        ]
        log.info("node %s (incarnation %s) joined cluster %s", self.name, self.incarnation,
                 self.settings.cluster_name)

    async def stop(self) -> None:
        # Goodbye first: the others stop waiting for this node now, not at node-timeout.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._publish(HEARTBEAT, {**self._heartbeat(),
                                                             "leaving": True}), 2)
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.change_lock.close()
        self.positions.close()
        with contextlib.suppress(Exception):  # a clean stop says so in the log
            await asyncio.to_thread(self._leave)
        log.info("node %s left cluster %s", self.name, self.settings.cluster_name)

    def _join(self) -> None:
        balancer = self.node.l4.name
        try:
            member: Member = self.app.repository.get(member_id(self.name))
            member.rejoin(self.incarnation, balancer)
        except AggregateNotFoundError:  # the first start of this node name
            member = Member(name=self.name, incarnation=self.incarnation, balancer=balancer)
        self.app.save(member)

    def _leave(self) -> None:
        member: Member = self.app.repository.get(member_id(self.name))
        if member.leave(self.incarnation):
            self.app.save(member)

    # --- from the broker --------------------------------------------------------------------

    async def _on_connected(self) -> None:
        # The log queue is bound again: what the store has now, plus what the queue gets
        # from here on, is the whole log. Catch up from the store, then consume.
        applied = await self.node.run_once()
        log.info("node %s caught up from the store to position %d", self.name, applied.position)
        self._spawn(self._heartbeat_once())

    async def _on_log(self, envelope: Envelope) -> None:
        after, notifications = log_batch(envelope.data)
        await self.node.deliver(after, notifications)

    def _on_control(self, envelope: Envelope) -> None:
        if envelope.node == self.name:
            return  # our own heartbeats and acks come back through our own binding
        if self.view.observe(envelope.kind, envelope.node, envelope.data):
            log.info("node %s is alive", envelope.node)
            self._spawn(self._heartbeat_once())  # so that it hears of us now, not later

    # --- to the broker ------------------------------------------------------------------------

    def _on_applied(self, applied: Applied, previous: Applied) -> None:
        # `was_ok` belongs to the position: a second apply of the same position (a reconcile,
        # a wake) must not turn "this change broke me" into "I was already broken".
        if applied.position > previous.position:
            self._was_ok = previous.ok
        self.view.record_local(applied.position, applied.version, applied.errors, self._was_ok)
        self._ack = {"incarnation": self.incarnation, "position": applied.position,
                     "version": applied.version, "errors": applied.errors,
                     "was_ok": self._was_ok}
        self._ack_ready.set()

    async def _acks(self) -> None:
        """One sender, so acks leave in the order of the applies; when several pile up
        (a slow broker), only the newest goes: it covers the ones before."""
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            if self._ack is not None:
                await self._publish(ACK, self._ack)

    def _heartbeat(self) -> dict[str, Any]:
        last = self.node.last
        return {"incarnation": self.incarnation, "position": last.position,
                "version": last.version, "errors": last.errors, "balancer": self.node.l4.name,
                "relay": self.relay.active}

    async def _heartbeat_once(self) -> None:
        await self._publish(HEARTBEAT, self._heartbeat())

    async def _heartbeats(self) -> None:
        beats = 0
        while True:
            await self._heartbeat_once()
            beats += 1
            try:
                # The changes' view is kept warm here, off any change's path: the saga
                # reads it, under the cluster lock, when it looks for orphaned changes.
                await asyncio.to_thread(self.changes.catch_up)
                if beats % MEMBERSHIP_REFRESH == 0:
                    self.view.merge(await asyncio.to_thread(self.view.read_members))
            except Exception as e:
                log.warning("reading the log: %s", e)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _publish(self, kind: str, data: dict[str, Any]) -> None:
        with contextlib.suppress(BrokerUnavailable):  # the next heartbeat or ack will do
            await self.broker.publish(kind, data)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- for the API ----------------------------------------------------------------------

    def read_positions(self) -> tuple[list[MemberRecord], int, dict[str, int]]:
        """The store's side of GET /cluster/nodes (a worker thread): new membership events,
        the head of the log, each node's recorded position."""
        records = self.view.read_members()
        names = {*list(self.view.nodes), *(r.name for r in records)}
        tracked = {name: self._tracking.max_tracking_id(name) or 0 for name in names}
        return records, self.app.recorder.max_notification_id() or 0, tracked

    def nodes(self, records: list[MemberRecord], head: int,
              tracked: dict[str, int]) -> list[dict[str, Any]]:
        """GET /cluster/nodes (the event loop, which owns the view)."""
        self.view.merge(records)
        me = self.view.nodes[self.name]
        me.relay, me.balancer = self.relay.active, self.node.l4.name
        rows = self.view.rows(head, tracked)
        for row in rows:  # what only this node knows of itself
            if row["self"]:
                row["duplicates_skipped"] = self.node.duplicates
                row["forged_dropped"] = self.broker.dropped
                row["relay_position"] = self.relay.position if self.relay.active else None
        return rows
