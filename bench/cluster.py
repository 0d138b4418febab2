"""Cluster benchmark: convergence latency and sustained writes of a 3-node cluster.

Run as a script (not a test), as root (namespaces, nftables):

    .venv/bin/python bench/cluster.py [--writes 1000] [--services 50] [--writers 2]
                                      [--throughput-seconds 20] [--time-limit 300]

Three real `portal-es serve` processes, each in its own network namespace with its own
nftables data plane, on the machine's PostgreSQL (unix socket; database `test`, or
PORTAL_ES_CLUSTER_PG_DB) and RabbitMQ (bridged into each namespace over a unix socket), as in
tests/cluster (its harness is used). The log's tables are reset first.

1. latency: --writes sequential writes, round robin over the 3 nodes, each from inside the
   node's namespace: PUT /services/<id>/servers with new weights on a configuration of
   --services services (so the configuration does not grow with the run). A write is
   answered only once every live node applied it (and the change is committed), so the
   client's latency IS the convergence latency: API write -> applied on all 3 nodes.
   The Change records give the cluster's side too: requested -> every ack -> committed.
   Every 100th write, all 3 kernels are checked against the log (not timed).
2. throughput: --writers writers per node, all at once, for --throughput-seconds: writes/s
   the cluster sustains (changes are decided one at a time, cluster-wide).

Goal on this machine: p50 < 50 ms, p99 < 250 ms. Progress to stderr, the result (Markdown)
to stdout. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.harness import PG_DB, Cluster, Node
from tests.http import call
from tests.netns import run_in


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def service_id(i: int) -> str:
    return f"tcp-10_70_{i // 250}_{i % 250}-80"


def configure(node: Node, services: int) -> None:
    body = [{"host": f"10.70.{i // 250}.{i % 250}", "port": 80, "scheduler": "wrr",
             "servers": [{"host": f"10.71.0.{s}", "port": 8080, "forwarder": "m", "weight": 1}
                         for s in (1, 2, 3)]} for i in range(services)]
    answer = node.api("PUT", "/services", body)
    assert answer.status == 200, answer.text


def servers(weight: int) -> list[dict[str, Any]]:
    return [{"host": f"10.71.0.{s}", "port": 8080, "forwarder": "m",
             "weight": 1 + (weight + s) % 7} for s in (1, 2, 3)]


class Client:
    """A client inside a node's namespace: one thread that entered it, one kept-alive HTTP
    connection (so that what is timed is the cluster, not thread or connection set-up)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.jobs: queue.Queue[tuple[str, str, Any] | None] = queue.Queue()
        self.results: queue.Queue[tuple[float, int]] = queue.Queue()
        threading.Thread(target=run_in, args=(node.netns, self._serve, 3600.0),
                         daemon=True).start()

    def _serve(self) -> None:
        host, port = self.node.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        while (job := self.jobs.get()) is not None:
            method, path, body = job
            started = time.perf_counter()
            connection.request(method, path, json.dumps(body),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            self.results.put((time.perf_counter() - started, response.status))
        connection.close()

    def call(self, method: str, path: str, body: Any) -> tuple[float, int]:
        self.jobs.put((method, path, body))
        return self.results.get(timeout=60)

    def close(self) -> None:
        self.jobs.put(None)


def latency(c: Cluster, writes: int, services: int, limit: float) -> dict[str, Any]:
    seconds: list[float] = []
    deadline = time.monotonic() + limit
    checks = 0
    clients = [Client(node) for node in c.nodes]
    for i in range(writes):
        if time.monotonic() > deadline:
            progress(f"latency: time limit reached after {i} writes")
            break
        client = clients[i % len(clients)]
        path = f"/services/{service_id(i % services)}/servers"
        took, status = client.call("PUT", path, servers(i))
        if status != 200:
            raise RuntimeError(f"write {i} on {client.node.name}: {status}")
        seconds.append(took)
        if (i + 1) % 100 == 0:
            state = c.fold()
            for n in c.nodes:  # answered = applied everywhere: check the kernels now
                drift = n.kernel_drift(state)
                assert not any(drift.values()), (n.name, drift)
            checks += 1
            progress(f"latency: {i + 1} writes, p50 so far "
                     f"{percentile(seconds, 50) * 1000:.1f} ms")
    for client in clients:
        client.close()
    changes = c.nodes[0].get("/changes?state=committed&limit=1000")
    cluster_side = [
        (datetime.fromisoformat(ch["decided"]) - datetime.fromisoformat(ch["requested"]))
        .total_seconds() for ch in changes[: len(seconds)]
    ]
    return {"writes": len(seconds), "seconds": seconds, "cluster": cluster_side,
            "kernel_checks": checks}


def throughput(c: Cluster, writers: int, services: int, seconds: float) -> dict[str, Any]:
    counts: list[int] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def writer(node: Node, k: int) -> None:
        def go() -> int:
            done = 0
            while time.monotonic() < stop_at and done < 100_000:
                path = f"/services/{service_id((k * 7919 + done) % services)}/servers"
                answer = call("PUT", node.url + path, servers(k + done))
                with lock:
                    statuses[answer.status] = statuses.get(answer.status, 0) + 1
                done += answer.status == 200
            return done

        counts.append(run_in(node.netns, go, timeout=seconds + 60))

    threads = [threading.Thread(target=writer, args=(n, k))
               for k, n in enumerate(c.nodes * writers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 90)
    took = time.monotonic() - started
    return {"writers": len(threads), "writes": sum(counts), "seconds": took,
            "per_second": sum(counts) / took, "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--writers", type=int, default=2, help="per node, for throughput")
    parser.add_argument("--throughput-seconds", type=float, default=20.0)
    parser.add_argument("--time-limit", type=float, default=300.0, help="for the latency run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cluster.py needs root (network namespaces, nftables)")
    with tempfile.TemporaryDirectory(prefix="pes-bench-") as tmp:
        c = Cluster(Path(tmp), node_timeout=2.0)
        try:
            progress(f"starting 3 nodes (PostgreSQL database '{PG_DB}')")
            c.start()
            configure(c.nodes[0], args.services)
            c.wait_converged()
            progress(f"latency: {args.writes} sequential writes over 3 nodes")
            lat = latency(c, args.writes, args.services, args.time_limit)
            progress(f"throughput: {args.writers} writers per node, "
                     f"{args.throughput_seconds:g} s")
            tput = throughput(c, args.writers, args.services, args.throughput_seconds)
            c.wait_converged()
        finally:
            c.stop()
    ms = [s * 1000 for s in lat["seconds"]]
    cms = [s * 1000 for s in lat["cluster"]]
    load = os.getloadavg()
    print(f"## portal-es cluster: 3 nodes (netns + nftables), {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}\n")
    print("| measure | p50 | p99 | mean | max | n |")
    print("|---|---|---|---|---|---|")
    print(f"| write answered = applied on all 3 nodes (client, ms) | "
          f"{percentile(ms, 50):.1f} | {percentile(ms, 99):.1f} | {statistics.mean(ms):.1f} | "
          f"{max(ms):.1f} | {len(ms)} |")
    if cms:
        print(f"| change requested -> committed (in the log, ms) | {percentile(cms, 50):.1f} | "
              f"{percentile(cms, 99):.1f} | {statistics.mean(cms):.1f} | {max(cms):.1f} | "
              f"{len(cms)} |")
    print(f"\nSustained: {tput['writes']} writes in {tput['seconds']:.1f} s from "
          f"{tput['writers']} writers = **{tput['per_second']:.1f} writes/s** "
          f"(answers: {tput['statuses']}); kernels checked against the log "
          f"{lat['kernel_checks']} times during the latency run and once after.")
    goal = percentile(ms, 50) < 50 and percentile(ms, 99) < 250
    print(f"\nGoal (p50 < 50 ms, p99 < 250 ms): {'met' if goal else 'NOT met'}.")


if __name__ == "__main__":
    main()
