"""End to end on one node: the REST API -> the log -> this node's projector -> nftables, vips,
with real packets. portal-es runs in the balancer's namespace; clients and backends run in
their own (tests/netns.py). Nothing touches the machine's own network namespace."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portal_es.adapters.kernel.nftables import nftables_available
from tests.conftest import unavailable
from tests.netns import Held, NetnsUnavailable, Topology, run_in, spread, topology
from tests.nodes import NsPortal

VIP = "10.77.1.1"
PLAIN, HOLD = 80, 81  # service ports: backends answer once / keep the connection and echo
PLAIN_BE, HOLD_BE = 8080, 8081


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    if not nftables_available():
        unavailable("nftables is not usable here (libnftables1 missing or not root)")
    try:
        with topology(backends=3, prefix="pe2e") as t:
            t.add_vip(VIP)
            t.start_backends(PLAIN_BE, max_seconds=600)
            t.start_backends(HOLD_BE, hold=True, max_seconds=600)
            yield t
    except NetnsUnavailable as e:
        unavailable(str(e))


@pytest.fixture(scope="module")
def node(topo: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsPortal]:
    server = NsPortal(
        tmp_path_factory.mktemp("node") / "lb", kernel=True, netns=topo.lb,
        extra=["--balancer", "nftables", "--node-name", "lb", "--drain-timeout", "3",
               "--reconcile-interval", "2"],
    )
    server.start()
    yield server
    server.stop()
    server.cli("flush", "--work-dir", str(server.work_dir), "--balancer", "nftables")


def servers(topo: Topology, port: int, forwarder: str = "m", **extra: Any) -> list[dict[str, Any]]:
    return [{"host": topo.address(f"be{i}"), "port": port, "forwarder": forwarder, **extra}
            for i in (1, 2, 3)]


def configure(node: NsPortal, topo: Topology, scheduler: str = "rr") -> None:
    answer = node.api("PUT", "/services", [
        {"host": VIP, "port": PLAIN, "scheduler": scheduler, "servers": servers(topo, PLAIN_BE)},
        {"host": VIP, "port": HOLD, "scheduler": "rr", "servers": servers(topo, HOLD_BE)},
    ])
    assert answer.status == 200, answer.text


def counts(topo: Topology, n: int) -> dict[str, int]:
    return dict(spread(topo.client, VIP, PLAIN, n))


def nft(topo: Topology, *args: str) -> str:
    return topo.sh("lb", "nft", *args)


def test_a_write_is_programmed_before_it_is_answered(node: NsPortal, topo: Topology) -> None:
    configure(node, topo)
    assert counts(topo, 30) == {"be1": 10, "be2": 10, "be3": 10}  # no wait, no retry
    status = node.api("GET", "/status").json
    assert (status["balancer"], status["lag"], status["errors"]) == ("nftables", 0, {})


def test_weights_through_the_api(node: NsPortal, topo: Topology) -> None:
    configure(node, topo)
    answer = node.api("PUT", f"/services/tcp-{VIP.replace('.', '_')}-{PLAIN}/servers", [
        dict(s, weight=w) for s, w in zip(servers(topo, PLAIN_BE), (3, 2, 1), strict=True)])
    assert answer.status == 200
    node.api("PUT", f"/services/tcp-{VIP.replace('.', '_')}-{PLAIN}",
             {"host": VIP, "port": PLAIN, "scheduler": "wrr",
              "servers": [dict(s, weight=w) for s, w in
                          zip(servers(topo, PLAIN_BE), (3, 2, 1), strict=True)]})
    assert counts(topo, 60) == {"be1": 30, "be2": 20, "be3": 10}


def test_what_nftables_cannot_do_is_refused_and_not_written(
    node: NsPortal, topo: Topology
) -> None:
    configure(node, topo)
    head = node.api("GET", "/status").json["head"]
    sid = f"tcp-{VIP.replace('.', '_')}-{PLAIN}"
    answer = node.api("POST", f"/services/{sid}/servers",
                      {"host": "10.77.0.99", "port": 1, "forwarder": "i"})
    assert answer.status == 400 and "ip-in-ip" in answer.json["error"], answer.text
    assert node.api("GET", "/status").json["head"] == head


def test_removed_server_drains_then_goes(node: NsPortal, topo: Topology) -> None:
    configure(node, topo)
    held = Held(topo.client, VIP, HOLD)
    name = held.ping()
    assert name in ("be1", "be2", "be3")
    sid = f"tcp-{VIP.replace('.', '_')}-{HOLD}"
    server_id = f"{topo.address(name).replace('.', '_')}-{HOLD_BE}"
    assert node.api("DELETE", f"/services/{sid}/servers/{server_id}").status == 200
    assert held.ping() == name, "draining cut an established connection"
    fresh = {Held(topo.client, VIP, HOLD).ping() for _ in range(6)}
    assert name not in fresh and "" not in fresh
    time.sleep(4)  # past the drain timeout: the projector wakes up by itself and removes it
    assert held.ping() == name  # conntrack keeps an established flow even then
    held.close()


def test_stopping_portal_es_leaves_the_data_plane_running(
    node: NsPortal, topo: Topology
) -> None:
    configure(node, topo)
    held = Held(topo.client, VIP, HOLD)
    name = held.ping()
    node.stop()
    try:
        assert "portal_es" in nft(topo, "list", "tables")
        assert held.ping() == name
        assert sum(counts(topo, 9).values()) == 9 and "" not in counts(topo, 3)
    finally:
        node.start()
    assert held.ping() == name, "restarting portal-es dropped a connection"
    assert counts(topo, 30) == {"be1": 10, "be2": 10, "be3": 10}
    held.close()


def test_drift_is_shown_and_repaired(node: NsPortal, topo: Topology) -> None:
    configure(node, topo)
    nft(topo, "flush", "table", "ip", "portal_es")  # someone edits the kernel by hand
    assert counts(topo, 3).get("", 0) == 3
    deadline = time.monotonic() + 15  # the periodic reconcile (every 2 s here) repairs it
    while counts(topo, 3).get("", 0) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert counts(topo, 30) == {"be1": 10, "be2": 10, "be3": 10}
    assert node.api("GET", "/status").json["drift"]["services"] == {
        "missing": [], "unexpected": [], "different": []}


def test_rebuild_restores_a_wiped_table(node: NsPortal, topo: Topology) -> None:
    configure(node, topo)
    node.stop()
    try:
        nft(topo, "delete", "table", "ip", "portal_es")
        assert counts(topo, 3).get("", 0) == 3
        args = ["--work-dir", str(node.work_dir), "--balancer", "nftables", "--no-vips",
                "--node-name", "lb", "--log-level", "WARNING"]
        plan = node.cli("rebuild", "--dry-run", *args)
        assert plan.returncode == 0, plan.stderr
        assert '"missing":["tcp-10_77_1_1-80","tcp-10_77_1_1-81"]' in plan.stdout
        assert counts(topo, 3).get("", 0) == 3  # a dry run changes nothing
        done = node.cli("rebuild", *args)
        assert done.returncode == 0 and '"applied":true' in done.stdout, done.stdout + done.stderr
        assert counts(topo, 30) == {"be1": 10, "be2": 10, "be3": 10}
        again = node.cli("rebuild", "--dry-run", *args)  # on a healthy node: nothing to do
        assert '"missing":[],"unexpected":[],"different":[]' in again.stdout
    finally:
        node.start()


# --- vips -------------------------------------------------------------------------------------


def _addresses(topo: Topology) -> str:
    return topo.sh("lb", "ip", "-4", "addr", "show", "dev", "eth0")


def _capture_arp(ns: str, address: str, seconds: float) -> threading.Thread:
    """Listen in `ns` for a gratuitous ARP announcing `address`; result in thread.result."""
    ip = socket.inet_aton(address)

    def listen() -> bool:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
            s.settimeout(0.2)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    frame = s.recv(128)
                except TimeoutError:
                    continue
                sender, target = frame[28:32], frame[38:42]
                if struct.unpack("!H", frame[20:22])[0] == 1 and sender == ip == target:
                    return True
        return False

    thread = threading.Thread(target=lambda: setattr(thread, "result", run_in(ns, listen)))
    thread.start()
    time.sleep(0.3)
    return thread


def test_vips_come_and_go_with_the_log(node: NsPortal, topo: Topology) -> None:
    vip = {"ip": "10.77.0.50/24", "interface": "eth0", "alias": "eth0:pes"}
    listener = _capture_arp(topo.client, "10.77.0.50", seconds=5)
    assert node.api("POST", "/vips", vip).status == 200
    listener.join()
    assert getattr(listener, "result", False), "the neighbour saw no gratuitous ARP"
    shown = _addresses(topo)
    assert "10.77.0.50/24" in shown and "eth0:pes" in shown
    assert node.api("DELETE", "/vips", vip).status == 200
    assert "10.77.0.50" not in _addresses(topo)


def test_an_address_portal_es_did_not_add_is_never_removed(
    node: NsPortal, topo: Topology
) -> None:
    topo.sh("lb", "ip", "addr", "add", "10.77.0.60/24", "dev", "eth0")
    vip = {"ip": "10.77.0.60/24", "interface": "eth0"}
    assert node.api("POST", "/vips", vip).status == 200
    assert node.api("DELETE", "/vips", vip).status == 200
    assert "10.77.0.60/24" in _addresses(topo)


def test_a_change_the_node_cannot_apply_is_compensated(node: NsPortal, topo: Topology) -> None:
    before = node.api("GET", "/vips").json
    answer = node.api("POST", "/vips", {"ip": "10.77.0.70/24", "interface": "nope0"})
    assert answer.status == 500, answer.text
    assert answer.json["error"].startswith("Member(s) '[lb]' failed to apply the change")
    assert "nope0" in answer.json["error"]
    assert node.api("GET", "/vips").json == before
    events = node.api("GET", "/events?entity=10.77.0.70&limit=10").json["events"]
    assert [e["type"] for e in events] == ["VipAdded", "VipRemoved"]
    assert events[1]["request_id"].endswith(":compensation")
    assert node.api("GET", "/status").json["errors"] == {}


def test_flush_removes_what_portal_es_programmed(
    node: NsPortal, topo: Topology, tmp_path: Path
) -> None:
    configure(node, topo)
    topo.sh("lb", "ip", "addr", "add", "10.77.0.61/24", "dev", "eth0")  # someone else's
    assert node.api("POST", "/vips", {"ip": "10.77.0.80/24", "interface": "eth0"}).status == 200
    node.stop()
    try:
        flushed = node.cli("flush", "--work-dir", str(node.work_dir), "--balancer", "nftables",
                           "--log-level", "WARNING")
        assert flushed.returncode == 0, flushed.stderr
        assert "portal_es" not in nft(topo, "list", "tables")
        assert "10.77.0.80" not in _addresses(topo)
        assert "10.77.0.61/24" in _addresses(topo)  # not ours: stays
    finally:
        node.start()
    assert counts(topo, 3) == {"be1": 1, "be2": 1, "be3": 1}  # the restart re-applies the log
