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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder

from portal_es.adapters.kernel import DataplaneError, Drift, L4Dataplane
from portal_es.adapters.vips import VipManager
from portal_es.domain.balancer import BALANCER_ID
from portal_es.domain.events import BalancerEvent
from portal_es.domain.models import CertBundle, ErrorPages, Route
from portal_es.domain.state import BalancerState
from projections.drain import DrainSchedule
from projections.l4 import VirtualService, desired_services

log = logging.getLogger(__name__)

PAGE = 1000
T = TypeVar("T")


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

    # --- the synchronous core (one worker thread) ---------------------------------------

    def catch_up(self) -> None:
        """Fold everything the log has after our position."""
        while True:
            notifications = self.app.recorder.select_notifications(
                start=self.position, limit=PAGE, inclusive_of_start=False
            )
            for n in notifications:
                event = self.app.mapper.to_domain_event(n)
                if event.originator_id == BALANCER_ID:
                    if isinstance(event, BalancerEvent):
                        event.evolve(self.state)
                        self.drains.observe(event)
                    self.version = event.originator_version
                self.position = n.id
            if len(notifications) < PAGE:
                return

    def desired_l4(self) -> dict[str, VirtualService]:
        return desired_services(self.state, self.drains.active(datetime.now(UTC)))

    def apply(self, full: bool = False) -> Applied:
        """Make every data plane match the folded state; never raises for a plane's failure."""
        started = time.perf_counter()
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
            errors.update(self.vips.sync(list(self.state.vips.values())).errors)
        for what, why in errors.items():
            log.error("applying position %d failed: %s: %s", self.position, what, why)
        self._record_position()
        return Applied(self.position, self.version, errors, time.perf_counter() - started)

    def _record_position(self) -> None:
        # IntegrityError: already recorded this far (nothing new was folded).
        if self.position:
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

    async def run_once(self, full: bool = False) -> Applied:
        applied = await self.run_in_worker(self.step, full)
        self._update_proxy()
        self.last = applied
        still_waiting = []
        for position, future in self._waiters:
            if position <= applied.position:
                if not future.done():
                    future.set_result(applied)
            else:
                still_waiting.append((position, future))
        self._waiters = still_waiting
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
