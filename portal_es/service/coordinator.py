"""A change: the command's events appended, then applied by the node(s), else undone.

On one node (embedded mode) the node is this process's projector. A change is decided one at
a time, so that a compensation never has to undo something another change built on. When the
node cannot apply a change it could apply before, the inverse events are appended (they are
applied like any others, and stay in the audit log) and the client gets a 5xx naming the node.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

from portal_es.domain.balancer import Meta
from portal_es.domain.commands import Command
from portal_es.domain.errors import DomainError
from portal_es.service.app import Outcome, PortalApplication
from projections.node import NodeProjector

log = logging.getLogger(__name__)


class ChangeFailed(DomainError):
    status = 500


class ChangePending(DomainError):
    """Appended, but not applied within the deadline: it will be, or it will be rolled back."""

    status = 202

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location  # where its state can be read later (cluster: /changes/<id>)


class ChangeCoordinator:
    def __init__(
        self, app: PortalApplication, executor: Executor, node: NodeProjector | None = None,
        apply_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.node = node
        self.executor = executor
        self.apply_timeout = apply_timeout
        self._lock = asyncio.Lock()

    async def _run(self, fn: object, *args: object) -> Outcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)  # type: ignore[arg-type]

    async def submit(
        self, command: Command, meta: Meta, expected_version: int | None,
        idempotency_key: str | None = None,
    ) -> Outcome:
        # idempotency_key: honoured by the cluster's coordinator (its changes are in the log);
        # one embedded node has no change records to find a retry by.
        async with self._lock:
            outcome = await self._run(self.app.execute, command, meta, expected_version)
            if not outcome.events or self.node is None:
                return outcome
            healthy_before = self.node.last.ok
            applied = await self.node.applied(outcome.position, self.apply_timeout)
            if applied is None:
                raise ChangePending(
                    f"Change saved at version {outcome.version} but not applied on node "
                    f"'{self.node.node_name}' within {self.apply_timeout:g} s"
                )
            if applied.ok or not healthy_before:
                return outcome  # a node that was already failing is not failed by this change
            errors = "; ".join(applied.errors.values())
            log.warning("change %s failed on node %s: %s; compensating", meta.request_id,
                        self.node.node_name, errors)
            undo = Meta(actor=meta.actor, request_id=meta.request_id + ":compensation")
            compensation = await self._run(self.app.compensate, outcome.events, undo,
                                           outcome.version)
            await self.node.applied(compensation.position, self.apply_timeout)
            raise ChangeFailed(
                f"Member(s) '[{self.node.node_name}]' failed to apply the change: {errors}; "
                "it was rolled back"
            )
