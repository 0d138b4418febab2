"""nftables data plane: one table (`ip portal_es`), programmed through libnftables' JSON API
in-process, one atomic transaction per sync.

How a sync works (the layout is in `nft_ruleset`'s docstring):
1. Each desired service becomes its objects (`service_rules`, pure): a map element, a chain,
   and for persistence/limits a chain and an affinity set per backend.
2. Incremental sync (the normal case): only services whose desired VirtualService differs
   from the last successful sync are touched - their chains flushed and refilled, obsolete
   ones deleted, new ones added - in one transaction. 10,000 unchanged services cost a dict
   walk, not a kernel round trip.
3. Full sync (first sync, `full=True`, the sync after any failure): the live table is read
   (`list table`, JSON) and repaired in one transaction: missing objects added, differing
   ones refilled, foreign ones removed; objects already right are not touched.
4. The kernel applies a batch completely or not at all: on refusal the old ruleset is left
   byte-identical and DataplaneError carries nft's message. An incremental sync that fails
   is retried once as a full one (a refusal there usually means the table was edited behind
   our back).

Established connections are never cut by a sync: only a connection's first packet traverses
nat chains; after that conntrack carries it, whatever happens to the rules.

Limits (measured, nft 1.0.6 / kernel 6.18): every multi-backend service owns one anonymous
set (its scheduler map) and nf_tables keeps a table's sets in a list, so cost grows with the
number of services: ~1 s to create 1,000 x 10, ~22 s for 10,000 x 10; one change ~10 ms at
1,000 services (nft dumps all sets to build its cache for every `add rule`), ~0.4 s at 10,000.
The way out is one shared `ip daddr . l4proto . dport . slot` map for all services, which nft
1.0.6's JSON parser cannot express (it segfaults on concatenated map data / typeof keys), so
it needs the text syntax. Also: upper_threshold is a hard cap (`ct count over N drop`; the
client's retry is rescheduled), lower_threshold is not used; the mark bit 0x2000 is ORed into
the packet mark of a connection's first packet (masquerade request).

Ownership: portal-es owns the table `ip portal_es` and nothing else; `flush` deletes that
table only. Other tables (firewalls, kube-proxy, docker) are never read or written.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from portal_es.adapters.kernel import DataplaneError, Drift, SyncReport
from portal_es.adapters.kernel import nft_ruleset as rs
from projections.l4 import VirtualService

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    """Move the calling thread into /run/netns/`name` (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class _Nft:
    """A libnftables context, bound to a network namespace.

    With a namespace, every call runs on one worker thread that entered it: the context's
    netlink socket then lives there, and the calling thread's namespace is never changed."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._pool: ThreadPoolExecutor | None = None
        if netns is not None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"nft-{netns}",
                                            initializer=_enter_netns, initargs=(netns,))
        self._ctx: Any = self._run(self._open)

    @staticmethod
    def _open() -> Any:
        import nftables  # type: ignore[import-untyped]  # needs Debian's libnftables1

        ctx = nftables.Nftables()
        ctx.set_json_output(True)
        ctx.set_handle_output(False)
        return ctx

    def _run(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            return fn()
        return self._pool.submit(fn).result()

    def json(self, commands: list[dict[str, Any]], terse: bool = False) -> tuple[int, Any, str]:
        def call() -> tuple[int, Any, str]:
            self._ctx.set_terse_output(terse)
            rc, out, err = self._ctx.json_cmd({"nftables": commands})
            return int(rc), out, str(err)

        return self._run(call)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def nftables_available() -> bool:
    """Whether libnftables loads and the kernel answers (CAP_NET_ADMIN): the `auto` choice."""
    try:
        nft = _Nft(None)
    except (ImportError, OSError):
        return False
    rc, _, _ = nft.json([{"list": {"tables": {"family": rs.FAMILY}}}])
    return rc == 0


_TABLE_REF = {"family": rs.FAMILY, "name": rs.TABLE}


class NftablesDataplane:
    """The L4Dataplane over nftables (see the module docstring)."""

    name = "nftables"

    def __init__(self, netns: str | None = None) -> None:
        self._nft = _Nft(netns)
        self._lock = threading.Lock()  # one sync at a time; guards the two below
        # After a successful sync: what was asked, and the objects that were programmed.
        # None = unknown (start, failure, flush): the next sync reads the kernel.
        self._desired: dict[str, VirtualService] | None = None
        self._applied: dict[str, rs.ServiceRules] = {}

    def unsupported(self, service: VirtualService) -> str | None:
        return rs.unsupported(service)

    # --- sync -----------------------------------------------------------------------------

    def sync(self, desired: Mapping[str, VirtualService], full: bool = False) -> SyncReport:
        started = time.perf_counter()
        with self._lock:
            if full or self._desired is None:
                plan = self._sync_full(desired)
            else:
                try:
                    plan = self._sync_incremental(desired)
                except DataplaneError:
                    plan = self._sync_full(desired)
        return SyncReport(added=plan.added, changed=plan.changed, removed=plan.removed,
                          seconds=time.perf_counter() - started)

    def _sync_incremental(self, desired: Mapping[str, VirtualService]) -> rs.Plan:
        last = self._desired
        assert last is not None
        changed = [sid for sid, vs in desired.items()
                   if (old := last.get(sid)) is not vs and old != vs]
        changed += [sid for sid in last if sid not in desired]
        _refuse_unsupported({sid: desired[sid] for sid in changed if sid in desired})
        want = {sid: rs.service_rules(desired[sid]) for sid in changed if sid in desired}
        plan = rs.plan_incremental(want, self._applied, changed)
        self._apply(plan)
        for sid in changed:
            if sid in want:
                self._applied[sid] = want[sid]
            else:
                self._applied.pop(sid, None)
        self._desired = dict(desired)
        return plan

    def _sync_full(self, desired: Mapping[str, VirtualService]) -> rs.Plan:
        _refuse_unsupported(desired)
        want = rs.desired_rules(desired)
        plan = rs.plan_repair(want, self._read())
        self._apply(plan)
        self._applied = want
        self._desired = dict(desired)
        return plan

    def _apply(self, plan: rs.Plan) -> None:
        commands = plan.tx.commands()
        if not commands:
            return
        self._desired = None  # until this transaction succeeds, trust nothing
        rc, _, err = self._nft.json(commands)
        if rc != 0:
            raise DataplaneError(f"nftables refused the change (nothing was applied): "
                                 f"{_first_lines(err)}")

    # --- reading the kernel ---------------------------------------------------------------

    def _read(self) -> rs.LiveTable:
        """The live table. Terse: affinity sets can hold many thousand client entries that
        nobody compares; the services map's elements are read separately."""
        rc, out, err = self._nft.json([{"list": {"table": _TABLE_REF}}], terse=True)
        if rc != 0:
            if "No such file or directory" in err:
                return rs.LiveTable()
            raise DataplaneError(f"cannot read table {rs.FAMILY} {rs.TABLE}: {_first_lines(err)}")
        objects = [o for o in out["nftables"] if "metainfo" not in o]
        if any(o.get("map", {}).get("name") == rs.SERVICES_MAP for o in objects):
            rc, out, err = self._nft.json([{"list": {"map": {**_TABLE_REF, "table": rs.TABLE,
                                                              "name": rs.SERVICES_MAP}}}])
            if rc != 0:
                raise DataplaneError(f"cannot read map {rs.SERVICES_MAP}: {_first_lines(err)}")
            objects = [o for o in objects if o.get("map", {}).get("name") != rs.SERVICES_MAP]
            objects += [o for o in out["nftables"] if "map" in o]
        return rs.parse_live(objects)

    def drift(self, desired: Mapping[str, VirtualService]) -> Drift:
        want = rs.desired_rules({sid: vs for sid, vs in desired.items()
                                 if rs.unsupported(vs) is None})
        with self._lock:
            live = self._read()
        missing, unexpected, different = rs.drift(want, live)
        return Drift(missing=missing, unexpected=unexpected, different=different)

    def flush(self) -> None:
        """Delete the table `ip portal_es` (and only it)."""
        with self._lock:
            self._desired = None
            if not self._read().exists:
                return
            rc, _, err = self._nft.json([{"delete": {"table": _TABLE_REF}}])
            if rc != 0:
                raise DataplaneError(f"cannot delete table {rs.FAMILY} {rs.TABLE}: "
                                     f"{_first_lines(err)}")

    def close(self) -> None:
        self._nft.close()

    def __enter__(self) -> NftablesDataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse_unsupported(services: Mapping[str, VirtualService]) -> None:
    """Refuse before touching the kernel: a sync is applied whole or not at all."""
    for sid, service in services.items():
        reason = rs.unsupported(service)
        if reason:
            raise DataplaneError(f"service {sid}: {reason}")


def _first_lines(err: str, limit: int = 6) -> str:
    """nft's error text (it can repeat itself once per failed command), trimmed."""
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    return " | ".join(lines[:limit]) if lines else "no message"
