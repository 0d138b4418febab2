"""API write -> kernel programmed latency on one node (p50, p99).

A write is answered only after this node has applied it (the change coordinator waits for the
projector), so the API's answer time is the write-to-kernel latency. Reference, same run: the
same writes against the same server with `--balancer none` (log + projector, no kernel), so
the difference is what programming nftables costs.

portal-es runs inside a network namespace this script creates; nothing touches the machine's
own network. Usage: .venv/bin/python bench/apply_latency.py [--writes 300] [--services 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netns import namespace, run_in
from tests.nodes import NsPortal


def measure(ns: str, balancer: str, writes: int, services: int, work: Path) -> list[float]:
    node = NsPortal(work / balancer, kernel=True, netns=ns,
                    extra=["--balancer", balancer, "--no-vips", "--log-level", "WARNING"])
    node.start()
    try:
        body = [{"host": f"10.88.{i // 250}.{i % 250 + 1}", "port": 80, "scheduler": "wrr",
                 "servers": [{"host": f"10.89.0.{j + 1}", "port": 8080, "forwarder": "m"}
                             for j in range(10)]} for i in range(services)]
        assert node.api("PUT", "/services", body).status == 200
        sid = "tcp-10_88_0_1-80"
        server = {"host": "10.89.1.1", "port": 8080, "forwarder": "m"}
        deadline = time.monotonic() + 300

        def run() -> list[float]:
            from tests.http import call

            out = []
            for i in range(writes):
                if time.monotonic() > deadline:
                    break
                started = time.perf_counter()
                if i % 2 == 0:
                    answer = call("POST", f"{node.url}/services/{sid}/servers", server)
                else:
                    answer = call("DELETE", f"{node.url}/services/{sid}/servers/10_89_1_1-8080")
                assert answer.status == 200, answer.text
                out.append((time.perf_counter() - started) * 1000)
            return out

        return run_in(ns, run, timeout=330)
    finally:
        node.stop()


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--services", type=int, default=100)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp, namespace("pbench") as ns:
        for balancer in ("none", "nftables"):
            print(f"measuring {balancer} ...", file=sys.stderr)
            results[balancer] = measure(ns, balancer, args.writes, args.services, Path(tmp))
    print(f"API write -> applied on the node, {args.services} services x 10 servers, "
          f"{args.writes} writes (alternating add/remove server)")
    print(f"{'balancer':>10} | {'p50 ms':>8} | {'p99 ms':>8} | {'mean ms':>8}")
    for balancer, values in results.items():
        print(f"{balancer:>10} | {quantile(values, 0.5):8.2f} | {quantile(values, 0.99):8.2f} | "
              f"{statistics.fmean(values):8.2f}")
    base, kernel = results["none"], results["nftables"]
    print(f"nftables / none (p50): {quantile(kernel, 0.5) / quantile(base, 0.5):.2f}")


if __name__ == "__main__":
    main()
