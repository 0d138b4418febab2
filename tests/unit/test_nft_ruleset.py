"""The nftables ruleset generator and planner, without a kernel (pure JSON)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

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


def the_rule(service: VirtualService) -> list[dict[str, Any]]:
    rules = rs.service_rules(service).chains[rs.service_chain(service.id)]
    assert len(rules) == 1
    return rules[0]


def selector_and_elements(service: VirtualService) -> tuple[dict[str, Any], list[Any]]:
    dnat = the_rule(service)[-1]["dnat"]
    return dnat["addr"]["map"]["key"], dnat["addr"]["map"]["data"]["set"]


def expand(elements: list[Any]) -> list[str]:
    """The backend host of every slot, in slot order."""
    out: list[str] = []
    for key, data in elements:
        first, last = key["range"] if isinstance(key, dict) else (key, key)
        out += [data["concat"][0]] * (last - first + 1)
    return out


# --- names ---------------------------------------------------------------------------------


def test_names_derive_from_the_service_identity() -> None:
    service = vs()
    b = service.backends[0]
    assert service.id == "tcp-10_0_0_1-80"
    assert rs.service_chain(service.id) == "svc_tcp-10_0_0_1-80"
    assert rs.backend_chain(service.id, b) == "be_tcp-10_0_0_1-80_10_1_0_1-8080"
    assert rs.affinity_set(service.id, b) == "aff_tcp-10_0_0_1-80_10_1_0_1-8080"
    assert rs.service_rules(service) == rs.service_rules(vs())  # same input, same output


def test_map_element_dispatches_to_the_service_chain() -> None:
    rules = rs.service_rules(vs(proto="udp", port=53))
    assert rules.element() == [{"concat": ["10.0.0.1", "udp", 53]},
                               {"goto": {"target": "svc_udp-10_0_0_1-53"}}]


# --- schedulers ----------------------------------------------------------------------------


def test_rr_is_numgen_inc_over_active_backends() -> None:
    key, elements = selector_and_elements(vs(weights=(5, 1, 1)))
    assert key == {"numgen": {"mode": "inc", "mod": 3, "offset": 0}}
    assert expand(elements) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]  # rr ignores weights


def test_wrr_interleaves_by_weight() -> None:
    key, elements = selector_and_elements(vs(scheduler="wrr", weights=(6, 4, 2)))
    assert key["numgen"]["mod"] == 6  # 6:4:2 reduced by the gcd
    order = expand(elements)
    assert Counter(order) == {"10.1.0.1": 3, "10.1.0.2": 2, "10.1.0.3": 1}
    assert order[:2] != ["10.1.0.1", "10.1.0.1"]  # smooth, not a burst


def test_wrr_with_a_large_total_uses_one_interval_per_backend() -> None:
    _, elements = selector_and_elements(vs(scheduler="wrr", weights=(1000, 1)))
    assert [k for k, _ in elements] == [{"range": [0, 999]}, 1000]


@pytest.mark.parametrize(("scheduler", "field"), [("sh", "saddr"), ("dh", "daddr")])
def test_hashing_schedulers(scheduler: str, field: str) -> None:
    key, elements = selector_and_elements(vs(scheduler=scheduler, weights=(2, 1, 1)))
    assert key["jhash"]["expr"] == {"payload": {"protocol": "ip", "field": field}}
    assert key["jhash"]["mod"] == 4 and key["jhash"]["seed"] == rs.JHASH_SEED
    assert Counter(expand(elements)) == {"10.1.0.1": 2, "10.1.0.2": 1, "10.1.0.3": 1}


@pytest.mark.parametrize("scheduler", ["lc", "wlc", "sed", "nq", "lblc", "lblcr"])
def test_connection_count_schedulers_are_weighted_random(scheduler: str) -> None:
    key, _ = selector_and_elements(vs(scheduler=scheduler, weights=(3, 1, 1)))
    assert key == {"numgen": {"mode": "random", "mod": 5, "offset": 0}}


def test_scheduler_table_covers_every_portal_scheduler() -> None:
    assert sorted(row[0] for row in rs.scheduler_table()) == sorted(SCHEDULERS)


def test_weight_zero_and_draining_get_no_new_connections() -> None:
    service = vs(weights=(1, 0, 1))
    service = dataclasses.replace(service, backends=(
        service.backends[0], service.backends[1],
        dataclasses.replace(service.backends[2], draining=True)))
    assert the_rule(service)[-1] == {"dnat": {"addr": "10.1.0.1", "port": 8080}}
    nobody = dataclasses.replace(service, backends=service.backends[1:])
    assert rs.service_rules(nobody).chains == {"svc_tcp-10_0_0_1-80": []}


def test_dnat_is_marked_for_masquerade_and_has_transport_context() -> None:
    rule = the_rule(vs(proto="udp"))
    assert rule[0] == {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                                 "right": "udp"}}
    assert rule[1]["mangle"]["value"] == {"|": [{"meta": {"key": "mark"}}, rs.MASQ_MARK]}


def test_persistence_uses_per_backend_sets_checked_first() -> None:
    service = vs(persistence=300, netmask="255.255.255.0", weights=(1, 1))
    rules = rs.service_rules(service)
    sets = sorted(rules.sets)
    assert sets == ["aff_tcp-10_0_0_1-80_10_1_0_1-8080", "aff_tcp-10_0_0_1-80_10_1_0_2-8080"]
    assert all(s.timeout == 300 for s in rules.sets.values())
    head = rules.chains[rules.chain]
    masked = {"&": [{"payload": {"protocol": "ip", "field": "saddr"}}, "255.255.255.0"]}
    assert head[0] == [{"match": {"op": "==", "left": masked, "right": f"@{sets[0]}"}},
                       {"goto": {"target": "be_tcp-10_0_0_1-80_10_1_0_1-8080"}}]
    assert "vmap" in head[-1][0]  # then the scheduler
    backend = rules.chains["be_tcp-10_0_0_1-80_10_1_0_1-8080"][0]
    assert backend[0] == {"set": {"op": "update", "elem": masked, "set": f"@{sets[0]}"}}


def test_upper_threshold_is_a_connection_count_per_backend() -> None:
    rules = rs.service_rules(vs(weights=(1,), upper_threshold=10))
    chain = rules.chains["be_tcp-10_0_0_1-80_10_1_0_1-8080"]
    assert chain[0] == [{"ct count": {"val": 10, "inv": True}}, {"drop": None}]


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


def chains_touched(commands: list[dict[str, Any]]) -> set[str]:
    names = set()
    for cmd in commands:
        ((_, body),) = cmd.items()
        ((kind, obj),) = body.items()
        if kind in ("chain", "rule"):
            names.add(obj.get("chain", obj.get("name")))
    return names


def test_incremental_plan_touches_only_changed_services() -> None:
    a, b = vs("10.0.0.1"), vs("10.0.0.2")
    have = rs.desired_rules({a.id: a, b.id: b})
    b2 = dataclasses.replace(b, scheduler="wrr")
    want = rs.desired_rules({b.id: b2})
    plan = rs.plan_incremental(want, have, [b.id])
    commands = plan.tx.commands()
    assert plan.changed == [b.id] and not plan.added and not plan.removed
    assert chains_touched(commands) == {"svc_tcp-10_0_0_2-80"}
    assert [next(iter(c)) for c in commands] == ["flush", "add"]  # no element churn


def test_incremental_plan_adds_and_removes_whole_services() -> None:
    a = vs("10.0.0.1", persistence=10, weights=(1,))
    have = rs.desired_rules({a.id: a})
    plan = rs.plan_incremental({}, have, [a.id])
    kinds = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in plan.tx.commands()]
    assert kinds == [("delete", "element"), ("flush", "chain"), ("flush", "chain"),
                     ("delete", "chain"), ("delete", "chain"), ("delete", "set")]
    assert plan.removed == [a.id]
    plan = rs.plan_incremental(have, {}, [a.id])
    kinds = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in plan.tx.commands()]
    # service chain: affinity check + goto; backend chain: update + dnat
    assert kinds == [("add", "set"), ("add", "chain"), ("add", "chain"), ("add", "rule"),
                     ("add", "rule"), ("add", "rule"), ("add", "element")]


def listing(want: dict[str, rs.ServiceRules]) -> list[dict[str, Any]]:
    """What `nft -j list table` would print for a table holding exactly `want`."""
    t = {"family": rs.FAMILY, "table": rs.TABLE}
    out: list[dict[str, Any]] = [{"table": {"family": rs.FAMILY, "name": rs.TABLE}}]
    out.append({"map": {**t, "name": rs.SERVICES_MAP, "type": rs.MAP_TYPE, "map": "verdict",
                        "elem": [r.element() for r in want.values()]}})
    chains = {name: ({**rs.BASE_CHAINS[name]}, rules) for name, rules in rs.base_rules().items()}
    for r in want.values():
        chains.update({name: ({}, rules) for name, rules in r.chains.items()})
        out += [{"set": {**t, "name": s.name, "type": "ipv4_addr", "flags": ["timeout"],
                         "timeout": s.timeout, "size": 65535}} for s in r.sets.values()]
    for name, (props, rules) in chains.items():
        out.append({"chain": {**t, "name": name, **props}})
        out += [{"rule": {**t, "chain": name, "expr": rule}} for rule in rules]
    return out


def test_repair_of_an_identical_table_does_nothing() -> None:
    want = rs.desired_rules({s.id: s for s in (vs("10.0.0.1"), vs("10.0.0.2", persistence=5))})
    live = rs.parse_live(listing(want))
    assert rs.plan_repair(want, live).tx.commands() == []
    assert rs.drift(want, live) == ([], [], [])


def test_repair_removes_foreign_objects_and_refills_what_differs() -> None:
    a, b = vs("10.0.0.1"), vs("10.0.0.2")
    want = rs.desired_rules({a.id: a, b.id: b})
    objects = listing(want)
    objects[1]["map"]["elem"].append([{"concat": ["10.9.9.9", "tcp", 81]}, {"accept": None}])
    objects = [o for o in objects  # someone deleted a's rule
               if o.get("rule", {}).get("chain") != "svc_tcp-10_0_0_1-80"]
    objects.append({"chain": {"family": "ip", "table": rs.TABLE, "name": "stray"}})
    live = rs.parse_live(objects)
    assert rs.drift(want, live) == ([], ["tcp-10_9_9_9-81"], [a.id])
    plan = rs.plan_repair(want, live)
    assert plan.changed == [a.id] and plan.removed == ["tcp-10_9_9_9-81"]
    commands = plan.tx.commands()
    assert commands[0] == {"delete": {"element": {
        "family": "ip", "table": rs.TABLE, "name": rs.SERVICES_MAP,
        "elem": [{"concat": ["10.9.9.9", "tcp", 81]}]}}}
    assert chains_touched(commands) == {"svc_tcp-10_0_0_1-80", "stray"}


def test_a_broken_base_makes_every_service_different() -> None:
    want = rs.desired_rules({vs().id: vs()})
    objects = [o for o in listing(want) if o.get("rule", {}).get("chain") != "prerouting"]
    live = rs.parse_live(objects)
    assert rs.drift(want, live) == ([], [], [vs().id])
    commands = rs.plan_repair(want, live).tx.commands()
    assert {"flush": {"chain": {"family": "ip", "table": rs.TABLE, "name": "prerouting"}}} \
        in commands


def test_first_sync_creates_the_table_in_dependency_order() -> None:
    want = rs.desired_rules({vs().id: vs(persistence=5)})
    kinds = [next(iter(next(iter(c.values())))) for c in
             rs.plan_repair(want, rs.LiveTable()).tx.commands()]
    assert kinds[:2] == ["table", "map"]
    assert kinds.index("set") < kinds.index("rule") and kinds[-1] == "element"
