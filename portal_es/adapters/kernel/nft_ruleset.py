"""Desired L4 state -> nftables JSON (libnftables-json(5)), and the diff against what is live.

Pure: no I/O. The adapter (`nftables.py`) reads the kernel and applies what this module plans,
in one libnftables transaction per sync.

Table layout (one table owned by portal-es; IPv4 only, see `unsupported`)::

    table ip portal_es {
        map services { type ipv4_addr . inet_proto . inet_service : verdict
                       elements = { 10.0.0.1 . tcp . 80 : goto svc_tcp-10_0_0_1-80, ... } }
        chain prerouting  { type nat hook prerouting priority dstnat; policy accept;
                            ip daddr . meta l4proto . th dport vmap @services }
        chain output      { type nat hook output priority -100; policy accept;       # LB-local
                            ip daddr . meta l4proto . th dport vmap @services }      # clients
        chain postrouting { type nat hook postrouting priority srcnat; policy accept;
                            meta mark & 0x2000 == 0x2000 masquerade }
        # one chain per service: pick a backend, mark for masquerade, DNAT
        chain svc_tcp-10_0_0_1-80 {
            meta l4proto tcp meta mark set meta mark | 0x2000
                dnat ip to numgen inc mod 3 map { 0 : 10.0.1.1 . 8080, 1 : ..., 2 : ... }
        }
        # services with persistence or an upper_threshold: one chain (and one affinity set)
        # per backend, the kube-proxy way
        set aff_tcp-10_0_0_2-80_10_0_1_1-8080 { type ipv4_addr; flags dynamic,timeout;
                                                timeout 300s }
        chain svc_tcp-10_0_0_2-80 {
            ip saddr & 255.255.255.0 @aff_tcp-10_0_0_2-80_10_0_1_1-8080
                goto be_tcp-10_0_0_2-80_10_0_1_1-8080                    # one per backend
            numgen inc mod 2 vmap { 0 : goto be_..., 1 : goto be_... }
        }
        chain be_tcp-10_0_0_2-80_10_0_1_1-8080 {
            ct count over 10 drop                                        # upper_threshold
            update @aff_... { ip saddr & 255.255.255.0 }
                meta l4proto tcp meta mark set meta mark | 0x2000 dnat to 10.0.1.1:8080
        }
    }

Dispatch is O(1): one verdict-map lookup on (address, protocol, port) per new connection.
Only the first packet of a connection traverses nat chains; the rest follow conntrack, so
replacing a service's rules never touches established connections.

The generated expressions are written in the exact form `nft -j list table` prints them, so
"in sync" is plain equality of JSON values (see `parse_live` and `diff_service`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import reduce
from math import gcd
from typing import Any

from portal_es.domain.models import id_part
from projections.l4 import Backend, VirtualService

FAMILY = "ip"
TABLE = "portal_es"
SERVICES_MAP = "services"
# Packet mark bit telling postrouting "this new connection was DNATed by us: masquerade it".
# kube-proxy uses 0x4000 and 0x8000; this bit stays clear of both.
MASQ_MARK = 0x2000
JHASH_SEED = 0x706F7274  # fixed: the same source must hash to the same backend on every node
# wrr: the smooth (interleaved) sequence is spelled out up to this many slots; beyond it each
# backend gets one interval of its weight (same proportions, in bursts).
WRR_SMOOTH_MAX = 256
# Largest affinity timeout the kernel stores (set timeouts are u32 milliseconds in 6.x).
MAX_PERSISTENCE = (2**32 - 1) // 1000
NAT_PRIORITY = -100  # dstnat: before routing, so the DNATed address is what gets routed
SRCNAT_PRIORITY = 100

Expr = dict[str, Any]
Rule = list[Expr]  # the "expr" array of one rule

SCHEDULERS: tuple[tuple[str, str, str], ...] = (
    ("rr", "numgen inc mod N map", "round robin over the active servers; weights ignored "
     "(weight 0 = no new connections), as IPVS rr"),
    ("wrr", "numgen inc mod W map", "round robin over weight intervals, interleaved "
     "(smooth WRR sequence) while the total weight is small"),
    ("sh", "jhash ip saddr mod W map", "source hashing over weight intervals: a client "
     "address always lands on the same server while the server set is unchanged"),
    ("dh", "jhash ip daddr mod W map", "destination hashing over weight intervals (for a "
     "virtual service the destination is its address, so one server takes all)"),
    ("lc", "numgen random mod W map", "no connection counts in nftables: weighted random"),
    ("wlc", "numgen random mod W map", "no connection counts in nftables: weighted random"),
    ("sed", "numgen random mod W map", "no connection counts in nftables: weighted random"),
    ("nq", "numgen random mod W map", "no connection counts in nftables: weighted random"),
    ("lblc", "numgen random mod W map", "locality-based least-connection: the destination "
     "is the service address, and connection counts are not available: weighted random"),
    ("lblcr", "numgen random mod W map", "as lblc: weighted random"),
)
"""How each IPVS scheduler is expressed (W = sum of the active servers' weights, reduced by
their gcd; N = number of active servers). Active = weight > 0 and not draining: only they
take new connections, established connections continue through conntrack."""


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


def affinity_set(service_id: str, backend: Backend) -> str:
    return f"aff_{service_id}_{backend_id(backend)}"


def service_id(protocol: str, host: str, port: int) -> str:
    """Portal's id of the service behind a map key (for reporting what was live)."""
    return f"{protocol}-{id_part(host)}-{port}"


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


# --- expressions (in the form nft lists them back) ---------------------------------------------


def _payload(protocol: str, fld: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": fld}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _goto(chain: str) -> Expr:
    return {"goto": {"target": chain}}


def _client(service: VirtualService) -> Expr:
    """The client address, masked by the service's netmask (the affinity granularity)."""
    saddr = _payload("ip", "saddr")
    if service.netmask and service.netmask != "255.255.255.255":
        return {"&": [saddr, service.netmask]}
    return saddr


def _dispatch_key() -> Expr:
    return {"concat": [_payload("ip", "daddr"), _meta("l4proto"), _payload("th", "dport")]}


def _mark_for_masquerade() -> Expr:
    return {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), MASQ_MARK]}}}


def _nat_prefix(service: VirtualService) -> Rule:
    # `meta l4proto` gives nft the transport context DNAT to a port needs; the mark asks
    # postrouting to masquerade (forwarder m: replies must come back through this host).
    return [_match(_meta("l4proto"), service.protocol), _mark_for_masquerade()]


def _selector(scheduler: str, total: int) -> Expr:
    mode = _SCHEDULER_MODE.get(scheduler, "numgen random")
    if mode == "jhash ip saddr":
        return {"jhash": {"mod": total, "seed": JHASH_SEED, "expr": _payload("ip", "saddr")}}
    if mode == "jhash ip daddr":
        return {"jhash": {"mod": total, "seed": JHASH_SEED, "expr": _payload("ip", "daddr")}}
    kind = "inc" if mode == "numgen inc" else "random"
    return {"numgen": {"mode": kind, "mod": total, "offset": 0}}


def _weights(service: VirtualService, active: tuple[Backend, ...]) -> list[int]:
    if service.scheduler == "rr":
        return [1] * len(active)
    divisor = reduce(gcd, (b.weight for b in active))
    return [b.weight // divisor for b in active]


def _smooth_sequence(weights: list[int]) -> list[int]:
    """nginx's smooth weighted round robin: indexes in an interleaved order (5:1:1 ->
    a a b a c a a rather than a a a a a b c)."""
    current = [0] * len(weights)
    total = sum(weights)
    order = []
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return order


def slots(service: VirtualService, active: tuple[Backend, ...]) -> list[tuple[int, int, int]]:
    """(first, last, backend index) intervals of the selector's value space [0, total)."""
    weights = _weights(service, active)
    out: list[tuple[int, int, int]] = []
    if service.scheduler != "wrr" or sum(weights) > WRR_SMOOTH_MAX:
        start = 0
        for i, w in enumerate(weights):
            out.append((start, start + w - 1, i))
            start += w
        return out
    # Merge runs of the same backend into intervals (fewer elements, same sequence).
    for pos, index in enumerate(_smooth_sequence(weights)):
        if out and out[-1][2] == index:
            out[-1] = (out[-1][0], pos, index)
        else:
            out.append((pos, pos, index))
    return out


def _key(first: int, last: int) -> Any:
    return first if first == last else {"range": [first, last]}


def _select(service: VirtualService, active: tuple[Backend, ...], value: Any) -> Expr:
    """`<selector> map { slot : value(backend) }`; `value` builds each element's data."""
    intervals = slots(service, active)
    total = intervals[-1][1] + 1
    elements = [[_key(a, b), value(active[i])] for a, b, i in intervals]
    return {"map": {"key": _selector(service.scheduler, total), "data": {"set": elements}}}


# --- one service's objects ----------------------------------------------------------------------


@dataclass(frozen=True)
class AffinitySet:
    name: str
    timeout: int  # seconds

    def json(self) -> Expr:
        return {"family": FAMILY, "table": TABLE, "name": self.name, "type": "ipv4_addr",
                "flags": ["timeout"], "timeout": self.timeout}


@dataclass
class ServiceRules:
    """Everything one service owns in the table: its map element, chains and sets."""

    service_id: str
    key: tuple[str, str, int]  # (address, protocol, port): the `services` map key
    chain: str  # the map element's goto target
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    sets: dict[str, AffinitySet] = field(default_factory=dict)

    def element(self) -> list[Any]:
        return [{"concat": list(self.key)}, _goto(self.chain)]


def _per_backend(service: VirtualService) -> bool:
    """Persistence and connection limits need one chain per backend (kube-proxy layout)."""
    return service.persistence > 0 or any(
        b.upper_threshold for b in service.active_backends)


def _simple_rules(service: VirtualService) -> list[Rule]:
    active = service.active_backends
    if not active:
        # No server takes new connections: fall through, as IPVS does (the address's own
        # stack answers, usually with a reset). Established connections are unaffected.
        return []
    if len(active) == 1:
        return [[*_nat_prefix(service), {"dnat": {"addr": active[0].host,
                                                  "port": active[0].port}}]]
    target = _select(service, active, lambda b: {"concat": [b.host, b.port]})
    return [[*_nat_prefix(service), {"dnat": {"family": FAMILY, "addr": target}}]]


def _backend_rules(service: VirtualService, b: Backend, aff: str | None) -> list[Rule]:
    rules: list[Rule] = []
    if b.upper_threshold:
        # Connection limit (IPVS upper_threshold): above it new connections to this server are
        # dropped (the client's retry is scheduled afresh). Counted per rule: replacing this
        # service's rules restarts the count.
        rules.append([{"ct count": {"val": b.upper_threshold, "inv": True}}, {"drop": None}])
    head: Rule = []
    if aff is not None:
        head.append({"set": {"op": "update", "elem": _client(service), "set": f"@{aff}"}})
    rules.append(head + _nat_prefix(service) + [{"dnat": {"addr": b.host, "port": b.port}}])
    return rules


def service_rules(service: VirtualService) -> ServiceRules:
    """The chains, sets and map element of one service."""
    sid = service.id
    out = ServiceRules(sid, (service.host, service.protocol, service.port), service_chain(sid))
    if not _per_backend(service):
        out.chains[out.chain] = _simple_rules(service)
        return out
    active = service.active_backends
    head: list[Rule] = []
    for b in active:
        aff = affinity_set(sid, b) if service.persistence else None
        out.chains[backend_chain(sid, b)] = _backend_rules(service, b, aff)
        if aff is not None:
            out.sets[aff] = AffinitySet(aff, service.persistence)
            # Affinity first: a client seen within the timeout goes back to its server.
            head.append([_match(_client(service), f"@{aff}"), _goto(backend_chain(sid, b))])
    if len(active) == 1:
        head.append([_goto(backend_chain(sid, active[0]))])
    elif active:
        vmap = _select(service, active, lambda b: _goto(backend_chain(sid, b)))["map"]
        head.append([{"vmap": vmap}])
    out.chains = {out.chain: head, **out.chains}
    return out


def desired_rules(desired: Mapping[str, VirtualService]) -> dict[str, ServiceRules]:
    return {sid: service_rules(vs) for sid, vs in desired.items()}


# --- the table's fixed part ---------------------------------------------------------------------

BASE_CHAINS: dict[str, Expr] = {
    "prerouting": {"type": "nat", "hook": "prerouting", "prio": NAT_PRIORITY, "policy": "accept"},
    "output": {"type": "nat", "hook": "output", "prio": NAT_PRIORITY, "policy": "accept"},
    "postrouting": {"type": "nat", "hook": "postrouting", "prio": SRCNAT_PRIORITY,
                    "policy": "accept"},
}
MAP_TYPE = ["ipv4_addr", "inet_proto", "inet_service"]


def base_rules() -> dict[str, list[Rule]]:
    dispatch: Rule = [{"vmap": {"key": _dispatch_key(), "data": f"@{SERVICES_MAP}"}}]
    masquerade: Rule = [
        _match({"&": [_meta("mark"), MASQ_MARK]}, MASQ_MARK), {"masquerade": None}]
    return {"prerouting": [dispatch], "output": [dispatch], "postrouting": [masquerade]}


# --- the live table, parsed ---------------------------------------------------------------------


@dataclass
class LiveTable:
    """What `nft -j list table ip portal_es` shows, handles dropped."""

    exists: bool = False
    chains: dict[str, Expr] = field(default_factory=dict)  # name -> base properties ({} = regular)
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    sets: dict[str, Expr] = field(default_factory=dict)  # name -> set/map object
    elements: dict[tuple[str, str, int], str | None] = field(default_factory=dict)  # -> target

    @property
    def map_ok(self) -> bool:
        m = self.sets.get(SERVICES_MAP)
        return m is not None and m.get("type") == MAP_TYPE and m.get("map") == "verdict"


def _element_target(data: Any) -> str | None:
    if isinstance(data, dict) and "goto" in data:
        return str(data["goto"]["target"])
    return None


def _element_key(key: Any) -> tuple[str, str, int] | None:
    if isinstance(key, dict) and "concat" in key and len(key["concat"]) == 3:
        host, proto, port = key["concat"]
        return (str(host), str(proto), int(port))
    return None


def parse_live(listing: Iterable[Expr]) -> LiveTable:
    """The objects of `nft -j list table` output (its "nftables" array)."""
    live = LiveTable()
    for obj in listing:
        ((kind, body),) = obj.items()
        if kind == "table":
            live.exists = True
        elif kind == "chain":
            live.chains[body["name"]] = {k: body[k] for k in ("type", "hook", "prio", "policy")
                                         if k in body}
            live.rules.setdefault(body["name"], [])
        elif kind == "rule":
            live.rules.setdefault(body["chain"], []).append(body["expr"])
        elif kind in ("set", "map"):
            live.sets[body["name"]] = body
            if body["name"] == SERVICES_MAP and kind == "map":
                for key, data in body.get("elem", []):
                    k = _element_key(key)
                    if k is not None:
                        live.elements[k] = _element_target(data)
    return live


def live_matches(want: ServiceRules, live: LiveTable) -> bool:
    """Whether the kernel holds exactly `want`'s element, chains, rules and sets."""
    if live.elements.get(want.key, "") != want.chain:
        return False
    for name, rules in want.chains.items():
        if name not in live.chains or live.chains[name] or live.rules.get(name) != rules:
            return False
    for name, s in want.sets.items():
        have = live.sets.get(name)
        if have is None or have.get("type") != "ipv4_addr" or have.get("timeout") != s.timeout:
            return False
    return True


def base_matches(live: LiveTable) -> bool:
    if not (live.exists and live.map_ok):
        return False
    return all(live.chains.get(name) == props and live.rules.get(name) == base_rules()[name]
               for name, props in BASE_CHAINS.items())


# --- commands -----------------------------------------------------------------------------------


def _obj(**body: Any) -> Expr:
    return {"family": FAMILY, "table": TABLE, **body}


@dataclass
class Transaction:
    """Commands in phases, so that every reference is valid at each step of the batch:
    element deletes, flushes, deletes, adds of containers, rules, element adds."""

    del_elements: list[Any] = field(default_factory=list)  # map keys
    flush: list[str] = field(default_factory=list)
    del_chains: list[str] = field(default_factory=list)
    del_sets: list[str] = field(default_factory=list)
    head: list[Expr] = field(default_factory=list)  # table, map, base chains
    add_sets: list[AffinitySet] = field(default_factory=list)
    add_chains: list[str] = field(default_factory=list)
    rules: list[tuple[str, Rule]] = field(default_factory=list)
    add_elements: list[list[Any]] = field(default_factory=list)

    def commands(self) -> list[Expr]:
        cmds: list[Expr] = []
        if self.del_elements:
            cmds.append({"delete": {"element": _obj(name=SERVICES_MAP, elem=self.del_elements)}})
        cmds += [{"flush": {"chain": _obj(name=c)}} for c in self.flush]
        cmds += [{"delete": {"chain": _obj(name=c)}} for c in self.del_chains]
        cmds += [{"delete": {"set": _obj(name=s)}} for s in self.del_sets]
        cmds += self.head
        cmds += [{"add": {"set": s.json()}} for s in self.add_sets]
        cmds += [{"add": {"chain": _obj(name=c)}} for c in self.add_chains]
        cmds += [{"add": {"rule": _obj(chain=c, expr=r)}} for c, r in self.rules]
        if self.add_elements:
            cmds.append({"add": {"element": _obj(name=SERVICES_MAP, elem=self.add_elements)}})
        return cmds

    def __bool__(self) -> bool:
        return bool(self.commands())


def create_base(tx: Transaction, live: LiveTable) -> None:
    """Add (or repair) the table, the services map and the base chains."""
    if not live.exists:
        tx.head.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
    if not live.map_ok:
        if SERVICES_MAP in live.sets:  # wrong type: rebuild it (base rules refer to it)
            tx.flush += [c for c in BASE_CHAINS if c in live.chains and c not in tx.flush]
            tx.del_sets.append(SERVICES_MAP)
            live.elements.clear()
        tx.head.append({"add": {"map": _obj(name=SERVICES_MAP, type=MAP_TYPE, map="verdict")}})
    for name, props in BASE_CHAINS.items():
        rules = base_rules()[name]
        if name in live.chains and live.chains[name] == props:
            if live.rules.get(name) == rules and name not in tx.flush:
                continue
            if name not in tx.flush:
                tx.flush.append(name)
        else:
            if name in live.chains:  # a base chain's hook cannot be changed: replace it
                tx.flush.append(name)
                tx.del_chains.append(name)
            tx.head.append({"add": {"chain": _obj(name=name, **props)}})
        tx.rules += [(name, r) for r in rules]


Element = tuple[tuple[str, str, int], str | None]  # (map key, goto target)
_FROM_HAVE: Element = (("", "", 0), "")  # sentinel: the live element is `have`'s own


def replace_service(tx: Transaction, want: ServiceRules | None, have: ServiceRules | None,
                    live_element: Element | None = _FROM_HAVE) -> None:
    """Turn `have` (what the kernel holds for one service) into `want`. Chains kept by name
    are flushed and refilled in the same transaction (conntrack keeps existing flows);
    affinity sets are kept when their definition is unchanged (clients stay sticky).
    `live_element` is the service's live map element (key, target) when `have` came from
    the kernel (None: no element is live); by default it is `have`'s own."""
    if live_element is _FROM_HAVE:
        live_element = (have.key, have.chain) if have is not None else None
    want_element = (want.key, want.chain) if want is not None else None
    if live_element is not None and live_element != want_element:
        tx.del_elements.append({"concat": list(live_element[0])})
    want_chains = want.chains if want else {}
    have_chains = have.chains if have else {}
    tx.flush += list(have_chains)
    tx.del_chains += [c for c in have_chains if c not in want_chains]
    have_sets = have.sets if have else {}
    want_sets = want.sets if want else {}
    tx.del_sets += [n for n, s in have_sets.items() if want_sets.get(n) != s]
    tx.add_sets += [s for n, s in want_sets.items() if have_sets.get(n) != s]
    tx.add_chains += [c for c in want_chains if c not in have_chains]
    for name, rules in want_chains.items():
        tx.rules += [(name, r) for r in rules]
    if want_element is not None and live_element != want_element:
        tx.add_elements.append(want.element() if want else [])


@dataclass
class Plan:
    """A transaction and the service ids it adds, changes and removes."""

    tx: Transaction = field(default_factory=Transaction)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def plan_incremental(want: Mapping[str, ServiceRules], have: Mapping[str, ServiceRules],
                     changed: Iterable[str]) -> Plan:
    """Touch only the services in `changed` (ids whose desired state differs from the last
    successful sync): `have` is what that sync left, `want` what they should become."""
    plan = Plan()
    for sid in changed:
        new, old = want.get(sid), have.get(sid)
        replace_service(plan.tx, new, old)
        (plan.added if old is None else plan.removed if new is None else plan.changed).append(sid)
    return plan


def plan_repair(want: Mapping[str, ServiceRules], live: LiveTable) -> Plan:
    """Make the live table exactly `want`: add what is missing, refill what differs, remove
    what nobody wants (foreign elements, orphan chains and sets). Objects already right are
    not touched, so neither are their connections nor their affinity entries."""
    plan = Plan()
    create_base(plan.tx, live)
    wanted_chains = set(BASE_CHAINS)
    wanted_sets = {SERVICES_MAP}
    keys = set()
    for sid, rules in want.items():
        wanted_chains.update(rules.chains)
        wanted_sets.update(rules.sets)
        keys.add(rules.key)
        if live_matches(rules, live):
            continue
        element = (rules.key, live.elements[rules.key]) if rules.key in live.elements else None
        replace_service(plan.tx, rules, _live_view(rules, live), element)
        (plan.changed if rules.key in live.elements else plan.added).append(sid)
    for key in live.elements:
        if key not in keys:
            plan.tx.del_elements.append({"concat": list(key)})
            plan.removed.append(service_id(key[1], key[0], key[2]))
    orphans = [c for c in live.chains if c not in wanted_chains]
    plan.tx.flush += orphans
    plan.tx.del_chains += orphans
    plan.tx.del_sets += [s for s in live.sets if s not in wanted_sets]
    return plan


def _live_view(want: ServiceRules, live: LiveTable) -> ServiceRules:
    """What the kernel holds of `want`'s chains and sets (by name), for `replace_service`."""
    have = ServiceRules(want.service_id, want.key, want.chain)
    have.chains = {c: live.rules.get(c, []) for c in want.chains if c in live.chains}
    for name in want.sets:
        s = live.sets.get(name)
        if s is not None:  # another timeout or type (-1): delete it, the add recreates it
            ok = s.get("type") == "ipv4_addr" and "map" not in s
            have.sets[name] = AffinitySet(name, int(s.get("timeout", 0)) if ok else -1)
    return have


def drift(want: Mapping[str, ServiceRules], live: LiveTable) -> tuple[list[str], list[str],
                                                                       list[str]]:
    """(missing, unexpected, different) service ids. A broken fixed part (hooks, map) makes
    every desired service different: none of them is reachable."""
    base_ok = base_matches(live)
    keys = {r.key for r in want.values()}
    missing = [sid for sid, r in want.items() if r.key not in live.elements]
    different = [sid for sid, r in want.items()
                 if r.key in live.elements and not (base_ok and live_matches(r, live))]
    unexpected = [service_id(k[1], k[0], k[2]) for k in live.elements if k not in keys]
    return missing, unexpected, different
