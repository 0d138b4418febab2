"""Desired L4 state -> nf_tables objects, and the plan that makes the kernel hold them.

Pure: no I/O. The adapter (`nftables.py`) reads the kernel (netlink dumps) and sends what
this module plans as ONE netlink batch - one atomic transaction - per sync; `nft_netlink.py`
is the wire format.

Table layout (one table owned by portal-es; IPv4 only, see `unsupported`), as
`nft list table ip portal_es` shows it (K = the service's shard, 0-15)::

    table ip portal_es {
        # dispatch: one verdict-map lookup per new connection
        map services { type ipv4_addr . inet_proto . inet_service : verdict
                       elements = { 10.0.0.1 . tcp . 80 : jump svc_tcp-10_0_0_1-80, ... } }
        # (service, slot) -> server; a server holds one slot per weight unit
        map backends_K { type ipv4_addr . inet_proto . inet_service . mark :
                              ipv4_addr . inet_service
                         elements = { 10.0.0.1 . tcp . 80 . 0x07000000 : 10.0.1.1 . 8080,
                                      10.0.0.1 . tcp . 80 . 0x07000001 : 10.0.1.2 . 8080 } }
        map tokens_K  { type ... . mark : mark }     # persistence: slot -> server token
        map limited_K { type ... . mark : verdict }  # upper_threshold: slot -> server chain
        set sticky { type ipv4_addr . inet_proto . inet_service . ipv4_addr . mark
                     size 1048576; flags dynamic,timeout }  # persistence: client + server

        chain prerouting {   # and `output` (hook output, priority -100: LB-local clients)
            type nat hook prerouting priority dstnat; policy accept;
            ip daddr . meta l4proto . th dport @services meta priority set ct mark
                ip daddr . meta l4proto . th dport vmap @services     # save, run the service
            ip daddr . meta l4proto . th dport @services jump select  # DNAT by its slot
            ip daddr . meta l4proto . th dport @services ct mark set meta priority
        }
        chain postrouting { type nat hook postrouting priority srcnat; policy accept;
                            meta mark & 0x00002000 == 0x00002000 masquerade }
        chain select { ct mark 0x07000000/8 goto select_7 ... }     # a rule per shard
        chain select_7 {
            ct mark set meta priority meta mark set meta mark | 0x00002000
                dnat ip to ip daddr . meta l4proto . th dport . ct mark map @backends_7
            ip daddr . meta l4proto . th dport . ct mark vmap @limited_7
        }
        chain token_7 { ct mark set ip daddr . meta l4proto . th dport . ct mark
                            map @tokens_7 }

        # one chain per service: its slot into the conntrack mark
        chain svc_tcp-10_0_0_1-80 { ct mark set numgen inc mod 3 offset 117440512 }
        # persistence: a rule per server first (remembered client: refresh, that server),
        # then a fresh pick, turned into its server's token and remembered
        chain svc_tcp-10_0_0_2-80 {
            ct mark set 0x0733c2f1 ip daddr . meta l4proto . th dport
                . ip saddr & 255.255.255.0 . ct mark @sticky
                update @sticky { ... timeout 300s } return                    # per server
            ct mark set numgen inc mod 2 offset 117440512 jump token_7
            update @sticky { ip daddr . meta l4proto . th dport . ip saddr & 255.255.255.0
                             . ct mark timeout 300s }
        }
        # upper_threshold: the slot picks a chain per server, which counts connections
        chain be_tcp-10_0_0_3-80_10_0_1_1-8080 {
            ct mark set meta priority
            ct count over 10 drop
            meta mark set meta mark | 0x00002000 meta l4proto tcp dnat to 10.0.1.1:8080
        }
    }

Why this shape (each point measured, see nftables.py):
- No set per service: nf_tables keeps a table's sets in a list and nft fetches them all for
  its cache, so per-service sets made every operation O(services).
- Each map is looked up (with data) by at most two rules, in shared chains: adding an element
  validates it against every such rule (26.7 s for a map shared by 10,000 service rules),
  and binding such a rule walks all the map's elements.
- A service chain holds only numgen/jhash and `ct mark set`: expressions without a kernel
  validate hook. A rule with `meta set`, `immediate` (verdicts) or a lookup makes the commit
  re-validate every chain reachable from the base chains (~5 ms at 10,000 services), so
  changing a service's weights or servers stays O(1) in the kernel. Adding or removing a
  service (a jump element) still pays that validation.
- The slot therefore travels in the conntrack mark (the kernel refuses a register read that
  the same rule did not write, and `meta set` has a validate hook); the dispatch rule saves
  the ct mark in skb->priority and every exit puts it back, so other users of ct mark
  (connmark) see no change. skb->priority of a forwarded packet is recomputed from its TOS
  by ip_forward() after prerouting; only the first packet of an LB-local client's
  connection leaves with its priority changed (to its ct mark, usually 0). The packet mark
  only gets 0x2000 ORed in, on DNAT.
- Persistence: `sticky` entries of a server that is no longer active are never matched
  again (its rule is gone) and expire; those of a removed service expire too.
- Slot maps are sharded 16 ways (shard in the slot's top byte, numgen/jhash `offset`): the
  kernel restarts its hash walk for every 32 KB of a set dump, so dumping one 100,000-element
  map cost 0.4 s of kernel CPU; sixteen maps of ~6,000 cost 1/16 of it.

Only the first packet of a connection traverses nat chains; the rest follow conntrack, so
replacing a service's rules or elements never touches established connections.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, reduce
from math import gcd
from socket import inet_aton, inet_ntoa

from portal_es.adapters.kernel import nft_netlink as nl
from portal_es.adapters.kernel.nft_netlink import (
    Bitwise,
    Cmp,
    Connlimit,
    CtLoad,
    CtSet,
    Dnat,
    Dynset,
    Hook,
    Immediate,
    Jhash,
    Lookup,
    Masquerade,
    MetaLoad,
    MetaSet,
    Numgen,
    Payload,
    Rule,
    SetSpec,
)
from portal_es.domain.models import id_part
from projections.l4 import Backend, VirtualService

FAMILY = "ip"
TABLE = "portal_es"
SERVICES_MAP = "services"
STICKY_SET = "sticky"
SELECT_CHAIN = "select"
SHARDS = 16
SHARD_SHIFT = 24  # slot values: shard << 24 | slot
# Packet mark bit telling postrouting "this new connection was DNATed by us: masquerade it".
# kube-proxy uses 0x4000 and 0x8000; this bit stays clear of both.
MASQ_MARK = 0x2000
JHASH_SEED = 0x706F7274  # fixed: the same source must hash to the same backend on every node
# A service's slot count is its total weight (reduced by the gcd); above this it is scaled
# down (each active server keeps >= 1 slot, shares stay within 1/MAX_SLOTS of the weights).
MAX_SLOTS = 1024
# Largest affinity timeout (kept from the per-set design: u32 milliseconds).
MAX_PERSISTENCE = (2**32 - 1) // 1000
# Remembered (service, client, server) entries of all persistent services together; when
# full, new clients are balanced without being remembered (the update fails, nothing else).
STICKY_SIZE = 1 << 20
NAT_PRIORITY = -100  # dstnat: before routing, so the DNATed address is what gets routed
SRCNAT_PRIORITY = 100

SCHEDULERS: tuple[tuple[str, str, str], ...] = (
    ("rr", "numgen inc mod N", "round robin over the active servers; weights ignored "
     "(weight 0 = no new connections), as IPVS rr"),
    ("wrr", "numgen inc mod W", "round robin over the weight slots, interleaved "
     "(smooth WRR sequence: 5:1:1 -> a a b a c a a)"),
    ("sh", "jhash ip saddr mod W", "source hashing over the weight slots: a client "
     "address always lands on the same server while the server set is unchanged"),
    ("dh", "jhash ip daddr mod W", "destination hashing over the weight slots (for a "
     "virtual service the destination is its address, so one server takes all)"),
    ("lc", "numgen random mod W", "no connection counts in nftables: weighted random"),
    ("wlc", "numgen random mod W", "no connection counts in nftables: weighted random"),
    ("sed", "numgen random mod W", "no connection counts in nftables: weighted random"),
    ("nq", "numgen random mod W", "no connection counts in nftables: weighted random"),
    ("lblc", "numgen random mod W", "locality-based least-connection: the destination "
     "is the service address, and connection counts are not available: weighted random"),
    ("lblcr", "numgen random mod W", "as lblc: weighted random"),
)
"""How each IPVS scheduler is expressed: the service chain computes a slot
(`ct mark set <expression>`) and `select` looks up (service, slot) in the shared `backends`
map. W = sum of the active servers' weights reduced by their gcd (at most MAX_SLOTS, else
scaled), N = number of active servers; each server holds W_i slots. Active = weight > 0 and
not draining: only they take new connections, established connections continue through
conntrack."""


def scheduler_table() -> list[tuple[str, str, str]]:
    """(scheduler, nftables expression, behaviour) rows, for the README and the API docs."""
    return list(SCHEDULERS)


_SCHEDULER_MODE = {name: expr.split(" mod ")[0] for name, expr, _ in SCHEDULERS}


# --- names: small pure functions of the service identity --------------------------------------


def service_chain(service_id: str) -> str:
    return f"svc_{service_id}"


def backend_id(backend: Backend) -> str:
    return f"{id_part(backend.host)}-{backend.port}"


def backend_chain(service_id: str, backend: Backend) -> str:
    return f"be_{service_id}_{backend_id(backend)}"


def service_id(protocol: str, host: str, port: int) -> str:
    """Portal's id of the service behind a map key (for reporting what was live)."""
    return f"{protocol}-{id_part(host)}-{port}"


def backends_map(shard: int) -> str:
    return f"backends_{shard}"


def tokens_map(shard: int) -> str:
    return f"tokens_{shard}"


def limited_map(shard: int) -> str:
    return f"limited_{shard}"


def select_chain(shard: int) -> str:
    return f"select_{shard}"


def token_chain(shard: int) -> str:
    return f"token_{shard}"


# --- what this data plane refuses --------------------------------------------------------------


def _is_ipv6(address: str) -> bool:
    # Addresses arrive validated and normalised by the domain model: a colon means IPv6.
    # (ipaddress.ip_address would cost 30 us each, 0.3 s for 10,000 services.)
    return ":" in address


def unsupported(service: VirtualService) -> str | None:
    """Why the nftables data plane cannot express `service` (None when it can)."""
    if _is_ipv6(service.host):
        return ("the nftables balancer handles IPv4 services only (table ip portal_es); "
                f"IPv6 service address {service.host} needs --balancer ipvs")
    if service.persistence > MAX_PERSISTENCE:
        return f"persistence {service.persistence} s exceeds nftables' limit ({MAX_PERSISTENCE} s)"
    for b in service.backends:
        if b.forwarder == "g":
            return (f"server {b.host}:{b.port}: forwarder 'g' (direct routing) cannot be done by "
                    "the nftables balancer: it rewrites addresses (DNAT) and cannot hand a packet "
                    "unchanged to a server's MAC address; use forwarder 'm' (masquerade) or "
                    "--balancer ipvs")
        if b.forwarder == "i":
            return (f"server {b.host}:{b.port}: forwarder 'i' (ip-in-ip tunnelling) cannot be "
                    "done by the nftables balancer: it rewrites addresses (DNAT) and does not "
                    "encapsulate; use forwarder 'm' (masquerade) or --balancer ipvs")
        if _is_ipv6(b.host):
            return (f"server {b.host}: the nftables balancer forwards to IPv4 servers only "
                    "(DNAT cannot change the address family)")
    return None


# --- slots: which server each value of a service's selector picks -----------------------------


def _scale(weights: list[int], cap: int) -> list[int]:
    """`cap` slots shared in proportion to `weights` (largest remainder), each >= 1."""
    spare, total = cap - len(weights), sum(weights)
    exact = [w * spare / total for w in weights]
    share = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: share[i] - exact[i])
    for i in by_remainder[:spare - sum(share)]:
        share[i] += 1
    return [s + 1 for s in share]


def weights(service: VirtualService, active: tuple[Backend, ...]) -> tuple[int, ...]:
    """Slots per active server: its weight reduced by the gcd (rr: one each)."""
    raw = [b.weight for b in active]
    if service.scheduler == "rr" or min(raw) == max(raw):
        return (1,) * len(active)
    divisor = reduce(gcd, raw)
    out = [w // divisor for w in raw]
    cap = max(MAX_SLOTS, len(active))
    return tuple(out if sum(out) <= cap else _scale(out, cap))


@lru_cache(maxsize=4096)
def _sequence(weights: tuple[int, ...], smooth: bool) -> tuple[int, ...]:
    """Server index per slot. Smooth: nginx's smooth weighted round robin (5:1:1 ->
    a a b a c a a rather than a a a a a b c); else one run per server."""
    if not smooth or max(weights) == 1:
        return tuple(i for i, w in enumerate(weights) for _ in range(w))
    current = [0] * len(weights)
    total = sum(weights)
    order = []
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return tuple(order)


def slots(service: VirtualService, active: tuple[Backend, ...]) -> tuple[int, ...]:
    """The index (into `active`) of the server behind each slot 0..W-1. Interleaved for wrr
    (consecutive connections spread); hashing and random selectors do not care."""
    return _sequence(weights(service, active), service.scheduler == "wrr")


def shard_of(key: bytes) -> int:
    """The shard of a service (by its map key prefix): spreads services evenly."""
    return zlib.crc32(key) % SHARDS


def tokens(active: tuple[Backend, ...], shard: int) -> list[int]:
    """A token per server (a slot value above any real slot), a function of its address and
    port alone, so that a server keeps its token - and its clients their affinity - when
    other servers come and go; collisions within the service are resolved by probing in
    address order."""
    base = shard << SHARD_SHIFT
    taken: set[int] = set()
    by_key: dict[tuple[str, int], int] = {}
    for b in sorted(active, key=lambda b: b.key):
        t = MAX_SLOTS + zlib.crc32(f"{b.host}:{b.port}".encode()) % (0xFFFFFF - MAX_SLOTS)
        while t in taken:
            t = MAX_SLOTS + (t + 1 - MAX_SLOTS) % (0xFFFFFF - MAX_SLOTS)
        taken.add(t)
        by_key[b.key] = base | t
    return [by_key[b.key] for b in active]


@lru_cache(maxsize=SHARDS)
def _slot_values(shard: int) -> tuple[bytes, ...]:
    """host32(shard << 24 | slot) for slot < MAX_SLOTS: element keys are built per slot."""
    base = shard << SHARD_SHIFT
    return tuple(nl.host32(base | s) for s in range(MAX_SLOTS))


def _slot_value(shard: int, slot: int) -> bytes:
    return _slot_values(shard)[slot] if slot < MAX_SLOTS else \
        nl.host32(shard << SHARD_SHIFT | slot)


# --- expressions --------------------------------------------------------------------------------

R = nl.reg32
_NET, _TRANSPORT = nl.NFT_PAYLOAD_NETWORK_HEADER, nl.NFT_PAYLOAD_TRANSPORT_HEADER
_VERDICT = nl.NFT_REG_VERDICT
_RETURN = nl.Verdict(nl.NFT_RETURN)
# (service address, protocol, port) of the packet in words 0-2: the maps' key prefix
_SERVICE_KEY: Rule = (Payload(_NET, 16, 4, R(0)), MetaLoad(nl.NFT_META_L4PROTO, R(1)),
                      Payload(_TRANSPORT, 2, 2, R(2)))
# ... and the slot (the conntrack mark, see the module docstring) in word 3
_SLOT_KEY: Rule = (*_SERVICE_KEY, CtLoad(nl.NFT_CT_MARK, R(3)))
_IS_SERVICE: Rule = (*_SERVICE_KEY, Lookup(SERVICES_MAP, R(0)))


def _set_slot(reg: int) -> CtSet:
    return CtSet(nl.NFT_CT_MARK, reg)


def _restore_ct_mark(reg: int) -> Rule:
    """ct mark set meta priority: the conntrack mark the dispatch rule saved, put back."""
    return (MetaLoad(nl.NFT_META_PRIORITY, reg), _set_slot(reg))


def _mark_for_masquerade(reg: int) -> Rule:
    """meta mark set meta mark | 0x2000 (through register `reg`)"""
    return (MetaLoad(nl.NFT_META_MARK, reg),
            Bitwise(reg, reg, nl.host32(~MASQ_MARK & 0xFFFFFFFF), nl.host32(MASQ_MARK)),
            MetaSet(nl.NFT_META_MARK, reg))


def _selector(scheduler: str, total: int, shard: int) -> Rule:
    """ct mark set <shard << 24 | slot in [0, total)>: numgen or jhash with an offset, no
    expression with a validate hook (see the module docstring)."""
    return _selector_rule(_SCHEDULER_MODE.get(scheduler, "numgen random"), total, shard)[0]


@lru_cache(maxsize=4096)
def _selector_rule(mode: str, total: int, shard: int) -> tuple[Rule, bytes]:
    """The selector and its wire form, cached by a key that is cheap to hash (a Rule of
    dataclasses is not: 10,000 services share a few dozen selectors)."""
    rule = _selector_exprs(mode, total, shard)
    return rule, nl.encode_rule(rule)


def _selector_exprs(mode: str, total: int, shard: int) -> Rule:
    offset = shard << SHARD_SHIFT
    if mode.startswith("jhash") and total > 1:
        field_at = 12 if mode.endswith("saddr") else 16
        return (Payload(_NET, field_at, 4, 2), Jhash(2, 1, 4, total, JHASH_SEED, offset),
                _set_slot(1))
    kind = nl.NFT_NG_INCREMENTAL if mode == "numgen inc" or total == 1 else nl.NFT_NG_RANDOM
    return (Numgen(1, total, kind, offset), _set_slot(1))


def _client_key(netmask: str) -> Rule:
    """(service, client address & netmask, slot) in words 0-4: the sticky set key."""
    saddr: Rule = (Payload(_NET, 12, 4, R(3)),)
    if netmask and netmask != "255.255.255.255":
        saddr += (Bitwise(R(3), R(3), nl.ipv4(netmask), bytes(4)),)
    return (*_SERVICE_KEY, *saddr, CtLoad(nl.NFT_CT_MARK, R(4)))


def _backend_chain_rules(service: VirtualService, b: Backend) -> tuple[Rule, ...]:
    """upper_threshold services: the slot picked this server's chain (vmap @limited_K)."""
    rules: list[Rule] = [_restore_ct_mark(1)]
    if b.upper_threshold:
        # Connection limit (IPVS upper_threshold): above it new connections to this server are
        # dropped (the client's retry is scheduled afresh). Counted per rule: replacing this
        # chain restarts the count.
        rules.append((Connlimit(b.upper_threshold, nl.NFT_CONNLIMIT_F_INV),
                      Immediate(_VERDICT, nl.DROP)))
    # `meta l4proto` as nft writes "meta l4proto tcp dnat to a:p" (keeps `nft list` honest)
    rules.append((*_mark_for_masquerade(1), MetaLoad(nl.NFT_META_L4PROTO, 1),
                  Cmp(1, nl.protocol(service.protocol)[:1]), Immediate(1, nl.ipv4(b.host)),
                  Immediate(2, nl.port(b.port)[:2]), Dnat(1, 2)))
    return tuple(rules)


def _persistent_rules(service: VirtualService, toks: list[int], pick: Rule, shard: int
                      ) -> tuple[Rule, ...]:
    """Affinity without a set per service: `sticky` holds (service, client, server token).
    A rule per server finds the client's remembered server (refreshing the timeout) and
    returns with its token as the slot; else a fresh pick's slot is turned into its server's
    token (`token_K` chain) and remembered. A server that stops being active loses its rule
    (and its token its elements), so its clients are rescheduled, as with IPVS."""
    client = _client_key(service.netmask)
    remember = Dynset(STICKY_SET, R(0), service.persistence * 1000)
    rules: list[Rule] = []
    for token in toks:
        rules.append((Immediate(1, nl.host32(token)), _set_slot(1), *client,
                      Lookup(STICKY_SET, R(0)), remember, Immediate(_VERDICT, _RETURN)))
    rules.append((*pick, Immediate(_VERDICT, nl.jump(token_chain(shard)))))
    # Its own rule: when `sticky` is full the update fails and only this rule stops.
    rules.append((*client, remember))
    return tuple(rules)


# --- one service's objects ----------------------------------------------------------------------

Elements = dict[str, dict[bytes, bytes | None]]  # map -> key -> data (NFTA_SET_ELEM_DATA)


def wire(rule: Rule) -> bytes:
    """A rule's expressions as the kernel dumps them."""
    return nl.encode_rule(rule)


@dataclass(frozen=True)
class Held:
    """What one service owns in the kernel, in wire form: its chains' rules and its map
    elements (all keys start with the service's address . protocol . port)."""

    chains: dict[str, list[bytes]] = field(default_factory=dict)
    elements: Elements = field(default_factory=dict)


@dataclass
class ServiceObjects:
    """Everything one service owns in the table: chains (rules as expressions, and as the
    kernel dumps them) and map elements (wire form), including its dispatch element."""

    service_id: str
    key: bytes  # address . protocol . port, the prefix of all its map keys
    chain: str
    chains: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    wires: dict[str, list[bytes]] = field(default_factory=dict)
    elements: Elements = field(default_factory=dict)

    def put_chain(self, name: str, rules: tuple[Rule, ...],
                  wires: list[bytes] | None = None) -> None:
        self.chains[name] = rules
        self.wires[name] = wires if wires is not None else [wire(r) for r in rules]

    def held(self) -> Held:
        return Held(self.wires, self.elements)


def service_key(host: str, protocol: str, port: int) -> bytes:
    return inet_aton(host) + nl.protocol(protocol) + nl.port(port)


_ADDR_PORT_VALUE = nl.attr(1, bytes(8))[:4]  # NFTA_DATA_VALUE header of ipv4_addr . port


@lru_cache(maxsize=1 << 16)
def _server_value(host: str, port: int) -> bytes:
    """A server as map data (servers often back many services: cached)."""
    return _ADDR_PORT_VALUE + inet_aton(host) + port.to_bytes(2, "big") + b"\0\0"


def service_objects(service: VirtualService) -> ServiceObjects:
    """The chains and map elements of one service."""
    sid = service.id
    key = service_key(service.host, service.protocol, service.port)
    chain = service_chain(sid)
    out = ServiceObjects(sid, key, chain, {chain: ()}, {chain: []},
                         {SERVICES_MAP: {key: nl.verdict_data(nl.NFT_JUMP, chain)}})
    active = service.active_backends
    if not active:
        # No server takes new connections: fall through, as IPVS does (the address's own
        # stack answers, usually with a reset). Established connections are unaffected.
        return out
    shard = shard_of(key)
    per_slot = slots(service, active)
    pick, pick_wire = _selector_rule(_SCHEDULER_MODE.get(service.scheduler, "numgen random"),
                                     len(per_slot), shard)
    if any([b.upper_threshold for b in active]):
        target_map = limited_map(shard)
        targets = [nl.goto(backend_chain(sid, b)).encode() for b in active]
        for b in active:
            out.put_chain(backend_chain(sid, b), _backend_chain_rules(service, b))
    else:
        target_map = backends_map(shard)
        targets = [_server_value(b.host, b.port) for b in active]
    if not service.persistence:
        out.put_chain(chain, (pick,), [pick_wire])
        values = _slot_values(shard) if len(per_slot) <= MAX_SLOTS else \
            [_slot_value(shard, s) for s in range(len(per_slot))]
        # `values` is a table of at least W slot values
        out.elements[target_map] = {key + v: targets[i]
                                    for v, i in zip(values, per_slot, strict=False)}
    else:
        toks = tokens(active, shard)
        out.put_chain(chain, _persistent_rules(service, toks, pick, shard))
        out.elements[tokens_map(shard)] = {key + _slot_value(shard, s): nl.value(
            nl.host32(toks[i])) for s, i in enumerate(per_slot)}
        out.elements[target_map] = {key + nl.host32(t): targets[i] for i, t in enumerate(toks)}
    return out


def desired_objects(desired: Mapping[str, VirtualService]) -> dict[str, ServiceObjects]:
    return {sid: service_objects(vs) for sid, vs in desired.items()}


# --- the table's fixed part ---------------------------------------------------------------------

_V4, _PROTO, _PORT, _MARK = 7, 12, 13, 19  # nft datatype ids
_SERVICE_TYPE = (_V4, _PROTO, _PORT)
_MAP = nl.NFT_SET_MAP
_SLOT_TYPE = nl.concat_type(*_SERVICE_TYPE, _MARK)


def _sets() -> dict[str, SetSpec]:
    out = {SERVICES_MAP: SetSpec(SERVICES_MAP, _MAP, nl.concat_type(*_SERVICE_TYPE), 12,
                                 nl.NFT_DATA_VERDICT, 16)}
    for k in range(SHARDS):
        out[backends_map(k)] = SetSpec(backends_map(k), _MAP, _SLOT_TYPE, 16,
                                       nl.concat_type(_V4, _PORT), 8)
        out[tokens_map(k)] = SetSpec(tokens_map(k), _MAP, _SLOT_TYPE, 16, _MARK, 4,
                                     userdata=nl.USERDATA_HOST_ENDIAN_DATA)
        out[limited_map(k)] = SetSpec(limited_map(k), _MAP, _SLOT_TYPE, 16,
                                      nl.NFT_DATA_VERDICT, 16)
    out[STICKY_SET] = SetSpec(STICKY_SET, nl.NFT_SET_EVAL | nl.NFT_SET_TIMEOUT,
                              nl.concat_type(*_SERVICE_TYPE, _V4, _MARK), 20, size=STICKY_SIZE)
    return out


SETS: dict[str, SetSpec] = _sets()
# The maps whose elements belong to services (all keys start with the service's key), in
# the order their deletes go: dispatch first (its elements refer to service chains).
ELEMENT_MAPS = tuple(n for n in SETS if n != STICKY_SET)

BASE_CHAINS: dict[str, Hook] = {
    "prerouting": Hook(nl.NF_INET_PRE_ROUTING, NAT_PRIORITY),
    "output": Hook(nl.NF_INET_LOCAL_OUT, NAT_PRIORITY),
    "postrouting": Hook(nl.NF_INET_POST_ROUTING, SRCNAT_PRIORITY),
}
SHARED_CHAINS = (SELECT_CHAIN, *(select_chain(k) for k in range(SHARDS)),
                 *(token_chain(k) for k in range(SHARDS)))


def skeleton_rules() -> dict[str, tuple[Rule, ...]]:
    """The rules of the base and shared chains. Selection happens after the service chain
    returned, reached from the base chain: a `goto select` in every service chain would make
    the kernel re-validate `select` once per service whenever it validates the table."""
    dispatch: Rule = (*_IS_SERVICE, CtLoad(nl.NFT_CT_MARK, R(3)),
                      MetaSet(nl.NFT_META_PRIORITY, R(3)), Lookup(SERVICES_MAP, R(0), _VERDICT))
    nat = (dispatch, (*_IS_SERVICE, Immediate(_VERDICT, nl.jump(SELECT_CHAIN))),
           (*_IS_SERVICE, *_restore_ct_mark(R(3))))
    masquerade: Rule = (MetaLoad(nl.NFT_META_MARK, 1),
                        Bitwise(1, 1, nl.host32(MASQ_MARK), nl.host32(0)),
                        Cmp(1, nl.host32(MASQ_MARK)), Masquerade())
    shard_mask = nl.host32(0xFF << SHARD_SHIFT)
    out: dict[str, tuple[Rule, ...]] = {
        "prerouting": nat,
        "output": nat,
        "postrouting": (masquerade,),
        SELECT_CHAIN: tuple(
            (CtLoad(nl.NFT_CT_MARK, 1), Bitwise(1, 1, shard_mask, bytes(4)),
             Cmp(1, nl.host32(k << SHARD_SHIFT)), Immediate(_VERDICT, nl.goto(select_chain(k))))
            for k in range(SHARDS)),
    }
    for k in range(SHARDS):
        out[select_chain(k)] = (
            (*_SLOT_KEY, Lookup(backends_map(k), R(0), R(4)), *_restore_ct_mark(R(6)),
             *_mark_for_masquerade(R(7)), Dnat(R(4), R(5))),
            (*_SLOT_KEY, Lookup(limited_map(k), R(0), _VERDICT)))
        out[token_chain(k)] = ((*_SLOT_KEY, Lookup(tokens_map(k), R(0), 1), _set_slot(1)),)
    return out


def skeleton_chains() -> dict[str, Hook | None]:
    return {**BASE_CHAINS, **dict.fromkeys(SHARED_CHAINS)}


@lru_cache(maxsize=1)
def skeleton_wire() -> dict[str, list[bytes]]:
    return {name: [wire(r) for r in rules] for name, rules in skeleton_rules().items()}


# --- the live table, read ------------------------------------------------------------------------


@dataclass
class LiveTable:
    """What the kernel holds in table ip portal_es (the adapter fills it from dumps)."""

    exists: bool = False
    chains: dict[str, nl.LiveChain] = field(default_factory=dict)
    rules: dict[str, list[bytes]] = field(default_factory=dict)
    sets: dict[str, SetSpec] = field(default_factory=dict)
    elements: Elements = field(default_factory=dict)  # of ELEMENT_MAPS only
    _groups: dict[str, dict[bytes, dict[bytes, bytes | None]]] | None = None

    def groups(self, name: str) -> dict[bytes, dict[bytes, bytes | None]]:
        """A map's elements grouped by service key (the first 12 bytes of every key)."""
        if self._groups is None:
            self._groups = {}
            for m, elements in self.elements.items():
                grouped: dict[bytes, dict[bytes, bytes | None]] = {}
                for k, d in elements.items():
                    grouped.setdefault(k[:12], {})[k] = d
                self._groups[m] = grouped
        return self._groups.get(name, {})

    def view(self, want: ServiceObjects) -> Held:
        """What the kernel holds of `want`'s chains (by name) and of its service's elements."""
        chains = {c: self.rules.get(c, []) for c in want.wires
                  if c in self.chains and self.chains[c].hook is None}
        elements = {m: els for m in self.elements if (els := self.groups(m).get(want.key))}
        return Held(chains, elements)

    def holds(self, want: ServiceObjects) -> bool:
        """Whether `want`'s chains and elements are all live and equal (extra elements with
        its key are found by `extra_keys`)."""
        for name, rules in want.wires.items():
            have = self.chains.get(name)
            if have is None or have.hook is not None or self.rules.get(name, []) != rules:
                return False
        for name, elements in want.elements.items():
            if not elements.items() <= self.elements.get(name, {}).items():  # in C
                return False
        return True

    def extra_keys(self, want: Iterable[ServiceObjects], all_held: bool) -> set[bytes]:
        """Service keys of live elements nobody wants (of unwanted services, or left over in
        a wanted service's maps). When every wanted element is live (`all_held`), equal
        counts mean there is none: the usual case costs one pass and no set arithmetic."""
        by_map: dict[str, list[dict[bytes, bytes | None]]] = {}
        for o in want:
            for name, elements in o.elements.items():
                by_map.setdefault(name, []).append(elements)
        extra: set[bytes] = set()
        for name, live in self.elements.items():
            wanted = by_map.get(name, [])
            if all_held and len(live) == sum(map(len, wanted)):
                continue
            extra.update(k[:12] for k in set(live).difference(*wanted))
        return extra


def service_id_of(key: bytes) -> str:
    """Portal's id of the service a map key belongs to."""
    port = int.from_bytes(key[8:10], "big")
    return service_id(nl.protocol_name(key[4:8]), inet_ntoa(key[:4]), port)


def skeleton_matches(live: LiveTable) -> bool:
    if not live.exists or any(live.sets.get(n) != s for n, s in SETS.items()):
        return False
    rules = skeleton_wire()
    for name, hook in skeleton_chains().items():
        have = live.chains.get(name)
        if have is None or have.hook != hook or have.other_type or \
                live.rules.get(name) != rules[name]:
            return False
    return True


# --- commands -----------------------------------------------------------------------------------


@dataclass
class Transaction:
    """Commands in phases, so that every reference is valid at each step of the batch:
    element deletes, flushes, deletes, adds of containers, rules, element adds."""

    delete_table: bool = False
    add_table: bool = False
    del_elements: dict[str, list[bytes]] = field(default_factory=dict)
    flush: list[str] = field(default_factory=list)
    del_chains: list[str] = field(default_factory=list)
    del_sets: list[str] = field(default_factory=list)
    add_sets: list[SetSpec] = field(default_factory=list)
    add_chains: list[tuple[str, Hook | None]] = field(default_factory=list)
    rules: list[tuple[str, bytes]] = field(default_factory=list)
    add_elements: dict[str, list[tuple[bytes, bytes | None]]] = field(default_factory=dict)

    def messages(self) -> list[nl.Message]:
        out: list[nl.Message] = []
        if self.delete_table:
            out.append(nl.delete_table(TABLE))
        if self.add_table:
            out.append(nl.new_table(TABLE))
        for name in _map_order(self.del_elements):  # `services` first: it refers to chains
            out += nl.delete_elements(TABLE, name, self.del_elements[name])
        out += [nl.flush_chain(TABLE, c) for c in self.flush]
        out += [nl.delete_chain(TABLE, c) for c in self.del_chains]
        out += [nl.delete_set(TABLE, s) for s in self.del_sets]
        out += [nl.new_set(TABLE, s, i) for i, s in enumerate(self.add_sets, start=1)]
        out += [nl.new_chain(TABLE, c, hook) for c, hook in self.add_chains]
        out += [nl.new_rule(TABLE, c, r) for c, r in self.rules]
        for name in reversed(_map_order(self.add_elements)):  # `services` last
            out += nl.add_elements(TABLE, name, self.add_elements[name])
        return out

    def summary(self) -> list[tuple[str, str]]:
        """(operation, object) per command, for tests and logs."""
        return [(m.what.split()[0], " ".join(m.what.split()[1:])) for m in self.messages()]

    def __bool__(self) -> bool:
        return bool(self.delete_table or self.add_table or self.del_elements or self.flush
                    or self.del_chains or self.del_sets or self.add_sets or self.add_chains
                    or self.rules or self.add_elements)


def _map_order(names: Iterable[str]) -> list[str]:
    order = {n: i for i, n in enumerate(ELEMENT_MAPS)}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def replace_service(tx: Transaction, want: Held, have: Held) -> None:
    """Turn `have` (what the kernel holds for one service) into `want`: chains whose rules
    differ are flushed and refilled, chains no longer wanted deleted, elements whose data
    differs deleted and re-added (the kernel refuses to overwrite), the rest left alone -
    so are the service's connections (conntrack) and its clients' affinity."""
    if not (have.chains or have.elements):  # nothing live: add it all (the bulk of a create)
        for name, elements in want.elements.items():
            tx.add_elements.setdefault(name, []).extend(elements.items())
        for name, rules in want.chains.items():
            tx.add_chains.append((name, None))
            tx.rules += [(name, r) for r in rules]
        return
    for name in set(want.elements) | set(have.elements):
        w, h = want.elements.get(name, {}), have.elements.get(name, {})
        gone = [k for k, d in h.items() if w.get(k, b"") != d]
        new = [(k, d) for k, d in w.items() if h.get(k, b"") != d]
        if gone:
            tx.del_elements.setdefault(name, []).extend(gone)
        if new:
            tx.add_elements.setdefault(name, []).extend(new)
    for name, rules in have.chains.items():
        if name not in want.chains:
            tx.flush.append(name)
            tx.del_chains.append(name)
        elif rules != want.chains[name]:
            tx.flush.append(name)
    for name, rules in want.chains.items():
        if name not in have.chains:
            tx.add_chains.append((name, None))
        elif rules == have.chains[name]:
            continue
        tx.rules += [(name, r) for r in rules]


@dataclass
class Plan:
    """A transaction and the service ids it adds, changes and removes."""

    tx: Transaction = field(default_factory=Transaction)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def plan_incremental(want: Mapping[str, ServiceObjects], have: Mapping[str, ServiceObjects],
                     changed: Iterable[str]) -> Plan:
    """Touch only the services in `changed` (ids whose desired state differs from the last
    successful sync): `have` is what that sync left, `want` what they should become."""
    plan = Plan()
    for sid in changed:
        new, old = want.get(sid), have.get(sid)
        replace_service(plan.tx, new.held() if new else Held(), old.held() if old else Held())
        (plan.added if old is None else plan.removed if new is None else plan.changed).append(sid)
    return plan


def _repair_skeleton(tx: Transaction, live: LiveTable) -> None:
    rules = skeleton_wire()
    tx.add_sets += [spec for name, spec in SETS.items() if name not in live.sets]
    for name, hook in skeleton_chains().items():
        if name not in live.chains:
            tx.add_chains.append((name, hook))
        elif live.rules.get(name) == rules[name]:
            continue
        else:
            tx.flush.append(name)
        tx.rules += [(name, r) for r in rules[name]]


def _needs_rebuild(live: LiveTable) -> bool:
    """A fixed set of another type, or a fixed chain with another hook, cannot be changed in
    place while rules refer to it: then the table is rebuilt, in the same transaction."""
    if any(n in live.sets and live.sets[n] != spec for n, spec in SETS.items()):
        return True
    return any(n in live.chains and (live.chains[n].hook != hook or live.chains[n].other_type)
               for n, hook in skeleton_chains().items())


def _differing(want: Mapping[str, ServiceObjects], live: LiveTable) -> tuple[list[str],
                                                                            set[bytes]]:
    """(ids of wanted services the kernel does not hold exactly, unwanted service keys)."""
    differing = {sid for sid, o in want.items() if not live.holds(o)}
    extra = live.extra_keys(want.values(), all_held=not differing)
    differing.update(sid for sid, o in want.items() if o.key in extra)
    return [sid for sid in want if sid in differing], extra


def plan_repair(want: Mapping[str, ServiceObjects], live: LiveTable) -> Plan:
    """Make the live table exactly `want`: add what is missing, refill what differs, remove
    what nobody wants (foreign elements, orphan chains and sets). Objects already right are
    not touched, so neither are their connections nor their clients' affinity."""
    plan = Plan()
    tx = plan.tx
    if live.exists and _needs_rebuild(live):
        tx.delete_table = True
        live = LiveTable()
    tx.add_table = not live.exists
    _repair_skeleton(tx, live)
    if not live.exists:  # nothing to compare: add everything (the first sync)
        for objects in want.values():
            replace_service(tx, objects.held(), Held())
        plan.added = list(want)
        return plan
    differing, extra = _differing(want, live)
    dispatch = live.elements.get(SERVICES_MAP, {})
    for sid in differing:
        objects = want[sid]
        for name in objects.chains:  # a base chain of that name: replaced by a regular one
            if name in live.chains and live.chains[name].hook is not None:
                tx.flush.append(name)
                tx.del_chains.append(name)
        replace_service(tx, objects.held(), live.view(objects))
        (plan.changed if objects.key in dispatch else plan.added).append(sid)
    wanted_keys = {o.key for o in want.values()}
    for key in extra - wanted_keys:
        for name in ELEMENT_MAPS:
            tx.del_elements.setdefault(name, []).extend(live.groups(name).get(key, {}))
    tx.del_elements = {n: keys for n, keys in tx.del_elements.items() if keys}
    plan.removed = sorted(service_id_of(k) for k in extra - wanted_keys)
    wanted_chains = set(skeleton_chains()).union(*(o.wires for o in want.values()))
    orphans = [c for c in live.chains if c not in wanted_chains]
    tx.flush += orphans
    tx.del_chains += orphans
    tx.del_sets += [s for s in live.sets if s not in SETS]
    return plan


def drift(want: Mapping[str, ServiceObjects], live: LiveTable) -> tuple[list[str], list[str],
                                                                         list[str]]:
    """(missing, unexpected, different) service ids. A broken fixed part (hooks, maps) makes
    every desired service different: none of them is reachable."""
    dispatch = live.elements.get(SERVICES_MAP, {})
    missing = [sid for sid, o in want.items() if o.key not in dispatch]
    if skeleton_matches(live):
        differing, extra = _differing(want, live)
    else:
        differing, extra = list(want), live.extra_keys(want.values(), all_held=False)
    different = [sid for sid in differing if want[sid].key in dispatch]
    wanted_keys = {o.key for o in want.values()}
    unexpected = sorted(service_id_of(k) for k in extra - wanted_keys)
    return missing, unexpected, different
