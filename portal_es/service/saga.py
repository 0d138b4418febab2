"""The change saga across the cluster, run by the node that took the request.

1. Take the cluster's change lock (a PostgreSQL advisory lock, first come first served): one
   change is decided at a time in the whole cluster, so a compensation never has to undo
   something another change built on. Any node accepts writes; the lock and the log's
   optimistic concurrency order them. A change left open by a coordinator that died (its
   session, and so its lock, died with it) is closed first, as timed out.
2. Save the command's events with ChangeRequested naming the live nodes (the targets).
3. Wait for every target to acknowledge a position at or after the change's. A target that
   goes silent past node-timeout is no longer waited for (skipped; it catches up later).
4. Decide, and record the decision with each node's result in the log:
   - every target applied it: ChangeCommitted; the API answers as Portal did;
   - a node failed it (it was fine before): ChangeCompensated and the inverse events, in one
     transaction; every live node applies them; the API answers 500 naming the nodes;
   - a live node still had not answered at change-timeout: ChangeTimedOut, the change kept.
The API waits apply-timeout for the decision, then answers 202 with Location: /changes/<id>;
the saga goes on (holding the lock) until it decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from eventsourcing.persistence import IntegrityError

from portal_es.adapters.pglocks import AdvisoryLock, LockTimeout
from portal_es.domain.balancer import Meta
from portal_es.domain.change import Change, ChangeAlreadyDecided, ChangeState, change_id_for_key
from portal_es.domain.commands import Command
from portal_es.domain.errors import DomainError, StaleVersion
from portal_es.service import changes
from portal_es.service.app import ConcurrentWrites, Outcome, PortalApplication
from portal_es.service.changes import ChangeSpec, NodeResult
from portal_es.service.coordinator import ChangeCoordinator, ChangeFailed, ChangePending
from projections.changes import ChangesView
from projections.cluster import ClusterView
from projections.node import NodeProjector

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_STEP = 0.25  # seconds between liveness re-checks while waiting for acks
POLL = 0.1  # seconds between looks at a change another node decides
ADOPT_EVERY = 30.0  # seconds: look for orphaned changes at least this often


class StoreUnavailable(DomainError):
    status = 503


def location(change_id: str) -> str:
    return f"/changes/{change_id}"


class ClusterCoordinator(ChangeCoordinator):
    def __init__(
        self, app: PortalApplication, executor: Any, node: NodeProjector, cluster: ClusterView,
        changes_view: ChangesView, lock: AdvisoryLock, apply_timeout: float,
        change_timeout: float,
    ) -> None:
        super().__init__(app, executor, node, apply_timeout)
        self.local = node
        self.cluster = cluster
        self.changes_view = changes_view
        self.lock = lock
        self.change_timeout = max(change_timeout, apply_timeout)
        self._inflight: dict[str, asyncio.Task[Outcome]] = {}
        self._adopted_at = float("-inf")  # when open changes were last looked for
        self._adopted_with: frozenset[tuple[str, str]] = frozenset()  # the live nodes then

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the store's worker thread (the eventsourcing library is synchronous)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # --- the API's side ---------------------------------------------------------------------

    async def submit(
        self, command: Command, meta: Meta, expected_version: int | None,
        idempotency_key: str | None = None,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.apply_timeout
        key = idempotency_key or ""
        change_id = change_id_for_key(meta.actor, key) if key else str(uuid.uuid4())
        task = self._inflight.get(change_id)  # a retry of a change this node is deciding
        if task is None:
            if key:
                existing = await self._call(changes.find, self.app, change_id)
                if existing is not None:
                    return await self._replay(existing, deadline)
            started = await self._start(command, meta, expected_version, change_id, key,
                                        deadline)
            if isinstance(started, Outcome):
                return started
            task = started
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if task in done:
            return task.result()
        raise ChangePending(
            f"Change {change_id} is saved but not yet applied on every live node after "
            f"{self.apply_timeout:g} s; its state: GET {location(change_id)}",
            location=location(change_id),
        )

    async def _replay(self, change: Change, deadline: float) -> Outcome:
        """The answer the first request got (an Idempotency-Key's retry appends nothing)."""
        loop = asyncio.get_running_loop()
        while change.state == ChangeState.requested and loop.time() < deadline:
            await asyncio.sleep(POLL)  # decided by another node: it will be in the log
            latest = await self._call(changes.find, self.app, change.change_id)
            change = latest or change
        if change.state == ChangeState.committed:
            return Outcome(change.result, change.config_version, [])
        if change.state == ChangeState.compensated:
            raise ChangeFailed(change.message)
        raise ChangePending(
            change.message or f"Change {change.change_id} is not decided yet",
            location=location(change.change_id),
        )

    async def close(self) -> None:
        """Stop deciding (the server is stopping): a change left open here is closed by the
        next coordinator that takes the lock (as timed out: it is in the log already)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- the saga ---------------------------------------------------------------------------

    async def _acquire(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._lock.acquire(), max(0.01, deadline - loop.time()))
        except TimeoutError:
            raise ConcurrentWrites from None
        try:
            await self.lock.acquire(max(0.05, deadline - loop.time()))
        except LockTimeout:
            self._lock.release()
            raise ConcurrentWrites from None
        except (psycopg.Error, OSError) as e:
            self._lock.release()
            raise StoreUnavailable(f"cannot reach the store for the change lock: {e}") from None

    async def _release(self) -> None:
        try:
            await self.lock.release()
        finally:
            self._lock.release()

    async def _start(
        self, command: Command, meta: Meta, expected_version: int | None, change_id: str,
        key: str, deadline: float,
    ) -> Outcome | asyncio.Task[Outcome]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self._acquire(deadline)
        locked = loop.time()
        try:
            members = self.cluster.incarnations()
            if members != self._adopted_with or loop.time() - self._adopted_at > ADOPT_EVERY:
                await self._call(self._adopt_orphans)
                self._adopted_at, self._adopted_with = loop.time(), members
            spec = ChangeSpec(change_id, self.local.node_name, key, self.cluster.live())
            requested = await self._call(changes.request, self.app, command, meta,
                                         expected_version, spec)
        except BaseException:
            await self._release()
            raise
        if isinstance(requested, Change):  # the key's change, saved meanwhile by another node
            await self._release()
            return await self._replay(requested, deadline)
        if requested.change is None:  # nothing to change: no change to decide
            await self._release()
            return requested.outcome
        times = {"lock": locked - began, "request": loop.time() - locked}
        task = asyncio.create_task(
            self._decide(requested.change, requested.outcome, meta, times),
            name=f"change-{change_id}")
        self._inflight[change_id] = task
        task.add_done_callback(lambda t: self._done(change_id, t))
        return task

    def _done(self, change_id: str, task: asyncio.Task[Outcome]) -> None:
        self._inflight.pop(change_id, None)
        if not task.cancelled() and isinstance(task.exception(), Exception):
            error = task.exception()
            if not isinstance(error, DomainError):  # 5xx/202 answers are DomainErrors
                log.error("change %s: %s", change_id, error)

    def _adopt_orphans(self) -> None:
        """Close changes whose coordinator died before deciding them. We hold the lock, so
        no living coordinator is deciding one. Looked for when the live nodes changed (one
        went silent, or restarted) and every ADOPT_EVERY seconds, not before every change:
        an orphan's change is in the log already (the nodes applied it); only its record
        stays open until then."""
        self.changes_view.catch_up()
        for open_change in self.changes_view.open_changes():
            change = changes.find(self.app, open_change.change_id)
            if change is None or change.state != ChangeState.requested:
                continue
            reason = (f"its coordinator '{change.origin}' stopped before deciding it; "
                      "the change is kept")
            log.warning("change %s: %s", change.change_id, reason)
            with contextlib.suppress(ChangeAlreadyDecided, IntegrityError):
                changes.time_out(self.app, change, [], list(change.targets), reason)

    async def _decide(self, change: Change, outcome: Outcome, meta: Meta,
                      times: dict[str, float]) -> Outcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        until = started + self.change_timeout
        change_id = change.change_id
        try:
            self.local.wake()  # this node applies from the store at once, not via the broker
            results, skipped, waiting = await self._collect(outcome.position, change.targets,
                                                            until)
            times["acks"] = loop.time() - started
            if any(r.failed for r in results):
                await self._compensate(change, outcome, meta, results, skipped, until)
            if waiting:
                reason = (f"not confirmed by {', '.join(waiting)} within "
                          f"{self.change_timeout:g} s; the change is kept")
                log.warning("change %s %s", change_id, reason)
                await self._call(changes.time_out, self.app, change, results, waiting,
                                 reason, outcome.result)
                raise ChangePending(f"Change {change_id} {reason}",
                                    location=location(change_id))
            await self._call(changes.commit, self.app, change, results, outcome.result,
                             skipped)
            times["commit"] = loop.time() - started - times["acks"]
            log.debug("change %s committed: %s", change_id,
                      ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items()))
            return outcome
        finally:
            await self._release()

    async def _collect(
        self, position: int, targets: list[str], until: float
    ) -> tuple[list[NodeResult], list[str], list[str]]:
        """Each target's result for the log up to `position`, the targets that went silent
        (skipped) and those alive but not there yet when `until` came (waiting)."""
        loop = asyncio.get_running_loop()
        while True:
            results: list[NodeResult] = []
            skipped: list[str] = []
            waiting: list[str] = []
            for node in targets:
                ack = self.cluster.ack(node)
                if ack is not None and ack.position >= position:
                    results.append(NodeResult(node, ack.position, ack.errors, ack.failed))
                elif not self.cluster.alive(node):
                    skipped.append(node)
                else:
                    waiting.append(node)
            left = until - loop.time()
            if not waiting or left <= 0:
                return results, skipped, waiting
            await self.cluster.changed(min(WAIT_STEP, left))

    async def _compensate(
        self, change: Change, outcome: Outcome, meta: Meta, results: list[NodeResult],
        skipped: list[str], until: float,
    ) -> None:
        change_id = change.change_id
        failed = [r for r in results if r.failed]
        names = " ".join(r.node for r in failed)
        why = "; ".join(f"{r.node}: {e}" for r in failed for e in r.errors.values())
        message = f"Member(s) '[{names}]' failed to apply the change: {why}; it was rolled back"
        log.warning("change %s: %s", change_id, message)
        undo = Meta(actor=meta.actor, request_id=meta.request_id + ":compensation")
        try:
            compensation = await self._call(
                changes.compensate, self.app, change, results, outcome.events, undo,
                outcome.version, message, ChangeFailed.status, skipped)
        except StaleVersion as e:  # cannot happen under the lock, unless the lock was lost
            message = message.replace("it was rolled back", f"it could NOT be rolled back: {e}")
            fresh = await self._call(changes.find, self.app, change_id)  # without the above
            if fresh is not None:
                await self._call(changes.time_out, self.app, fresh, results, [], message)
            raise ChangeFailed(message) from None
        self.local.wake()
        loop = asyncio.get_running_loop()
        horizon = min(until, loop.time() + self.apply_timeout)
        _, _, waiting = await self._collect(compensation.position, self.cluster.live(), horizon)
        if waiting:
            log.warning("change %s: compensation not yet applied on %s", change_id,
                        ", ".join(waiting))
        raise ChangeFailed(message)
