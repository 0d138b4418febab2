"""Concurrent writers on every node, and forged messages: afterwards every node's kernel and
GET output equal the test's own fold of the log; nothing unsigned was ever applied.

Size: 1,000 random commands (the issue's figure) from 6 writers, 2 per node."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from portal_es.adapters.broker import notification_data
from portal_es.domain import events as ev
from portal_es.domain.balancer import BALANCER_ID
from portal_es.domain.models import Service
from tests.cluster.harness import (
    VIP_IFACE,
    BrokerTap,
    Cluster,
    Request,
    Writers,
    cluster,
    forged_signature,
)

pytestmark = pytest.mark.postgres

COMMANDS = 1000
WRITERS_PER_NODE = 2


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("convergence")) as c:
        yield c


def random_commands(rng: random.Random, count: int) -> list[Request]:
    """Valid and invalid commands over a small pool of objects, so that they collide: adds,
    replaces, updates, deletes of services, servers, routes, vips and error pages."""
    services = [(f"10.60.0.{i}", 80 + i % 2) for i in range(1, 9)]
    servers = [(f"10.61.0.{i}", 8080) for i in range(1, 7)]
    out: list[Request] = []
    for _ in range(count):
        host, port = rng.choice(services)
        sid = f"tcp-{host.replace('.', '_')}-{port}"
        shost, sport = rng.choice(servers)
        server = {"host": shost, "port": sport, "forwarder": "m",  # nftables: no DR
                  "weight": rng.randint(1, 5)}
        domain = f"d{rng.randint(1, 5)}.test"
        vip = f"10.99.1.{rng.randint(1, 4)}/32"
        out.append(rng.choice([
            ("POST", "/services", {"host": host, "port": port,
                                   "scheduler": rng.choice(["rr", "wrr", "wlc"])}),
            ("PUT", f"/services/{sid}", {"host": host, "port": port,
                                         "scheduler": rng.choice(["rr", "sh"]),
                                         "persistence": rng.choice([0, 300])}),
            ("DELETE", f"/services/{sid}", None),
            ("POST", f"/services/{sid}/servers", server),
            ("PUT", f"/services/{sid}/servers", rng.sample([
                {"host": h, "port": p, "weight": rng.randint(1, 3), "forwarder": "m"}
                for h, p in servers], rng.randint(0, 3))),
            ("DELETE", f"/services/{sid}/servers/{shost.replace('.', '_')}-{sport}", None),
            ("POST", "/routes", {"domain": domain, "path": rng.choice(["", "/a"]),
                                 "page": f"page {rng.randint(1, 9)}\n"}),
            ("DELETE", f"/routes?domain={domain}", None),
            ("POST", "/vips", {"ip": vip, "interface": VIP_IFACE}),
            ("DELETE", "/vips", {"ip": vip, "interface": VIP_IFACE}),
            ("PUT", "/errors", {"no-routes": f"none {rng.randint(1, 3)}", "no-healthy": "sick"}),
        ]))
    return out


def test_concurrent_random_commands_leave_every_node_equal_to_the_log(three: Cluster) -> None:
    rng = random.Random(20261125)
    commands = random_commands(rng, COMMANDS)
    writers = WRITERS_PER_NODE * len(three.nodes)
    jobs = [(three.nodes[i % len(three.nodes)], commands[i::writers]) for i in range(writers)]
    started = time.monotonic()
    with Writers(jobs, max_seconds=240) as running:
        pass
    seconds = time.monotonic() - started
    statuses = running.statuses()
    assert sum(statuses.values()) == COMMANDS, statuses
    # 404: a server of a service another writer removed; 409: an address taken. No 5xx, no
    # 202 (every node applied every change within the deadline).
    assert set(statuses) <= {200, 404, 409}, statuses
    print(f"{COMMANDS} commands from {writers} writers in {seconds:.1f} s: {statuses}")
    state = three.wait_converged(timeout=60)
    assert state.services or state.routes or state.vips  # the run changed something
    # Every node's vips (kernel addresses) are the log's.
    wanted = sorted(v.ip if "/" in v.ip else f"{v.ip}/32" for v in state.vips.values())
    assert all(node.addresses() == wanted for node in three.nodes)
    changes = three.nodes[0].get("/changes?limit=1000")
    assert {c["state"] for c in changes} == {"committed"}


def forged_log_batch(three: Cluster) -> tuple[bytes, str]:
    """A well-formed `log` message adding a service at the next version, as the relay would
    publish it, but not signed with the cluster token."""
    version = three.fold_version()
    event = ev.ServiceAdded(
        originator_id=BALANCER_ID, originator_version=version + 1,
        timestamp=datetime.now(UTC), actor="intruder", request_id="forged",
        service=Service(host="10.66.6.6", port=666), position=0,
    )
    stored = three.app.mapper.to_stored_event(event)
    position = three.head() + 1
    data = {"after": 0, "events": [notification_data(
        position, stored.originator_id, stored.originator_version, stored.topic, stored.state)]}
    body = json.dumps({"kind": "log", "node": "n1", "time": time.time(), "data": data},
                      separators=(",", ":")).encode()
    return body, "log"


def test_a_message_forged_without_the_cluster_token_is_not_applied(three: Cluster) -> None:
    n1 = three.nodes[0]
    body, key = forged_log_batch(three)
    heartbeat: dict[str, Any] = {"kind": "heartbeat", "node": "intruder", "time": time.time(),
                                 "data": {"incarnation": "x", "position": 10**6}}
    beat = json.dumps(heartbeat).encode()
    with BrokerTap(three) as tap:
        tap.publish(key, body, None)  # no signature at all
        tap.publish(key, body, forged_signature(key, body))  # signed with another token
        tap.publish("heartbeat.intruder", beat, forged_signature("heartbeat.intruder", beat))
    # A real change after them: once it is applied everywhere, so were the forged messages
    # looked at (one queue per node, in order).
    assert n1.api("POST", "/services", {"host": "10.66.0.1", "port": 80}).status == 200
    state = three.wait_converged(timeout=30)
    assert all(s.host != "10.66.6.6" for s in state.services.values())
    for node in three.nodes:
        me = node.me()
        assert me["forged_dropped"] >= 3, node.name
        assert "intruder" not in {r["node"] for r in node.get("/cluster/nodes")}
        assert "dropped a message" in node.log and "missing or wrong signature" in node.log
        assert "10.66.6.6" not in node.ruleset()
