"""A node's projector: follows the log and keeps this node's kernel, vips and proxy equal to it.

Level-triggered: each step folds what is new in the log, computes the whole desired state and
lets each data plane apply the difference from what is live. Replaying any prefix of the log
twice leaves the same kernel state. The node records how far it applied (tracking table), and
answers "did position P apply here?" to whoever waits for a change (the API, the coordinator).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Notification, Tracking, TrackingRecorder

from portal_es.adapters.kernel import DataplaneError, Drift, L4Dataplane
from portal_es.adapters.vips import VipManager
from portal_es.domain.balancer import BALANCER_ID
from portal_es.domain.events import BalancerEvent, VipAdded, VipRemoved
from portal_es.domain.models import CertBundle, ErrorPages, Route
from portal_es.domain.state import BalancerState
from projections import history
from projections.drain import DrainSchedule
from projections.l4 import VirtualService, desired_services

log = logging.getLogger(__name__)

PAGE = 1000
RECORD_IDLE_EVERY = 1.0  # seconds between positions recorded for plane-less applies
PROXY_APPLY_TIMEOUT = 10.0  # seconds the proxy's workers get to take an update
T = TypeVar("T")
# Told of every apply: (what it gave, what the one before gave). The cluster acks with it.
AppliedListener = Callable[["Applied", "Applied"], None]


class ProxyPlane(Protocol):
    """The HTTP/HTTPS proxy as the projector sees it: swap its whole configuration."""

    def update(
        self, routes: Sequence[Route], certs: Sequence[CertBundle], pages: ErrorPages
    ) -> None: ...


@dataclass
class Applied:
    """The outcome of applying the log up to `position` on this node."""

    position: int
    version: int
    errors: dict[str, str] = field(default_factory=dict)  # what failed -> why
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


class NodeProjector:
    def __init__(
        self,
        app: Application[UUID],
        node_name: str,
        l4: L4Dataplane,
        vips: VipManager | None = None,
        proxy: ProxyPlane | None = None,
        drain_timeout: timedelta = timedelta(seconds=30),
        reconcile_interval: float = 30.0,
    ) -> None:
        self.app = app
        self.node_name = node_name[:32]  # the tracking table's key length
        self.l4 = l4
        self.vips = vips
        self.proxy = proxy
        self.reconcile_interval = reconcile_interval
        self.state = BalancerState()
        self.drains = DrainSchedule(drain_timeout)
        self.position = 0  # last notification folded
        self.version = 0
        self.last: Applied = Applied(0, 0)
        self._full_sync_needed = True
        self._tracking: TrackingRecorder = app.factory.tracking_recorder()  # type: ignore[attr-defined]
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"node-{node_name}")
        self._wake = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[Applied]]] = []
        self._task: asyncio.Task[None] | None = None
        self.listeners: list[AppliedListener] = []
        self.duplicates = 0  # deliveries skipped: already folded (at-least-once delivery)
        self._dirty = False  # configuration events folded since the planes last applied
        self._errors: dict[str, str] = {}  # the planes' errors at their last apply
        self._recorded_at = 0.0  # monotonic time of the last position recorded
        # Records (node, position) in one statement, instead of the library's tracking
        # recorder (two transactions); the cluster sets it (PostgreSQL).
        self.record_position: Callable[[str, int], None] | None = None
        self._vips_dirty = True  # vip events folded since the vips were last synced
        self._vip_errors: dict[str, str] = {}

    # --- the synchronous core (one worker thread) ---------------------------------------

    def catch_up(self) -> None:
        """Fold everything the log has after our position."""
        if self.position == 0:
            self._resume()
        while True:
            notifications = self.app.recorder.select_notifications(
                start=self.position, limit=PAGE, inclusive_of_start=False
            )
            for n in notifications:
                self._fold(n)
            if len(notifications) < PAGE:
                return

    def _resume(self) -> None:
        """Start from the newest snapshot rather than position 0 (history.resume), and
        observe again the events recent enough that a server they removed still drains."""
        folded = history.resume(self.app)
        self.state, self.version, self.position = folded.state, folded.version, folded.position
        self.drains = DrainSchedule(self.drains.timeout)
        if folded.position:
            since = datetime.now(UTC) - self.drains.timeout
            for event in history.recent_events(self.app, folded.position, since):
                self.drains.observe(event)
        self._dirty = self._full_sync_needed = self._vips_dirty = True

    def _fold(self, n: Notification) -> None:
        if n.originator_id == BALANCER_ID and n.originator_version != self.version + 1:
            # Versions jump: the log was archived past us. Its snapshot has what we missed.
            log.warning("node %s: version %d follows %d: resuming from a snapshot",
                        self.node_name, n.originator_version, self.version)
            self._resume()
            if n.id <= self.position:
                return
            if n.originator_version != self.version + 1:
                raise history.LogGap(f"no snapshot covers version {n.originator_version}")
        event = self.app.mapper.to_domain_event(n)
        if event.originator_id == BALANCER_ID:
            if isinstance(event, BalancerEvent):
                event.evolve(self.state)
                self.drains.observe(event)
                self._dirty = True
                if isinstance(event, (VipAdded, VipRemoved)) or getattr(
                        event, "collection", None) == "vips":
                    self._vips_dirty = True
            self.version = event.originator_version
        self.position = n.id

    def feed(self, after: int, notifications: Sequence[Notification]) -> bool:
        """Fold a batch the broker delivered: the events after position `after`, in log
        order. False when it held nothing new (a duplicate: skipped by position). When it
        starts beyond our position, something was missed: the store has it."""
        if not notifications or notifications[-1].id <= self.position:
            self.duplicates += 1
            return False
        if after > self.position:
            self.catch_up()
            return True
        for n in notifications:
            if n.id > self.position:
                self._fold(n)
        return True

    def desired_l4(self) -> dict[str, VirtualService]:
        return desired_services(self.state, self.drains.active(datetime.now(UTC)))

    def apply(self, full: bool = False, planes: bool = True) -> Applied:
        """Make every data plane match the folded state; never raises for a plane's failure.
        planes=False: nothing the planes hold changed (only saga or membership events were
        folded): record the position, keep the last errors."""
        started = time.perf_counter()
        if not (planes or full):
            # Nothing a plane holds changed: the position is recorded at most once a second
            # (a restart re-folds these few events; the kernel is diffed anyway).
            if time.monotonic() - self._recorded_at >= RECORD_IDLE_EVERY:
                self._record_position()
            return Applied(self.position, self.version, dict(self._errors),
                           time.perf_counter() - started)
        self._dirty = False
        errors: dict[str, str] = {}
        try:
            report = self.l4.sync(self.desired_l4(), full=full or self._full_sync_needed)
            self._full_sync_needed = False
            if not report.empty:
                log.info("%s: +%d ~%d -%d services in %.1f ms", self.l4.name, len(report.added),
                         len(report.changed), len(report.removed), report.seconds * 1000)
        except DataplaneError as e:
            self._full_sync_needed = True  # the next sync re-reads the kernel
            errors[self.l4.name] = str(e)
        if self.vips is not None:
            # Netlink and the owned-vips file cost milliseconds: only when vips changed, a
            # sync failed last time, or a full reconcile is due (it repairs drift).
            if full or self._vips_dirty or self._vip_errors:
                self._vips_dirty = False
                self._vip_errors = self.vips.sync(list(self.state.vips.values())).errors
            errors.update(self._vip_errors)
        for what, why in errors.items():
            log.error("applying position %d failed: %s: %s", self.position, what, why)
        self._errors = dict(errors)
        self._record_position()
        return Applied(self.position, self.version, errors, time.perf_counter() - started)

    def _record_position(self) -> None:
        self._recorded_at = time.monotonic()
        if not self.position:
            return
        if self.record_position is not None:
            self.record_position(self.node_name, self.position)
            return
        # IntegrityError: already recorded this far (nothing new was folded).
        with contextlib.suppress(IntegrityError):
            self._tracking.insert_tracking(Tracking(self.node_name, self.position))

    def step(self, full: bool = False) -> Applied:
        self.catch_up()
        return self.apply(full)

    def drift(self) -> dict[str, Any]:
        self.catch_up()
        l4: Drift = self.l4.drift(self.desired_l4())
        vips = self.vips.drift(list(self.state.vips.values())) if self.vips else []
        return {
            "services": {"missing": l4.missing, "unexpected": l4.unexpected,
                         "different": l4.different},
            "vips": {"missing": vips},
        }

    def recorded_position(self) -> int:
        return self._tracking.max_tracking_id(self.node_name) or 0

    # --- the asynchronous loop ------------------------------------------------------------

    async def run_in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the projector's thread (the one that owns its state and data planes)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _update_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.update(list(self.state.routes.values()), list(self.state.certs.values()),
                              self.state.error_pages)

    def _step_delivered(
        self, after: int, notifications: Sequence[Notification]
    ) -> tuple[Applied, bool] | None:
        if not self.feed(after, notifications):
            return None
        changed = self._dirty
        return self.apply(planes=changed), changed

    async def deliver(self, after: int, notifications: Sequence[Notification]) -> Applied | None:
        """Apply a batch from the broker (None: a duplicate, skipped)."""
        stepped = await self.run_in_worker(self._step_delivered, after, notifications)
        if stepped is None:
            return None
        applied, changed = stepped
        return await self._finish(applied, proxy=changed)

    async def run_once(self, full: bool = False) -> Applied:
        applied = await self.run_in_worker(self.step, full)
        return await self._finish(applied)

    async def _finish(self, applied: Applied, proxy: bool = True) -> Applied:
        if proxy:
            self._update_proxy()
            applied = await self._proxy_applied(applied)
        previous = self.last
        if applied.position < previous.position:
            return applied  # a later apply finished first (the proxy wait): this one is old
        self.last = applied
        for listener in self.listeners:
            try:
                listener(applied, previous)
            except Exception:
                log.exception("node %s: a listener failed", self.node_name)
        still_waiting = []
        for position, future in self._waiters:
            if position <= applied.position:
                if not future.done():
                    future.set_result(applied)
            else:
                still_waiting.append((position, future))
        self._waiters = still_waiting
        return applied

    async def _proxy_applied(self, applied: Applied) -> Applied:
        """Wait until the proxy's workers serve the update (a proxy with worker processes
        swaps asynchronously): "applied" includes the proxy before anyone is told so."""
        wait = getattr(self.proxy, "wait_applied", None)
        if wait is None:
            return applied
        try:
            await wait(PROXY_APPLY_TIMEOUT)
        except Exception as e:  # a worker refused it, or did not answer in time
            log.error("applying position %d failed: proxy: %s", applied.position, e)
            return replace(applied, errors={**applied.errors, "proxy": f"{e}"})
        return applied

    def _sleep_for(self) -> float:
        deadline = self.drains.next_deadline()
        if deadline is None:
            return self.reconcile_interval
        until = (deadline - datetime.now(UTC)).total_seconds()
        return max(0.05, min(self.reconcile_interval, until))

    async def _loop(self) -> None:
        next_full = time.monotonic() + self.reconcile_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sleep_for())
            self._wake.clear()
            full = time.monotonic() >= next_full  # a periodic full reconcile repairs drift
            if full:
                next_full = time.monotonic() + self.reconcile_interval
            try:
                await self.run_once(full)
            except Exception:  # the store may be briefly unreachable: retry on the next wake
                log.exception("node %s: projector step failed", self.node_name)
                await asyncio.sleep(1)
                self._wake.set()

    async def start(self) -> Applied:
        """Catch up with the whole log and reconcile fully, then follow it."""
        applied = await self.run_once(full=True)
        self._task = asyncio.create_task(self._loop(), name=f"projector-{self.node_name}")
        return applied

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def wake(self) -> None:
        self._wake.set()

    async def applied(self, position: int, timeout: float) -> Applied | None:
        """Wait until this node has applied the log up to `position` (None on timeout)."""
        if self.last.position >= position:
            return self.last
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        self.wake()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
