"""Sync latency of the nftables data plane at 1..10,000 services x 10 backends.

Runs inside a network namespace it creates (never the host's). For each size:
- create: the first sync of an empty table (full: reads the kernel, adds everything);
- resync: sync(full=True) of a table that is already right (read + compare, no changes);
- change: one service's weights changed, incremental sync (median of 5);
- add: one service added or removed, incremental sync (median of 6).

Each is shown as wall time and as CPU time (user + system of this process: nf_tables does
its work inside our netlink system calls, so the kernel's share is in it). On a loaded
machine wall time is CPU time divided by the share of a CPU the process gets; the CPU time
is what the code costs.

Goals: one change < 5 ms at 10,000 services; full sync of 10,000 x 10 < 1 s.

    .venv/bin/python bench/kernel_sync.py [--sizes 1,100,1000,10000] [--backends 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portal_es.adapters.kernel.nftables import NftablesDataplane
from projections.l4 import Backend, VirtualService
from tests.netns import namespace

GOAL_CHANGE_S = 0.005
GOAL_FULL_S = 1.0


def services(n: int, backends: int, first: int = 0) -> dict[str, VirtualService]:
    out = {}
    for i in range(first, first + n):
        host = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
        bs = tuple(Backend(f"10.200.{i % 250}.{j + 1}", 8080, 1, "m") for j in range(backends))
        sid = f"tcp-{host.replace('.', '_')}-80"
        out[sid] = VirtualService(sid, host, 80, "tcp", "wrr", 0, "", bs)
    return out


@dataclasses.dataclass
class Cost:
    wall: float
    cpu: float


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads, user + system
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object]) -> Cost:
    wall, cpu = time.perf_counter(), _cpu()
    fn()
    return Cost(time.perf_counter() - wall, _cpu() - cpu)


def median(costs: list[Cost]) -> Cost:
    return Cost(statistics.median(c.wall for c in costs), statistics.median(c.cpu for c in costs))


def reweighted(svc: VirtualService, weight: int) -> VirtualService:
    return dataclasses.replace(svc, backends=tuple(
        dataclasses.replace(b, weight=weight if j == 0 else 1)
        for j, b in enumerate(svc.backends)))


def measure(ns: str, n: int, backends: int) -> dict[str, Cost]:
    desired = services(n, backends)
    with NftablesDataplane(netns=ns) as plane:
        plane.flush()
        create = timed(lambda: plane.sync(desired))
        resync = timed(lambda: plane.sync(desired, full=True))
        first = next(iter(desired))
        changes = []
        for weight in range(2, 7):  # each round changes one service's weights
            changed = dict(desired)
            changed[first] = reweighted(desired[first], weight)
            changes.append(timed(lambda c=changed: plane.sync(c)))  # type: ignore[misc]
        extra = services(1, backends, first=n)
        adds = []
        for i in range(6):  # add, remove, add, ...
            target = {**desired, **extra} if i % 2 == 0 else dict(desired)
            adds.append(timed(lambda t=target: plane.sync(t)))  # type: ignore[misc]
        plane.flush()
    return {"create": create, "resync": resync, "change": median(changes), "add": median(adds)}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,1000,10000")
    parser.add_argument("--backends", type=int, default=10)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    gc.freeze()  # the desired state is long-lived: keep the collector off it
    print(f"nftables sync latency, {args.backends} backends per service (wrr); "
          "ms, wall / cpu")
    print(f"{'services':>8} | {'create':>17} | {'resync':>17} | {'one change':>13} | "
          f"{'add/remove':>13} | {'change/goal':>11} | {'full/goal':>9}")
    print("-" * 105)
    with namespace("pes-bench") as ns:
        for n in sizes:
            r = measure(ns, n, args.backends)
            full = max(r["create"].wall, r["resync"].wall)
            print(f"{n:>8} | {ms(r['create'].wall):>8} / {ms(r['create'].cpu):>6} | "
                  f"{ms(r['resync'].wall):>8} / {ms(r['resync'].cpu):>6} | "
                  f"{ms(r['change'].wall):>5} / {ms(r['change'].cpu):>5} | "
                  f"{ms(r['add'].wall):>5} / {ms(r['add'].cpu):>5} | "
                  f"{r['change'].wall / GOAL_CHANGE_S:>10.2f}x | {full / GOAL_FULL_S:>8.2f}x",
                  flush=True)
    print(f"goals: one change < {GOAL_CHANGE_S * 1000:.0f} ms, full sync < {GOAL_FULL_S:.0f} s "
          "(at 10,000 services); ratio < 1 meets the goal (wall time)")


if __name__ == "__main__":
    main()
