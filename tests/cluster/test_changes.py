"""Changes across a 3-node cluster: a write on any node is applied on every node before it is
answered; a node that cannot apply it gets it compensated everywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import VIP_IFACE, Cluster, cluster, until, write

pytestmark = pytest.mark.postgres

CLEAN = {"missing": [], "unexpected": [], "different": []}


@pytest.fixture
def three(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, no_vip_iface=("n3",)) as c:
        yield c


def test_a_write_on_any_node_is_on_every_node_when_answered(three: Cluster) -> None:
    n1, n2, n3 = three.nodes
    answer = write(n1, "POST", "/services", {"host": "10.10.0.1", "port": 80, "type": "tcp",
                                             "scheduler": "rr"})
    assert answer.status == 200, answer.text
    # Answered = applied on every live node: the kernels are checked at once, no waiting.
    state = three.fold()
    for node in three.nodes:
        assert node.kernel_drift(state) == CLEAN, node.name
    answer = write(n2, "PUT", "/services/tcp-10_10_0_1-80/servers", [
        {"host": "10.20.0.1", "port": 8080, "forwarder": "m", "weight": 2},
        {"host": "10.20.0.2", "port": 8080, "forwarder": "m", "weight": 1}])
    assert answer.status == 200, answer.text
    answer = write(n3, "POST", "/routes", {"domain": "portal.test", "page": "works\n"})
    assert answer.status == 200, answer.text
    for node in three.nodes:  # every node's proxy serves the route now
        served = node.proxy("portal.test")
        assert (served.status, served.text) == (200, "works\n"), node.name
    state = three.fold()
    assert [s.id for s in state.services["tcp-10_10_0_1-80"].servers] == [
        "10_20_0_1-8080", "10_20_0_2-8080"]
    for node in three.nodes:
        assert node.kernel_drift(state) == CLEAN, node.name
        assert "10.20.0.2" in node.ruleset(), node.name  # and nft itself says so
    # GETs on every node agree with each other and with the test's own fold of the log.
    expected = three.expected_gets(state)
    assert all(three.gets(node) == expected for node in three.nodes)

    # Each write is a change in the log: requested, applied by each node, committed.
    changes = n3.get("/changes")
    assert [c["state"] for c in changes] == ["committed"] * 3
    assert [c["origin"] for c in changes] == ["n3", "n2", "n1"]
    assert all(sorted(c["applied"]) == ["n1", "n2", "n3"] for c in changes)
    types = [e["type"] for e in three.events()]
    assert types.count("ChangeRequested") == 3 and types.count("ChangeCommitted") == 3
    assert types.count("NodeApplied") == 9 and types.count("NodeJoined") == 3
    nodes = {r["node"]: r for r in n2.get("/cluster/nodes")}
    assert {r["health"] for r in nodes.values()} == {"alive"}
    assert sum(r["relay"] for r in nodes.values()) == 1

    # An Idempotency-Key: the retry (on another node) returns the same answer, appends nothing.
    body = {"host": "10.10.0.2", "port": 443}
    first = write(n1, "POST", "/services", body, {"Idempotency-Key": "k-1"})
    head = three.head()
    retry = write(n2, "POST", "/services", body, {"Idempotency-Key": "k-1"})
    assert (first.status, first.text) == (retry.status, retry.text) == (200, first.text)
    assert three.head() == head
    three.wait_converged()

    # The same through the command line (run inside a node's namespace).
    table = n1.cli("nodes", "-i", "-P", str(n1.port), "--output", "table")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["NODE", "HEALTH", "POSITION", "LAG"]
    assert sorted(line.split()[0] for line in lines[1:4]) == ["n1", "n2", "n3"]
    assert all(" alive " in line for line in lines[1:4])
    listed = n2.cli("changes", "-i", "-P", str(n2.port), "--state", "committed")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 4
    one = n3.cli("changes", "-i", "-P", str(n3.port), "--id", changes[0]["id"])
    assert json.loads(one.stdout)["id"] == changes[0]["id"]
    saga = n1.cli("events", "-i", "-P", str(n1.port), "--entity", changes[0]["id"])
    assert [json.loads(line)["type"] for line in saga.stdout.splitlines()] == [
        "ChangeRequested", "NodeApplied", "NodeApplied", "NodeApplied", "ChangeCommitted"]


def test_a_node_that_cannot_apply_gets_the_change_compensated_everywhere(three: Cluster) -> None:
    n1, n2, n3 = three.nodes
    assert write(n1, "POST", "/services", {"host": "10.10.0.1", "port": 80}).status == 200
    before = {n.name: (n.ruleset(), n.addresses()) for n in (n1, n2)}
    # n3 has no interface vip0 (a real cause: the kernel refuses the address there).
    answer = write(n1, "POST", "/vips", {"ip": "10.99.0.1/32", "interface": VIP_IFACE})
    assert answer.status == 500, answer.text
    assert "Member(s) '[n3]' failed" in answer.json["error"]
    assert "vip0" in answer.json["error"] and "rolled back" in answer.json["error"]
    # Compensated everywhere: the others' kernels are as before, the vip in no GET.
    for node in (n1, n2):
        assert (node.ruleset(), node.addresses()) == before[node.name], node.name
    assert all(node.get("/vips") == [] for node in three.nodes)
    change = n2.get("/changes?state=compensated")[0]
    assert sorted(change["applied"]) == ["n1", "n2"] and list(change["failed"]) == ["n3"]
    assert change == n2.get(f"/changes/{change['id']}")
    saga = [e["type"] for e in three.events() if e["type"] not in ("NodeJoined",)]
    assert saga[-7:] == ["ChangeRequested", "VipAdded", "NodeApplied", "NodeApplied",
                         "NodeFailed", "ChangeCompensated", "VipRemoved"] or saga[-7:] == [
        "ChangeRequested", "VipAdded", "NodeApplied", "NodeFailed", "NodeApplied",
        "ChangeCompensated", "VipRemoved"]
    # The node that failed is healthy again (it applied the compensation), and the next
    # change on the cluster commits.
    three.wait_converged()
    assert write(n3, "DELETE", "/services/tcp-10_10_0_1-80").status == 200
    three.wait_converged()


def test_undecided_within_the_deadline_answers_202_and_the_change_tells_later(
        tmp_path: Path) -> None:
    with cluster(tmp_path, node_timeout=4.0, apply_timeout=1.0) as c:
        n1, n2, n3 = c.nodes
        n3.pause()  # n3 stops answering; for node-timeout (4 s) it is still waited for
        try:
            answer = write(n1, "POST", "/services", {"host": "10.10.0.3", "port": 80})
            assert answer.status == 202, answer.text
            location = answer.headers["Location"]
            assert location.startswith("/changes/") and location in answer.json["error"]
            assert n2.get(location)["state"] in ("requested", "committed")  # a busy machine
            # n3 goes silent past node-timeout: no longer waited for, the change commits.
            change = until(lambda: (ch := n2.get(location))["state"] != "requested" and ch,
                           15, "the change decided")
            assert change["state"] == "committed" and change["skipped"] == ["n3"]
            assert sorted(change["applied"]) == ["n1", "n2"]
        finally:
            n3.pause(False)
        c.wait_converged()  # n3 back: it catches up
