"""Restore and rebuild with the kernel data plane and real packets: portal-es programs
nftables in the balancer's namespace; client and backends are namespaces of their own
(tests/netns.py). Nothing touches the machine's own network namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portal_es.adapters.kernel.nftables import nftables_available
from tests.conftest import unavailable
from tests.netns import NetnsUnavailable, Topology, spread, topology
from tests.nodes import NsPortal

VIP, PORT, BACKEND_PORT = "10.77.1.1", 80, 8080


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    if not nftables_available():
        unavailable("nftables is not usable here (libnftables1 missing or not root)")
    try:
        with topology(backends=3, prefix="phis") as t:
            t.add_vip(VIP)
            t.start_backends(BACKEND_PORT, max_seconds=300)
            yield t
    except NetnsUnavailable as e:
        unavailable(str(e))


@pytest.fixture
def node(topo: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NsPortal]:
    # Snapshots every 3 events: rebuilds below start from one, not from position 0.
    monkeypatch.setenv("PORTAL_SNAPSHOT_INTERVAL", "3")
    server = NsPortal(tmp_path / "lb", kernel=True, netns=topo.lb,
                      extra=["--balancer", "nftables", "--node-name", "lb", "--no-vips",
                             "--drain-timeout", "0"])
    server.start()
    yield server
    server.stop()
    server.cli("flush", "--work-dir", str(server.work_dir), "--balancer", "nftables", "--no-vips")


def put_servers(node: NsPortal, topo: Topology, *backends: int) -> int:
    """The service on VIP:PORT over these backends; the log position after it."""
    servers = [{"host": topo.address(f"be{i}"), "port": BACKEND_PORT, "forwarder": "m"}
               for i in backends]
    answer = node.api("PUT", "/services", [{"host": VIP, "port": PORT, "scheduler": "rr",
                                            "servers": servers}])
    assert answer.status == 200, answer.text
    return int(node.api("GET", "/status").json["head"])


def counts(topo: Topology, n: int = 30) -> dict[str, int]:
    return dict(spread(topo.client, VIP, PORT, n))


def state(node: NsPortal, at: int | None = None) -> Any:
    answer = node.api("GET", "/state" + (f"?at={at}" if at is not None else ""))
    assert answer.status == 200, answer.text
    return answer.json["state"]


def test_a_restore_undoes_a_bad_deploy_and_packets_follow(
    node: NsPortal, topo: Topology
) -> None:
    good = put_servers(node, topo, 1, 2, 3)
    recorded = state(node)
    assert counts(topo) == {"be1": 10, "be2": 10, "be3": 10}
    put_servers(node, topo, 1)  # the bad deploy
    assert counts(topo) == {"be1": 30}
    answer = node.api("POST", "/state/restore", {"at": good, "reason": "bad deploy"})
    assert answer.status == 200, answer.text
    assert counts(topo) == {"be1": 10, "be2": 10, "be3": 10}  # applied before it answered
    assert state(node) == recorded == state(node, good)
    events = node.api("GET", f"/events?since={good}").json["events"]
    assert events[-1]["type"] == "Restored" and events[-1]["data"]["reason"] == "bad deploy"


def test_a_wiped_node_rebuilds_and_rebuild_at_restores_without_a_server(
    node: NsPortal, topo: Topology
) -> None:
    good = put_servers(node, topo, 1, 2, 3)
    recorded = state(node)
    put_servers(node, topo, 2)
    node.stop()
    try:
        topo.sh("lb", "nft", "delete", "table", "ip", "portal_es")  # the node is wiped
        assert counts(topo, 3) == {"": 3}
        args = ["--work-dir", str(node.work_dir), "--balancer", "nftables", "--no-vips",
                "--node-name", "lb", "--log-level", "WARNING",
                *node.args()[node.args().index("--proxy-http"):][:4]]
        done = node.cli("rebuild", *args)
        assert done.returncode == 0 and '"applied":true' in done.stdout, done.stdout + done.stderr
        assert counts(topo) == {"be2": 30}
        plan = node.cli("rebuild", "--at", str(good), "--dry-run", *args)
        assert '"summary":["~ service tcp-10_77_1_1-80"]' in plan.stdout, plan.stdout
        assert counts(topo, 6) == {"be2": 6}  # a dry run changes nothing
        restored = node.cli("rebuild", "--at", str(good), "--reason", "node lost", *args)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert counts(topo) == {"be1": 10, "be2": 10, "be3": 10}
        again = node.cli("rebuild", "--dry-run", *args)  # healthy: nothing to do
        assert '"summary":[]' in again.stdout, again.stdout
    finally:
        node.start()
    assert state(node) == recorded
    assert counts(topo) == {"be1": 10, "be2": 10, "be3": 10}
