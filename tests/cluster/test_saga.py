"""How a change is decided, with the nodes' acknowledgements played by the test: the real
coordinator, the real log (a SQLite store), the real membership view; the cluster lock and the
local node are stand-ins (the lock is exercised by the cluster tests)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from portal_es.adapters import store
from portal_es.domain import commands as c
from portal_es.domain.balancer import Meta
from portal_es.domain.change import ChangeState
from portal_es.domain.models import Service
from portal_es.service import changes
from portal_es.service.coordinator import ChangeFailed, ChangePending
from portal_es.service.saga import ClusterCoordinator
from projections.changes import ChangesView
from projections.cluster import ClusterView
from tests.cluster.harness import CIPHER


class Lock:
    async def acquire(self, timeout: float) -> None:
        return None

    async def release(self) -> None:
        return None


class LocalNode:
    node_name = "n1"

    def wake(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[dict[str, Any]]:
    url = store.database_url("", tmp_path)
    store.migrate(url)
    from portal_es.service.app import PortalApplication

    app = PortalApplication(store.application_env(url, CIPHER))
    clock = Clock()
    view = ClusterView(app, "n1", node_timeout=2.0, clock=clock)
    for node in ("n2", "n3"):
        view.observe("heartbeat", node, {"incarnation": node, "position": 0})
    executor = ThreadPoolExecutor(1)
    yield {"app": app, "view": view, "clock": clock, "executor": executor}
    executor.shutdown()
    app.close()


def coordinator(parts: dict[str, Any], apply_timeout: float = 2.0,
                change_timeout: float = 5.0) -> ClusterCoordinator:
    return ClusterCoordinator(parts["app"], parts["executor"], LocalNode(),  # type: ignore[arg-type]
                              parts["view"], ChangesView(parts["app"]), Lock(),  # type: ignore[arg-type]
                              apply_timeout, change_timeout)


async def acks(view: ClusterView, position_of: Any, answers: dict[str, dict[str, str]]) -> None:
    """Each node in `answers` acknowledges the head of the log, with those errors."""
    while (position := position_of()) == 0:
        await asyncio.sleep(0.01)
    for node, errors in answers.items():
        data = {"incarnation": node, "position": position, "errors": errors, "was_ok": True}
        if node == "n1":
            view.record_local(position, 0, errors, True)
        else:
            view.observe("ack", node, data)


def last_change(parts: dict[str, Any]) -> dict[str, Any]:
    view = ChangesView(parts["app"])
    view.catch_up()
    return view.recent(limit=1)[0]


def head(parts: dict[str, Any]) -> Any:
    return lambda: parts["app"].recorder.max_notification_id() or 0


ADD = c.AddService(Service(host="10.0.0.1", port=80))


async def test_every_live_node_applied_it_committed(parts: dict[str, Any]) -> None:
    saga = coordinator(parts)
    submitted = asyncio.create_task(saga.submit(ADD, Meta(), None))
    await acks(parts["view"], head(parts), {"n1": {}, "n2": {}, "n3": {}})
    outcome = await submitted
    assert outcome.result.id == "tcp-10_0_0_1-80"
    change = last_change(parts)
    assert change["state"] == "committed" and sorted(change["applied"]) == ["n1", "n2", "n3"]


async def test_a_node_that_fails_it_gets_it_compensated(parts: dict[str, Any]) -> None:
    saga = coordinator(parts)
    submitted = asyncio.create_task(saga.submit(ADD, Meta(), None))
    await acks(parts["view"], head(parts), {"n1": {}, "n2": {"nftables": "refused"}, "n3": {}})
    await asyncio.sleep(0.05)  # the compensation is appended; the nodes apply it too
    await acks(parts["view"], head(parts), {"n1": {}, "n2": {}, "n3": {}})
    with pytest.raises(ChangeFailed, match=r"Member\(s\) '\[n2\]' failed to apply the change: "
                                           r"n2: refused; it was rolled back"):
        await submitted
    change = last_change(parts)
    assert change["state"] == "compensated" and list(change["failed"]) == ["n2"]
    assert parts["app"]._balancer().state.services == {}


async def test_a_silent_node_is_not_waited_for(parts: dict[str, Any]) -> None:
    saga = coordinator(parts)
    submitted = asyncio.create_task(saga.submit(ADD, Meta(), None))
    await acks(parts["view"], head(parts), {"n1": {}, "n2": {}})
    parts["clock"].now += 3  # n3's last heartbeat is now older than node-timeout (2 s)
    parts["view"].observe("heartbeat", "n2", {"incarnation": "n2", "position": 0})
    await submitted
    change = last_change(parts)
    assert change["state"] == "committed" and change["skipped"] == ["n3"]


async def test_undecided_at_the_deadline_is_202_then_its_state_later(
        parts: dict[str, Any]) -> None:
    saga = coordinator(parts, apply_timeout=0.2, change_timeout=0.6)
    key = f"k-{uuid.uuid4()}"
    submitted = asyncio.create_task(saga.submit(ADD, Meta(), None, key))
    await acks(parts["view"], head(parts), {"n1": {}, "n2": {}})  # n3: alive, never applies
    with pytest.raises(ChangePending) as pending:
        await submitted
    assert pending.value.location is not None
    change_id = pending.value.location.removeprefix("/changes/")
    assert last_change(parts)["state"] == "requested"
    # The retry with the same key, while it is still undecided: the same 202.
    with pytest.raises(ChangePending):
        await saga.submit(ADD, Meta(), None, key)
    await asyncio.sleep(0.7)  # the saga goes on until change-timeout: kept, timed out
    found = changes.find(parts["app"], change_id)
    assert found is not None and found.state == ChangeState.timed_out
    assert found.waiting == ["n3"] and sorted(found.applied) == ["n1", "n2"]
