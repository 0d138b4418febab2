"""Sync latency of the IPVS data plane at 1, 10 and 100 services x 10 backends.

Runs in a network namespace it creates (never the host's IPVS table). Where this kernel has
no IPVS (the development machines), it boots the test VM (tests/vm/ipvs-vm.sh: Debian 6.1
kernel under qemu TCG, ~12x slower than the host for Python) and runs itself there. For each
size:
- create: the first sync of an empty table (full: reads the kernel, adds everything);
- resync: sync(full=True) of a table that is already right (read + compare, no request);
- change: one service's weights changed, incremental sync (median of 5);
- change, full: the same, with sync(full=True) (median of 5);
- Portal: what Portal did on every full sync, `ipvsadm -C` then `ipvsadm -R` of the table
  (two processes; drops every connection), for reference.

    .venv/bin/python bench/ipvs_sync.py [--sizes 1,10,100] [--backends 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from portal_es.adapters.kernel.ipvs import IpvsDataplane, ipvs_available  # noqa: E402
from projections.l4 import Backend, VirtualService  # noqa: E402
from tests.netns import namespace  # noqa: E402

ROUNDS = 5


def services(n: int, backends: int) -> dict[str, VirtualService]:
    out = {}
    for i in range(n):
        host = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
        bs = tuple(Backend(f"10.200.{i % 250}.{j + 1}", 8080, 1, "m") for j in range(backends))
        sid = f"tcp-{host.replace('.', '_')}-80"
        out[sid] = VirtualService(sid, host, 80, "tcp", "wrr", 0, "", bs)
    return out


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def one_change(desired: dict[str, VirtualService], weight: int) -> dict[str, VirtualService]:
    first = next(iter(desired))
    svc = desired[first]
    changed = dict(desired)
    changed[first] = dataclasses.replace(svc, backends=tuple(
        dataclasses.replace(b, weight=weight if j == 0 else 1)
        for j, b in enumerate(svc.backends)))
    return changed


def portal_restore(ns: str, desired: dict[str, VirtualService]) -> float:
    """Portal's full sync: clear the table, then restore it from rules (ipvsadm -C; -R)."""
    rules = []
    for svc in desired.values():
        rules.append(f"-A -t {svc.host}:{svc.port} -s {svc.scheduler}")
        rules += [f"-a -t {svc.host}:{svc.port} -r {b.host}:{b.port} -m -w {b.weight}"
                  for b in svc.backends]
    ipvsadm = ["nsenter", f"--net=/run/netns/{ns}", "ipvsadm"]
    started = time.perf_counter()
    subprocess.run([*ipvsadm, "-C"], check=True)
    subprocess.run([*ipvsadm, "-R"], input="\n".join(rules) + "\n", text=True, check=True)
    return time.perf_counter() - started


def measure(ns: str, n: int, backends: int) -> dict[str, float]:
    desired = services(n, backends)
    with IpvsDataplane(netns=ns) as plane:
        # Warm-up, not timed: opens the socket (a child process enters the namespace) and
        # has the kernel load the scheduler's module on first use (a modprobe process).
        plane.sync(services(1, 1))
        plane.flush()
        create = timed(lambda: plane.sync(desired))
        resync = timed(lambda: plane.sync(desired, full=True))
        # Each round gives the first service's first backend another weight.
        change = [timed(partial(plane.sync, one_change(desired, w)))
                  for w in range(2, 2 + ROUNDS)]
        change_full = [timed(partial(plane.sync, one_change(desired, w), full=True))
                       for w in range(10, 10 + ROUNDS)]
        plane.flush()
        portal = portal_restore(ns, desired)
        plane.flush()
    return {"create": create, "resync": resync, "change": statistics.median(change),
            "change, full": statistics.median(change_full), "Portal -C/-R": portal}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def run_here(sizes: list[int], backends: int) -> None:
    gc.freeze()  # the desired state is long-lived: keep the collector off it
    where = "in the test VM (qemu TCG)" if os.environ.get("IPVS_VM") == "1" else "on this host"
    print(f"IPVS sync latency {where}, {backends} backends per service (wrr, NAT)\n")
    columns = ["create", "resync", "change", "change, full", "Portal -C/-R"]
    print("| services | " + " | ".join(columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    with namespace("pes-ipvs-bench") as ns:
        for n in sizes:
            row = measure(ns, n, backends)
            print(f"| {n} x {backends} | " + " | ".join(ms(row[c]) for c in columns) + " |",
                  flush=True)


def run_in_vm(argv: list[str]) -> int:
    """Boot the test VM and run this script inside it; its exit code."""
    cmd = shlex.join([sys.executable, str(Path(__file__).resolve()), "--inside", *argv])
    print("no IPVS in this kernel: running in the test VM (tests/vm/ipvs-vm.sh)",
          file=sys.stderr)
    done = subprocess.run([str(REPO / "tests" / "vm" / "ipvs-vm.sh"), cmd], check=False,
                          stdout=subprocess.PIPE, text=True)
    # The console carries the firmware's and the guest's chatter: keep the table.
    for line in done.stdout.splitlines():
        if line.startswith(("IPVS sync", "|", "GUEST-EXIT")) or not line.strip():
            print(line)
    return done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside and not ipvs_available():
        return run_in_vm(sys.argv[1:])
    run_here([int(s) for s in args.sizes.split(",")], args.backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
