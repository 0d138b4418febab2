"""nftables data plane: one table (`ip portal_es`), programmed over nf_tables netlink
directly, one atomic transaction (netlink batch) per sync.

How a sync works (the layout is in `nft_ruleset`'s docstring):
1. Each desired service becomes its objects (`service_objects`, pure, so remembered per
   service while it stays equal): a chain (and, with an upper_threshold, a chain per
   server) and its elements in the shared maps.
2. Incremental sync (the normal case): only services whose desired VirtualService differs
   from the last successful sync are touched - chains whose rules differ flushed and
   refilled, elements whose data differs replaced - in one batch. 10,000 unchanged services
   cost a dict walk, not a kernel round trip.
3. Full sync (first sync, `full=True`, the sync after any failure): the live table is read
   (netlink dumps of chains, rules, sets and map elements) and repaired in one batch: missing
   objects added, differing ones refilled, foreign ones removed; objects already right are
   not touched.
4. The kernel applies a batch completely or not at all: on refusal the old ruleset is left
   byte-identical and DataplaneError carries the kernel's error for the failing command. An
   incremental sync that fails is retried once as a full one (a refusal there usually means
   the table was edited behind our back).

Established connections are never cut by a sync: only a connection's first packet traverses
nat chains; after that conntrack carries it, whatever happens to the rules.

Limits (measured, kernel 6.18, nft 1.0.6, 2 loaded CPUs; bench/kernel_sync.py):
- A set per service does not scale: nf_tables keeps a table's sets in a list (anonymous set
  names are allocated by walking it) and nft dumps every set for its cache before each
  command: 10,000 x 10 took 38-47 s to create, one change 0.2-0.5 s. Hence a fixed number of
  shared sets (49, whatever the number of services).
- A map looked up by many rules does not either: adding an element validates it against
  every rule that binds the map (26.7 s for 10,000 such rules), and binding a lookup rule
  walks all the map's elements (70-145 ms per rule at 300,000 elements).
- Any rule holding a `meta set`, `immediate`, lookup or nat expression, or any jump/goto
  element, makes the commit re-validate every chain reachable from the base chains: ~5 ms
  at 10,000 services, 20x that when each service chain jumped to a shared chain. Hence
  service chains of numgen/jhash + `ct mark set` only: a weight or server change costs no
  validation; adding or removing a service (its dispatch element) does.
- The kernel rejects reads of registers the same rule did not write (ENODATA), so values
  cannot pass between chains in registers: the slot goes through the conntrack mark.
- A set dump restarts the kernel's hash walk for every 32 KB it returns: O(n^2), 0.4 s of
  kernel CPU for one 100,000-element map. Hence 16 shards per slot map; maps the kernel
  reports empty (element count, 6.16+) are not dumped at all.
- libnftables costs 9-17 us of user CPU per map element whatever the syntax (text, JSON), and
  ~30 us per element to list; the kernel needs ~2-4 us. Hence netlink without libnftables.
  Result at 10,000 x 10: create ~0.9 s CPU, full resync ~0.45 s, one change ~2 ms.
- upper_threshold is a hard cap (`ct count over N drop`; the client's retry is rescheduled),
  lower_threshold is not used; the mark bit 0x2000 is ORed into the packet mark of a
  connection's first packet (masquerade request); the slot rides in its conntrack mark
  (restored before the packet leaves our chains), the saved ct mark in its skb->priority.

Ownership: portal-es owns the table `ip portal_es` and nothing else; `flush` deletes that
table only. Other tables (firewalls, kube-proxy, docker) are never read or written.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import compress
from operator import is_not
from typing import TypeVar

from portal_es.adapters.kernel import DataplaneError, Drift, SyncReport
from portal_es.adapters.kernel import nft_netlink as nl
from portal_es.adapters.kernel import nft_ruleset as rs
from projections.l4 import VirtualService

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
_RECV_BYTES = 1 << 20
_REPLY_TIMEOUT_S = 30.0


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


class _Netlink:
    """An nf_tables netlink socket, bound to a network namespace.

    With a namespace, every call runs on one worker thread that entered it and the socket is
    opened there (a socket belongs to the namespace it was created in); the calling thread's
    namespace is never changed."""

    def __init__(self, netns: str | None) -> None:
        self._pool: ThreadPoolExecutor | None = None
        if netns is not None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"nft-{netns}",
                                            initializer=_enter_netns, initargs=(netns,))
        self._seq = int(time.time())
        self._sndbuf = 0
        self._sock: socket.socket = self._run(self._open)

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_NETFILTER)
        try:
            # Errors carry the kernel's extended message and only the failing header.
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, 4 << 20)
            sock.bind((0, 0))
        except OSError:
            sock.close()
            raise
        return sock

    def _run(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            return fn()
        return self._pool.submit(fn).result()

    def _next_seq(self, count: int) -> int:
        first = self._seq
        self._seq = (self._seq + count + 2) & 0x7FFFFFFF
        return first

    def transact(self, messages: list[nl.Message]) -> None:
        """Send one batch; raise DataplaneError with the first refused command's error."""
        if messages:
            self._run(lambda: self._transact(messages))

    def _transact(self, messages: list[nl.Message]) -> None:
        first = self._next_seq(len(messages))
        data = nl.batch(messages, first)
        if len(data) + 4096 > self._sndbuf:  # one datagram: the socket must hold it whole
            self._sndbuf = _set_buffer(self._sock, SO_SNDBUFFORCE, socket.SO_SNDBUF,
                                       len(data) + 65536)
        self._sock.sendall(data)
        last = first + len(messages)
        errors: list[tuple[int, int, str]] = []
        for reply in self._replies(lambda r: r.seq == last and r.kind == nl.NLMSG_ERROR):
            if reply.kind == nl.NLMSG_ERROR and reply.error:
                errors.append((reply.seq, -reply.error, reply.extack_message()))
        if errors:
            seq, code, detail = min(errors)
            what = messages[seq - first - 1].what if first < seq <= last else "batch"
            raise DataplaneError(
                f"nftables refused the change (nothing was applied): {what}: "
                f"{os.strerror(code)}{f' ({detail})' if detail else ''}")

    def dump(self, request: Callable[[int], bytes]) -> list[nl.Reply]:
        """The objects of one dump; OSError (errno) when the kernel refuses it."""
        return self._run(lambda: self._dump(request))

    def dumps(self, requests: list[Callable[[int], bytes]]) -> list[list[nl.Reply]]:
        """Several dumps in one hand-over to the namespace thread (a full sync reads ~50)."""
        return self._run(lambda: [self._dump(r) for r in requests])

    def _dump(self, request: Callable[[int], bytes]) -> list[nl.Reply]:
        seq = self._next_seq(1)
        self._sock.sendall(request(seq))
        out: list[nl.Reply] = []
        for reply in self._replies(lambda r: r.seq == seq and r.kind in (nl.NLMSG_DONE,
                                                                          nl.NLMSG_ERROR)):
            if reply.seq != seq:
                continue
            if reply.kind == nl.NLMSG_ERROR and reply.error:
                raise OSError(-reply.error, os.strerror(-reply.error))
            if reply.kind not in (nl.NLMSG_DONE, nl.NLMSG_ERROR):
                out.append(reply)
        return out

    def _replies(self, last: Callable[[nl.Reply], bool]) -> list[nl.Reply]:
        """Read replies until `last` matches one (bounded by a timeout)."""
        out: list[nl.Reply] = []
        deadline = time.monotonic() + _REPLY_TIMEOUT_S
        while True:
            self._sock.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                buf = self._sock.recv(_RECV_BYTES)
            except TimeoutError:
                raise DataplaneError("nftables: no answer from the kernel") from None
            for reply in nl.replies(buf):
                out.append(reply)
                if last(reply):
                    return out

    def close(self) -> None:
        self._run(self._sock.close)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> int:
    """Socket buffer of at least `size` bytes (the FORCE variant ignores rmem/wmem_max but
    needs CAP_NET_ADMIN, which nf_tables needs anyway)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, plain)) // 2  # the kernel doubles it


def nftables_available() -> bool:
    """Whether nf_tables answers here (kernel support, CAP_NET_ADMIN): the `auto` choice."""
    try:
        link = _Netlink(None)
    except OSError:
        return False
    try:
        link.dump(nl.get_tables)
        return True
    except (OSError, DataplaneError):
        return False
    finally:
        link.close()


class NftablesDataplane:
    """The L4Dataplane over nftables (see the module docstring)."""

    name = "nftables"

    def __init__(self, netns: str | None = None) -> None:
        self._link = _Netlink(netns)
        self._lock = threading.Lock()  # one sync at a time; guards the two below
        # After a successful sync: what was asked, and the objects that were programmed.
        # None = unknown (start, failure, flush): the next sync reads the kernel.
        self._desired: dict[str, VirtualService] | None = None
        self._applied: dict[str, rs.ServiceObjects] = {}
        # service_objects is pure: its last result per id, reused while the service is equal
        # (a periodic full sync of 10,000 unchanged services then builds nothing).
        self._made: dict[str, tuple[VirtualService, rs.ServiceObjects]] = {}

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
        changed = _changed(last, desired)
        want = self._objects({sid: desired[sid] for sid in changed if sid in desired})
        plan = rs.plan_incremental(want, self._applied, changed)
        self._apply(plan)
        for sid in changed:
            if sid in want:
                self._applied[sid] = want[sid]
            else:
                self._applied.pop(sid, None)
        self._desired = dict(desired)
        return plan

    def _objects(self, desired: Mapping[str, VirtualService]) -> dict[str, rs.ServiceObjects]:
        """rs.service_objects for each service, remembered per id. Refuses (DataplaneError)
        before anything touches the kernel: a sync is applied whole or not at all."""
        out = {}
        made = self._made
        for sid, vs in desired.items():
            hit = made.get(sid)
            if hit is None or (hit[0] is not vs and hit[0] != vs):
                reason = rs.unsupported(vs)
                if reason:
                    raise DataplaneError(f"service {sid}: {reason}")
                hit = made[sid] = (vs, rs.service_objects(vs))
            out[sid] = hit[1]
        if len(made) > 2 * len(desired) + 100:  # forget removed services now and then
            self._made = {sid: made[sid] for sid in desired if sid in made}
        return out

    def _sync_full(self, desired: Mapping[str, VirtualService]) -> rs.Plan:
        want = self._objects(desired)
        plan = rs.plan_repair(want, self._read())
        self._apply(plan)
        self._applied = want
        self._desired = dict(desired)
        return plan

    def _apply(self, plan: rs.Plan) -> None:
        if not plan.tx:
            return
        self._desired = None  # until this transaction succeeds, trust nothing
        try:
            self._link.transact(plan.tx.messages())
        except DataplaneError:
            self._made.clear()  # rebuild every object on the retry
            raise

    # --- reading the kernel ---------------------------------------------------------------

    def _dumps(self, requests: list[Callable[[int], bytes]], what: str
               ) -> list[list[nl.Reply]]:
        try:
            return self._link.dumps(requests)
        except OSError as e:
            raise DataplaneError(f"cannot read {what} of table {rs.FAMILY} {rs.TABLE}: "
                                 f"{e.strerror}") from e

    def _table_exists(self) -> bool:
        # Dumps are asked for family ip (nfgenmsg): other families are filtered by the kernel.
        (tables,) = self._dumps([nl.get_tables], "tables")
        return rs.TABLE in {nl.text(nl.object_attributes(r).get(1, b"")) for r in tables}

    def _read(self) -> rs.LiveTable:
        """The live table. The sticky set is not read: it can hold a million client entries
        that nobody compares."""
        if not self._table_exists():
            return rs.LiveTable()
        live = rs.LiveTable(exists=True)
        chains, rules, sets = self._dumps(
            [nl.get_chains, partial(nl.get_rules, rs.TABLE), partial(nl.get_sets, rs.TABLE)],
            "chains, rules and sets")
        table = rs.TABLE.encode() + b"\0"
        for r in chains:
            a = nl.object_attributes(r)
            if a.get(1) == table:
                chain = nl.decode_chain(a)
                live.chains[chain.name] = chain
        for r in rules:
            chain_name, expressions = nl.decode_rule(nl.object_attributes(r))
            live.rules.setdefault(chain_name, []).append(expressions)
        empty: set[str] = set()
        for r in sets:
            a = nl.object_attributes(r)
            spec = nl.decode_set(a)
            live.sets[spec.name] = spec
            if nl.set_count(a) == 0:
                empty.add(spec.name)
        # Maps the kernel says are empty are not dumped (most shards, on small tables).
        ours = [n for n in rs.ELEMENT_MAPS if live.sets.get(n) == rs.SETS[n]]
        live.elements = {n: {} for n in ours if n in empty}
        names = [n for n in ours if n not in empty]
        dumps = self._dumps([partial(nl.get_elements, rs.TABLE, n) for n in names], "maps")
        for name, replies in zip(names, dumps, strict=True):
            live.elements[name] = _elements(rs.SETS[name], replies)
        return live

    def drift(self, desired: Mapping[str, VirtualService]) -> Drift:
        supported = {sid: vs for sid, vs in desired.items() if rs.unsupported(vs) is None}
        with self._lock:
            want = self._objects(supported)
            live = self._read()
        missing, unexpected, different = rs.drift(want, live)
        return Drift(missing=missing, unexpected=unexpected, different=different)

    def flush(self) -> None:
        """Delete the table `ip portal_es` (and only it)."""
        with self._lock:
            self._desired = None
            if not self._table_exists():
                return
            self._link.transact([nl.delete_table(rs.TABLE)])

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> NftablesDataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _elements(spec: nl.SetSpec, replies: list[nl.Reply]) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for r in replies:
        if spec.data_type == nl.NFT_DATA_VERDICT:
            out.update(nl.decode_elements(r.payload))
        else:
            out.update(nl.decode_value_elements(r.payload, spec.key_len, spec.data_len))
    return out


def _changed(last: Mapping[str, VirtualService], desired: Mapping[str, VirtualService]
             ) -> list[str]:
    """Ids whose service differs between two syncs (added and removed ones included).
    An identity test, run in C (map/compress), finds the candidates; equality decides for
    those. Callers that pass the unchanged VirtualService objects again pay ~1 ms at 10,000
    services; rebuilt but equal ones cost a dataclass comparison each (~6 us)."""
    candidates = compress(desired, map(is_not, desired.values(), map(last.get, desired)))
    changed = [sid for sid in candidates if last.get(sid) != desired[sid]]
    added = sum(1 for sid in changed if sid not in last)
    if len(desired) - added == len(last):  # every old id is still desired: nothing removed
        return changed
    gone = last.keys() - desired.keys()
    return changed + [sid for sid in last if sid in gone]

