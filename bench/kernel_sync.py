"""Sync latency of the nftables data plane at 1..10,000 services x 10 backends.

Runs inside a network namespace it creates (never the host's). For each size:
- create: the first sync of an empty table (full: reads the kernel, adds everything);
- resync: sync(full=True) of a table that is already right (read + compare, no changes);
- change: one service changed, incremental sync (median of 5).

Goals: one change < 5 ms at 10,000 services; full sync of 10,000 x 10 < 1 s.

    .venv/bin/python bench/kernel_sync.py [--sizes 1,100,1000,10000] [--backends 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portal_es.adapters.kernel.nftables import NftablesDataplane
from projections.l4 import Backend, VirtualService
from tests.netns import namespace

GOAL_CHANGE_S = 0.005
GOAL_FULL_S = 1.0


def services(n: int, backends: int) -> dict[str, VirtualService]:
    out = {}
    for i in range(n):
        host = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
        bs = tuple(Backend(f"10.200.{i % 250}.{j + 1}", 8080, 1, "m") for j in range(backends))
        sid = f"tcp-{host.replace('.', '_')}-80"
        out[sid] = VirtualService(sid, host, 80, "tcp", "wrr", 0, "", bs)
    return out


def timed(fn: object, *args: object, **kwargs: object) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - started


def measure(ns: str, n: int, backends: int) -> dict[str, float]:
    desired = services(n, backends)
    with NftablesDataplane(netns=ns) as plane:
        plane.flush()
        create = timed(plane.sync, desired)
        resync = timed(plane.sync, desired, full=True)
        first = next(iter(desired))
        changes = []
        for weight in range(2, 7):  # each round changes one service's weights
            changed = dict(desired)
            svc = desired[first]
            changed[first] = dataclasses.replace(svc, backends=tuple(
                dataclasses.replace(b, weight=weight if j == 0 else 1)
                for j, b in enumerate(svc.backends)))
            changes.append(timed(plane.sync, changed))
        plane.flush()
    return {"create": create, "resync": resync, "change": statistics.median(changes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,1000,10000")
    parser.add_argument("--backends", type=int, default=10)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    gc.freeze()  # the desired state is long-lived: keep the collector off it
    print(f"nftables sync latency, {args.backends} backends per service (wrr)")
    print(f"{'services':>8} | {'create':>10} | {'resync':>10} | {'one change':>10} | "
          f"{'change/goal':>11} | {'full/goal':>9}")
    print("-" * 73)
    with namespace("pes-bench") as ns:
        for n in sizes:
            r = measure(ns, n, args.backends)
            print(f"{n:>8} | {r['create'] * 1000:>7.1f} ms | {r['resync'] * 1000:>7.1f} ms | "
                  f"{r['change'] * 1000:>7.2f} ms | {r['change'] / GOAL_CHANGE_S:>10.2f}x | "
                  f"{max(r['create'], r['resync']) / GOAL_FULL_S:>8.2f}x", flush=True)
    print(f"goals: one change < {GOAL_CHANGE_S * 1000:.0f} ms, full sync < {GOAL_FULL_S:.0f} s "
          "(at 10,000 services); ratio < 1 meets the goal")


if __name__ == "__main__":
    main()
