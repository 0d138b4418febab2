"""The nftables ruleset generator, planner and wire format, without a kernel."""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from typing import Any

import pytest

from portal_es.adapters.kernel import nft_netlink as nl
from portal_es.adapters.kernel import nft_ruleset as rs
from portal_es.domain.models import SCHEDULERS
from projections.l4 import Backend, VirtualService


def vs(host: str = "10.0.0.1", port: int = 80, scheduler: str = "rr",
       weights: tuple[int, ...] = (1, 1, 1), proto: str = "tcp", persistence: int = 0,
       netmask: str = "", forwarder: str = "m", **fields: Any) -> VirtualService:
    backends = tuple(Backend(f"10.1.0.{i}", 8080, w, forwarder, **fields)
                     for i, w in enumerate(weights, start=1))
    return VirtualService(rs.service_id(proto, host, port), host, port, proto, scheduler,
                          persistence, netmask, backends)


def objects(service: VirtualService) -> rs.ServiceObjects:
    return rs.service_objects(service)


def the_rule(service: VirtualService) -> tuple[nl.Expr, ...]:
    rules = objects(service).chains[rs.service_chain(service.id)]
    assert len(rules) == 1
    return rules[0]


def shard(service: VirtualService) -> int:
    return rs.shard_of(rs.service_key(service.host, service.protocol, service.port))


def servers(service: VirtualService) -> list[str]:
    """The server address behind each slot of a plain service, in slot order."""
    elements = objects(service).elements[rs.backends_map(shard(service))]
    by_slot = {int.from_bytes(k[12:], "little") & 0xFFFFFF: d for k, d in elements.items()}
    return [socket.inet_ntoa(by_slot[s][4:8]) for s in sorted(by_slot)]


def live_of(want: dict[str, rs.ServiceObjects]) -> rs.LiveTable:
    """The live table the kernel would hold for exactly `want` (what the adapter reads)."""
    live = rs.LiveTable(exists=True, sets=dict(rs.SETS))
    for name, hook in rs.skeleton_chains().items():
        live.chains[name] = nl.LiveChain(name, hook)
    live.rules = {name: list(rules) for name, rules in rs.skeleton_wire().items()}
    for o in want.values():
        for name, rules in o.wires.items():
            live.chains[name] = nl.LiveChain(name, None)
            live.rules[name] = list(rules)
        for name, elements in o.elements.items():
            live.elements.setdefault(name, {}).update(elements)
    return live


# --- names ---------------------------------------------------------------------------------


def test_names_derive_from_the_service_identity() -> None:
    service = vs()
    b = service.backends[0]
    assert service.id == "tcp-10_0_0_1-80"
    assert rs.service_chain(service.id) == "svc_tcp-10_0_0_1-80"
    assert rs.backend_chain(service.id, b) == "be_tcp-10_0_0_1-80_10_1_0_1-8080"
    assert rs.service_objects(service) == rs.service_objects(vs())  # same input, same output


def test_dispatch_element_jumps_to_the_service_chain() -> None:
    o = objects(vs(proto="udp", port=53))
    key = socket.inet_aton("10.0.0.1") + bytes((17, 0, 0, 0)) + (53).to_bytes(2, "big") + \
        bytes(2)
    assert o.key == key
    assert o.elements[rs.SERVICES_MAP] == {key: nl.jump("svc_udp-10_0_0_1-53").encode()}
    assert rs.service_id_of(key) == "udp-10_0_0_1-53"


# --- schedulers ----------------------------------------------------------------------------


def test_rr_is_numgen_inc_over_active_backends() -> None:
    service = vs(weights=(5, 1, 1))
    numgen, set_slot = the_rule(service)
    assert numgen == nl.Numgen(1, 3, nl.NFT_NG_INCREMENTAL, shard(service) << 24)
    assert set_slot == nl.CtSet(nl.NFT_CT_MARK, 1)
    assert servers(service) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]  # rr ignores weights


def test_wrr_interleaves_by_weight() -> None:
    service = vs(scheduler="wrr", weights=(6, 4, 2))
    assert the_rule(service)[0].modulus == 6  # type: ignore[attr-defined]  # 6:4:2 / gcd
    order = servers(service)
    assert Counter(order) == {"10.1.0.1": 3, "10.1.0.2": 2, "10.1.0.3": 1}
    assert order[:2] != ["10.1.0.1", "10.1.0.1"]  # smooth, not a burst


def test_large_weight_totals_are_scaled_to_max_slots() -> None:
    service = vs(scheduler="wrr", weights=(5000, 1))
    shares = rs.weights(service, service.active_backends)
    assert sum(shares) == rs.MAX_SLOTS and shares[1] == 1
    assert len(servers(service)) == rs.MAX_SLOTS


@pytest.mark.parametrize(("scheduler", "offset"), [("sh", 12), ("dh", 16)])
def test_hashing_schedulers(scheduler: str, offset: int) -> None:
    service = vs(scheduler=scheduler, weights=(2, 1, 1))
    payload, jhash, _ = the_rule(service)
    assert payload == nl.Payload(nl.NFT_PAYLOAD_NETWORK_HEADER, offset, 4, 2)  # saddr/daddr
    assert jhash == nl.Jhash(2, 1, 4, 4, rs.JHASH_SEED, shard(service) << 24)
    assert Counter(servers(service)) == {"10.1.0.1": 2, "10.1.0.2": 1, "10.1.0.3": 1}


@pytest.mark.parametrize("scheduler", ["lc", "wlc", "sed", "nq", "lblc", "lblcr"])
def test_connection_count_schedulers_are_weighted_random(scheduler: str) -> None:
    service = vs(scheduler=scheduler, weights=(3, 1, 1))
    assert the_rule(service)[0] == nl.Numgen(1, 5, nl.NFT_NG_RANDOM, shard(service) << 24)


def test_scheduler_table_covers_every_portal_scheduler() -> None:
    assert sorted(row[0] for row in rs.scheduler_table()) == sorted(SCHEDULERS)


def test_weight_zero_and_draining_get_no_new_connections() -> None:
    service = vs(weights=(1, 0, 1))
    service = dataclasses.replace(service, backends=(
        service.backends[0], service.backends[1],
        dataclasses.replace(service.backends[2], draining=True)))
    assert servers(service) == ["10.1.0.1"]
    nobody = dataclasses.replace(service, backends=service.backends[1:])
    o = objects(nobody)
    assert o.chains == {"svc_tcp-10_0_0_1-80": ()}
    assert list(o.elements) == [rs.SERVICES_MAP]  # dispatched, falls through: no DNAT


def test_services_spread_over_the_shards() -> None:
    counts = Counter(shard(vs(host=f"10.0.{i // 256}.{i % 256}")) for i in range(1600))
    assert len(counts) == rs.SHARDS and max(counts.values()) < 2 * 1600 / rs.SHARDS


# --- the properties the layout is built on -------------------------------------------------

# Expressions with a kernel validate hook: a rule holding one makes every commit re-check
# all chains reachable from the base chains.
VALIDATED = (nl.MetaLoad, nl.MetaSet, nl.Immediate, nl.Lookup, nl.Dnat, nl.Masquerade)


@pytest.mark.parametrize("scheduler", ["rr", "wrr", "sh", "dh", "wlc"])
def test_plain_service_chains_hold_no_validated_expression(scheduler: str) -> None:
    rule = the_rule(vs(scheduler=scheduler, weights=(3, 2, 1)))
    assert not [e for e in rule if isinstance(e, VALIDATED)]


def test_no_set_per_service_and_each_map_is_referenced_by_the_skeleton_only() -> None:
    service_rules = [r for s in (vs(persistence=30), vs("10.0.0.2", upper_threshold=3),
                                 vs("10.0.0.3")) for rules in objects(s).chains.values()
                     for r in rules]
    lookups = [e.set for r in service_rules for e in r if isinstance(e, nl.Lookup | nl.Dynset)]
    assert set(lookups) == {rs.STICKY_SET}  # a dynamic set: no element is added by netlink
    skeleton = [e.set for rules in rs.skeleton_rules().values() for r in rules for e in r
                if isinstance(e, nl.Lookup)]
    for name in rs.SETS:
        if name not in (rs.SERVICES_MAP, rs.STICKY_SET):
            assert skeleton.count(name) == 1, name  # one rule binds each slot map
    # prerouting and output: a membership test in 3 rules, the dispatch vmap in one
    assert skeleton.count(rs.SERVICES_MAP) == 8


def test_select_marks_for_masquerade_restores_the_ct_mark_then_dnats() -> None:
    select = rs.skeleton_rules()[rs.select_chain(3)][0]
    names = [type(e).__name__ for e in select]
    assert names[-1] == "Dnat" and names.index("CtSet") < names.index("MetaSet")
    assert nl.Lookup(rs.backends_map(3), nl.reg32(0), nl.reg32(4)) in select
    mark = next(e for e in select if isinstance(e, nl.Bitwise))
    assert mark.xor == nl.host32(rs.MASQ_MARK)


# --- persistence and limits ----------------------------------------------------------------


def test_persistence_uses_one_shared_sticky_set() -> None:
    service = vs(persistence=300, netmask="255.255.255.0", weights=(1, 1))
    o = objects(service)
    k = shard(service)
    toks = rs.tokens(service.active_backends, k)
    rules = o.chains[o.chain]
    assert len(rules) == 2 + 2  # a rule per server, the fresh pick, remember
    first = rules[0]
    assert first[0] == nl.Immediate(1, nl.host32(toks[0]))
    assert nl.Bitwise(nl.reg32(3), nl.reg32(3), socket.inet_aton("255.255.255.0"), bytes(4)) \
        in first
    assert nl.Lookup(rs.STICKY_SET, nl.reg32(0)) in first
    assert nl.Dynset(rs.STICKY_SET, nl.reg32(0), 300_000) in first
    assert first[-1] == nl.Immediate(0, nl.Verdict(nl.NFT_RETURN))
    assert rules[2][-1] == nl.Immediate(0, nl.jump(rs.token_chain(k)))
    assert rules[3][-1] == nl.Dynset(rs.STICKY_SET, nl.reg32(0), 300_000)
    assert set(o.elements[rs.tokens_map(k)].values()) == {nl.value(nl.host32(t)) for t in toks}
    assert len(o.elements[rs.backends_map(k)]) == 2  # keyed by token


def test_a_server_keeps_its_token_when_others_come_and_go() -> None:
    service = vs(persistence=60, weights=(1, 1, 1))
    before = dict(zip(service.backends, rs.tokens(service.active_backends, 5), strict=True))
    fewer = service.backends[1:]
    after = dict(zip(fewer, rs.tokens(fewer, 5), strict=True))
    assert all(after[b] == before[b] for b in fewer)
    assert len(set(before.values())) == 3 and all(t >> 24 == 5 for t in before.values())


def test_upper_threshold_selects_a_chain_per_server_that_counts() -> None:
    service = vs(weights=(1, 1), upper_threshold=10)
    o = objects(service)
    chain = o.chains["be_tcp-10_0_0_1-80_10_1_0_1-8080"]
    assert chain[1] == (nl.Connlimit(10, nl.NFT_CONNLIMIT_F_INV), nl.Immediate(0, nl.DROP))
    assert isinstance(chain[2][-1], nl.Dnat)
    limited = o.elements[rs.limited_map(shard(service))]
    assert sorted(limited.values()) == sorted(
        nl.goto(f"be_tcp-10_0_0_1-80_10_1_0_{i}-8080").encode() for i in (1, 2))


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("service", "words"), [
    (vs(forwarder="g"), "forwarder 'g' (direct routing) cannot be done"),
    (vs(forwarder="i"), "forwarder 'i' (ip-in-ip tunnelling) cannot be done"),
    (vs(host="fd00::1"), "IPv4 services only"),
    (dataclasses.replace(vs(), backends=(Backend("fd00::2", 80, 1, "m"),)), "IPv4 servers only"),
])
def test_unsupported_settings_are_refused_with_a_reason(service: VirtualService,
                                                        words: str) -> None:
    assert words in (rs.unsupported(service) or "")


def test_masquerade_services_are_supported() -> None:
    assert rs.unsupported(vs(scheduler="wlc", persistence=60, upper_threshold=5)) is None


# --- planning ------------------------------------------------------------------------------


def desired(*services: VirtualService) -> dict[str, rs.ServiceObjects]:
    return rs.desired_objects({s.id: s for s in services})


def reweighted(service: VirtualService, *weights: int) -> VirtualService:
    return dataclasses.replace(service, backends=tuple(
        dataclasses.replace(b, weight=w) for b, w in zip(service.backends, weights, strict=True)))


def test_a_weight_change_refills_one_chain_and_replaces_only_changed_slots() -> None:
    a, b = vs("10.0.0.1"), vs("10.0.0.2", scheduler="wrr")
    have = desired(a, b)
    backends = rs.backends_map(shard(b))
    # 1:1:1 -> 2:1:1: slots 0-2 keep their servers (smooth order a b c a), slot 3 is new
    plan = rs.plan_incremental(desired(reweighted(b, 2, 1, 1)), have, [b.id])
    assert plan.changed == [b.id] and not plan.added and not plan.removed
    assert plan.tx.summary() == [
        ("flush", "chain svc_tcp-10_0_0_2-80"), ("add", "rule to svc_tcp-10_0_0_2-80"),
        ("add", f"elements to {backends}")]
    # 1:1:1 -> 1:3:1 (b a b c b): slots 0-2 change hands (delete, add), 3-4 are new
    plan = rs.plan_incremental(desired(reweighted(b, 1, 3, 1)), have, [b.id])
    assert [op for op, _ in plan.tx.summary()] == ["delete", "flush", "add", "add"]
    assert len(plan.tx.del_elements[backends]) == 3 and len(plan.tx.add_elements[backends]) == 5


def test_a_server_address_change_touches_elements_only() -> None:
    a = vs()
    moved = dataclasses.replace(a, backends=(dataclasses.replace(a.backends[0], host="10.1.9.9"),
                                             *a.backends[1:]))
    plan = rs.plan_incremental(desired(moved), desired(a), [a.id])
    assert [op for op, _ in plan.tx.summary()] == ["delete", "add"]
    assert plan.tx.del_elements == {rs.backends_map(shard(a)): [next(
        k for k, d in objects(a).elements[rs.backends_map(shard(a))].items()
        if d[4:8] == socket.inet_aton("10.1.0.1"))]}


def test_incremental_plan_adds_and_removes_whole_services() -> None:
    a = vs("10.0.0.1", persistence=10, weights=(1,), upper_threshold=2)
    have = desired(a)
    plan = rs.plan_incremental({}, have, [a.id])
    kinds = [op for op, _ in plan.tx.summary()]
    assert kinds == ["delete"] * 3 + ["flush", "flush", "delete", "delete"]
    assert plan.tx.summary()[0] == ("delete", "elements from services")
    assert plan.removed == [a.id]
    plan = rs.plan_incremental(have, {}, [a.id])
    kinds = [op for op, _ in plan.tx.summary()]
    assert kinds == ["add"] * (2 + 6 + 3)  # chains, rules (3 + 3), elements
    assert plan.tx.summary()[-1] == ("add", "elements to services")  # dispatch last
    assert plan.added == [a.id]


def test_repair_of_an_identical_table_does_nothing() -> None:
    want = desired(vs("10.0.0.1"), vs("10.0.0.2", persistence=5), vs("10.0.0.3", upper_threshold=4))
    live = live_of(want)
    assert not rs.plan_repair(want, live).tx
    assert rs.drift(want, live) == ([], [], [])


def test_repair_removes_foreign_objects_and_refills_what_differs() -> None:
    a, b = vs("10.0.0.1"), vs("10.0.0.2")
    want = desired(a, b)
    live = live_of(want)
    foreign = rs.service_key("10.9.9.9", "tcp", 81)
    live.elements[rs.SERVICES_MAP][foreign] = nl.Verdict(nl.NF_ACCEPT).encode()
    live.rules["svc_tcp-10_0_0_1-80"] = []  # someone deleted a's rule
    live.chains["stray"] = nl.LiveChain("stray", None)
    assert rs.drift(want, live) == ([], ["tcp-10_9_9_9-81"], [a.id])
    plan = rs.plan_repair(want, live)
    assert plan.changed == [a.id] and plan.removed == ["tcp-10_9_9_9-81"]
    assert plan.tx.del_elements == {rs.SERVICES_MAP: [foreign]}
    assert plan.tx.flush == ["svc_tcp-10_0_0_1-80", "stray"] and plan.tx.del_chains == ["stray"]


def test_repair_removes_elements_left_over_in_a_wanted_service() -> None:
    a = vs(scheduler="wrr", weights=(2, 1))
    want = desired(a)
    live = live_of(want)
    name = rs.backends_map(shard(a))
    stale = a_key = next(iter(live.elements[name]))
    stale = a_key[:12] + nl.host32((shard(a) << 24) | 7)
    live.elements[name][stale] = nl.value(bytes(8))
    assert rs.drift(want, live) == ([], [], [a.id])
    assert rs.plan_repair(want, live).tx.del_elements == {name: [stale]}


def test_a_broken_base_makes_every_service_different() -> None:
    want = desired(vs())
    live = live_of(want)
    live.rules["prerouting"] = live.rules["prerouting"][1:]
    assert rs.drift(want, live) == ([], [], [vs().id])
    plan = rs.plan_repair(want, live)
    assert plan.tx.flush == ["prerouting"] and len(plan.tx.rules) == 3


def test_a_fixed_set_of_another_type_rebuilds_the_table_in_one_transaction() -> None:
    want = desired(vs())
    live = live_of(want)
    live.sets[rs.backends_map(0)] = dataclasses.replace(rs.SETS[rs.backends_map(0)], key_len=4)
    tx = rs.plan_repair(want, live).tx
    ops = tx.summary()
    assert ops[:2] == [("delete", "table portal_es"), ("add", "table portal_es")]
    assert ("add", f"set {rs.backends_map(0)}") in ops


def test_first_sync_creates_the_table_in_dependency_order() -> None:
    want = desired(vs(persistence=5), vs("10.0.0.2", upper_threshold=1))
    ops = [(op, obj.split()[0]) for op, obj in rs.plan_repair(want, rs.LiveTable()).tx.summary()]
    assert ops[0] == ("add", "table")
    first = {kind: ops.index(("add", kind)) for kind in ("set", "chain", "rule", "elements")}
    assert first["set"] < first["chain"] < first["rule"] < first["elements"]
    assert ops[-1] == ("add", "elements")


# --- wire format ---------------------------------------------------------------------------


def test_batch_numbers_messages_and_asks_only_the_last_for_an_ack() -> None:
    messages = [nl.new_table("t"), nl.new_chain("t", "c"), nl.flush_chain("t", "c")]
    replies = list(nl.replies(nl.batch(messages, first_seq=10)))
    assert [r.seq for r in replies] == [10, 11, 12, 13, 14]
    assert replies[0].kind == nl.NFNL_MSG_BATCH_BEGIN
    flags = [int.from_bytes(b[6:8], "little") for b in _frames(nl.batch(messages, 10))]
    assert [bool(f & nl.NLM_F_ACK) for f in flags] == [False, False, False, True, False]


def _frames(buf: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(buf):
        size = int.from_bytes(buf[off:off + 4], "little")
        out.append(buf[off:off + size])
        off += size
    return out


def test_elements_decode_fast_and_slow_alike() -> None:
    elements = [(bytes(range(i, i + 16)), nl.value(bytes(range(8)))) for i in range(50)]
    (message,) = nl.add_elements("t", "m", elements)
    payload = bytes(4) + message.body
    assert list(nl.decode_value_elements(payload, 16, 8)) == elements
    assert list(nl.decode_elements(payload)) == elements
    odd = payload + nl.be32(4, 1)  # an attribute the fast path does not know: slow path
    assert list(nl.decode_value_elements(odd, 16, 12)) == elements


def test_large_element_lists_are_split_into_messages_under_64k() -> None:
    elements = [(i.to_bytes(16, "big"), nl.value(bytes(8))) for i in range(10_000)]
    messages = nl.add_elements("t", "m", elements)
    assert len(messages) > 1 and all(len(m.body) < 65_535 for m in messages)
    decoded = [e for m in messages for e in nl.decode_elements(bytes(4) + m.body)]
    assert decoded == elements
