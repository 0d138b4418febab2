"""The nftables data plane with real packets: client -> lb (NftablesDataplane in its own
namespace) -> backends, all in namespaces the test creates (tests/netns.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from portal_es.adapters.kernel import DataplaneError
from portal_es.adapters.kernel import nft_netlink as nl
from portal_es.adapters.kernel import nft_ruleset as rs
from portal_es.adapters.kernel.nftables import NftablesDataplane, _Netlink, nftables_available
from projections.l4 import Backend, VirtualService
from tests.conftest import unavailable
from tests.netns import Held, NetnsUnavailable, Topology, ask, run_in, spread, topology

VIP = "10.77.1.1"
PORT = 80
BACKEND_PORT = 8080


@pytest.fixture
def topo() -> Iterator[Topology]:
    if not nftables_available():
        unavailable("nftables is not usable here (libnftables1 missing or not root)")
    try:
        with topology(backends=3) as t:
            t.add_vip(VIP)
            yield t
    except NetnsUnavailable as e:
        unavailable(str(e))


@pytest.fixture
def plane(topo: Topology) -> Iterator[NftablesDataplane]:
    with NftablesDataplane(netns=topo.lb) as p:
        yield p


def service(topo: Topology, scheduler: str = "rr", weights: tuple[int, ...] = (1, 1, 1),
            proto: str = "tcp", persistence: int = 0, netmask: str = "",
            **backend_fields: object) -> VirtualService:
    backends = tuple(
        Backend(topo.address(f"be{i}"), BACKEND_PORT, w, "m", **backend_fields)  # type: ignore[arg-type]
        for i, w in enumerate(weights, start=1))
    sid = rs.service_id(proto, VIP, PORT)
    return VirtualService(sid, VIP, PORT, proto, scheduler, persistence, netmask, backends)


def desired(*services: VirtualService) -> dict[str, VirtualService]:
    return {s.id: s for s in services}


def counts(topo: Topology, n: int, proto: str = "tcp", ns: str | None = None) -> dict[str, int]:
    return dict(spread(ns or topo.client, VIP, PORT, n, proto))


def ruleset(topo: Topology) -> str:
    return topo.sh("lb", "nft", "list", "ruleset")


def test_rr_spreads_equally(topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT)
    report = plane.sync(desired(service(topo)))
    assert report.added == [rs.service_id("tcp", VIP, PORT)]
    assert counts(topo, 30) == {"be1": 10, "be2": 10, "be3": 10}


def test_wrr_follows_weights_and_weight_zero_gets_nothing(
        topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT)
    plane.sync(desired(service(topo, "wrr", (3, 2, 1))))
    assert counts(topo, 60) == {"be1": 30, "be2": 20, "be3": 10}
    plane.sync(desired(service(topo, "wrr", (3, 0, 1))))
    assert counts(topo, 40) == {"be1": 30, "be3": 10}


def test_sh_is_sticky_per_source(topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT)
    sources = [f"10.77.0.{i}" for i in range(101, 109)]
    for src in sources:
        topo.sh("client", "ip", "addr", "add", f"{src}/24", "dev", "eth0")
    plane.sync(desired(service(topo, "sh")))

    def per_source() -> dict[str, set[str]]:
        return {src: {ask(VIP, PORT, source=src) for _ in range(4)} for src in sources}

    seen = run_in(topo.client, per_source)
    assert all(len(names) == 1 and "" not in names for names in seen.values()), seen
    assert len({next(iter(n)) for n in seen.values()}) > 1, "8 sources all hashed alike"


def test_persistence_sticks_within_timeout_and_frees_after(
        topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT)
    plane.sync(desired(service(topo, "rr", persistence=2, netmask="255.255.255.0")))
    first = counts(topo, 10)
    assert len(first) == 1 and "" not in first, first
    time.sleep(2.6)  # the affinity entry times out; rr's counter moved on by one
    second = counts(topo, 5)
    assert len(second) == 1 and second.keys() != first.keys(), (first, second)


def test_removed_server_drains(topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT, hold=True)
    svc = service(topo)
    plane.sync(desired(svc))
    held = Held(topo.client, VIP, PORT)
    name = held.ping()
    assert name in ("be1", "be2", "be3")
    index = int(name[2:]) - 1
    draining = tuple(dataclasses.replace(b, draining=(i == index))
                     for i, b in enumerate(svc.backends))
    report = plane.sync(desired(dataclasses.replace(svc, backends=draining)))
    assert report.changed == [svc.id]
    assert held.ping() == name, "an established connection was cut by draining"
    fresh = {ask_hold(topo) for _ in range(6)}
    assert name not in fresh and "" not in fresh, fresh
    # Removed from the log entirely: the established connection still lives (conntrack).
    gone = tuple(b for i, b in enumerate(svc.backends) if i != index)
    plane.sync(desired(dataclasses.replace(svc, backends=gone)))
    assert held.ping() == name
    held.close()


def ask_hold(topo: Topology) -> str:
    """One connection to a line-echoing ("hold") backend: its name."""
    h = Held(topo.client, VIP, PORT)
    try:
        return h.ping()
    finally:
        h.close()


def test_service_removal(topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT)
    svc = service(topo)
    plane.sync(desired(svc))
    assert "" not in counts(topo, 3)
    report = plane.sync({})
    assert report.removed == [svc.id]
    assert counts(topo, 3) == {"": 3}  # nothing listens on the VIP itself
    assert "svc_" not in ruleset(topo)


def test_udp(topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT, proto="udp")
    plane.sync(desired(service(topo, proto="udp")))
    # Each datagram from a new source port is a new conntrack entry: rr per "connection".
    assert counts(topo, 12, proto="udp") == {"be1": 4, "be2": 4, "be3": 4}


def test_lb_local_client(topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT)
    plane.sync(desired(service(topo)))
    assert counts(topo, 9, ns=topo.lb) == {"be1": 3, "be2": 3, "be3": 3}


def test_changes_with_traffic_drop_no_established_connection(
        topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT, hold=True)
    svc = service(topo)
    plane.sync(desired(svc))
    held = [Held(topo.client, VIP, PORT) for _ in range(3)]
    names = [h.ping() for h in held]
    assert sorted(names) == ["be1", "be2", "be3"]
    changes = [
        dataclasses.replace(svc, scheduler="wrr",
                            backends=tuple(dataclasses.replace(b, weight=2) for b in svc.backends)),
        dataclasses.replace(svc, scheduler="sh"),
        dataclasses.replace(svc, persistence=30),  # per-backend chains and sets appear
        dataclasses.replace(svc, backends=svc.backends[:1]),
        svc,
    ]
    for change in changes:
        plane.sync(desired(change))
        assert [h.ping() for h in held] == names, f"after {change.scheduler} change"
        assert "" not in {ask_hold(topo) for _ in range(2)}
    plane.sync(desired(svc), full=True)
    assert [h.ping() for h in held] == names
    for h in held:
        h.close()


def test_drift_after_hand_edits_is_repaired_by_full_sync(
        topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT)
    svc = service(topo)
    want = desired(svc)
    plane.sync(want)
    assert plane.drift(want).empty
    chain = rs.service_chain(svc.id)
    listing = topo.sh("lb", "nft", "-a", "list", "chain", "ip", rs.TABLE, chain)
    handle = listing.split("# handle ")[-1].split()[0]
    topo.sh("lb", "nft", "delete", "rule", "ip", rs.TABLE, chain, "handle", handle)
    topo.sh("lb", "nft", "add", "element", "ip", rs.TABLE, rs.SERVICES_MAP,
            "{ 10.77.9.9 . tcp . 81 : accept }")
    drift = plane.drift(want)
    assert drift.different == [svc.id]
    assert drift.unexpected == ["tcp-10_77_9_9-81"]
    assert drift.missing == []
    report = plane.sync(want, full=True)
    assert report.changed == [svc.id] and report.removed == ["tcp-10_77_9_9-81"]
    assert plane.drift(want).empty
    assert counts(topo, 3) == {"be1": 1, "be2": 1, "be3": 1}


def test_failed_transaction_leaves_the_ruleset_intact(
        topo: Topology, plane: NftablesDataplane, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = service(topo)
    plane.sync(desired(svc))
    before = ruleset(topo)
    real = rs.service_objects

    def broken(vs: VirtualService) -> rs.ServiceObjects:
        objects = real(vs)  # a jump to a chain that does not exist: the kernel refuses it
        jump = (nl.Immediate(nl.NFT_REG_VERDICT, nl.jump("no_such_chain")),)
        objects.put_chain(objects.chain, (*objects.chains[objects.chain], jump))
        return objects

    monkeypatch.setattr(rs, "service_objects", broken)
    with pytest.raises(DataplaneError, match=r"nftables refused .*: No such file"):
        plane.sync(desired(dataclasses.replace(svc, scheduler="wrr")))
    assert ruleset(topo) == before
    monkeypatch.setattr(rs, "service_objects", real)
    plane.sync(desired(dataclasses.replace(svc, scheduler="wrr")))  # recovers (full sync)
    assert plane.drift(desired(dataclasses.replace(svc, scheduler="wrr"))).empty


def test_upper_threshold_limits_connections(topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT, hold=True)
    svc = service(topo, weights=(1,), upper_threshold=2)
    plane.sync(desired(svc))
    held = [Held(topo.client, VIP, PORT) for _ in range(2)]
    assert [h.ping() for h in held] == ["be1", "be1"]
    with pytest.raises(OSError):
        Held(topo.client, VIP, PORT, timeout=1.0)
    held[0].close()
    time.sleep(0.2)
    assert ask_hold(topo) == "be1"  # a closed connection frees its place
    held[1].close()


def test_flush_removes_only_our_table(topo: Topology, plane: NftablesDataplane) -> None:
    topo.sh("lb", "nft", "add", "table", "ip", "someone_else")
    plane.sync(desired(service(topo)))
    plane.flush()
    assert topo.sh("lb", "nft", "list", "tables").split() == ["table", "ip", "someone_else"]
    plane.flush()  # idempotent


def test_persistence_survives_changes_of_other_servers(
        topo: Topology, plane: NftablesDataplane) -> None:
    topo.start_backends(BACKEND_PORT)
    svc = service(topo, "rr", persistence=30, netmask="255.255.255.0")
    plane.sync(desired(svc))
    first = counts(topo, 4)
    assert len(first) == 1 and "" not in first, first
    (stuck,) = first
    index = int(stuck[2:]) - 1
    other = (index + 1) % 3
    # Another server leaves (removed from the log): the client keeps its server.
    fewer = dataclasses.replace(svc, backends=tuple(
        b for i, b in enumerate(svc.backends) if i != other))
    plane.sync(desired(fewer))
    assert counts(topo, 4) == {stuck: 4}
    # Its own server leaves: it is rescheduled, and sticks to the new one.
    gone = dataclasses.replace(fewer, backends=tuple(
        b for b in fewer.backends if b is not svc.backends[index]))
    plane.sync(desired(gone))
    after = counts(topo, 4)
    assert len(after) == 1 and stuck not in after and "" not in after, after
    assert plane.drift(desired(gone)).empty


def counter(topo: Topology, table: str, chain: str) -> int:
    listing = topo.sh("lb", "nft", "list", "chain", "ip", table, chain)
    return int(listing.split("packets ")[1].split()[0])


OTHER_RULESET = """
table ip other {
    chain mangle {
        type filter hook prerouting priority -150; policy accept;
        meta mark set meta mark | 0x100 ct mark set 0x42
    }
    chain forwarded {
        type filter hook forward priority 0; policy accept;
        ct state new ct mark 0x42 meta mark & 0x2100 == 0x2100 counter
    }
}
"""


def test_marks_of_other_rulesets_survive(topo: Topology, plane: NftablesDataplane,
                                         tmp_path: Path) -> None:
    """The slot travels in the conntrack mark (saved and restored around the selection) and
    the packet mark only gets the masquerade bit ORed in: another ruleset's marks on a new
    connection are what it set, for the first packet as for the rest."""
    topo.start_backends(BACKEND_PORT)
    (tmp_path / "other.nft").write_text(OTHER_RULESET)
    topo.sh("lb", "nft", "-f", str(tmp_path / "other.nft"))
    plane.sync(desired(service(topo, weights=(1, 1))))
    assert "" not in counts(topo, 4)
    assert counter(topo, "other", "forwarded") == 4  # every first packet: both marks intact


def test_every_rule_shape_reads_back_as_written(topo: Topology, plane: NftablesDataplane
                                               ) -> None:
    """Drift compares the kernel's dump with our encoding byte for byte: every shape (each
    scheduler, persistence, limits, no server) must read back equal, and nft must list it."""
    shapes = [
        service(topo, "wrr", (3, 2, 1)), service(topo, "sh"), service(topo, "dh"),
        service(topo, "wlc", (2, 1)), service(topo, persistence=60, netmask="255.255.0.0"),
        service(topo, "sh", persistence=5), service(topo, upper_threshold=3),
        service(topo, "wrr", (2, 1), persistence=9, upper_threshold=4),
        service(topo, weights=(0, 0)),
    ]
    want = {f"{s.id}-{i}": dataclasses.replace(s, port=PORT + i, id=f"{s.id}-{i}")
            for i, s in enumerate(shapes)}
    plane.sync(want)
    assert plane.drift(want).empty
    assert plane.sync(want, full=True).empty
    listing = ruleset(topo)
    assert "ct mark set numgen inc mod 6 offset" in listing  # wrr 3:2:1
    assert "update @sticky" in listing and "ct count over 3 drop" in listing
    json_listing = topo.sh("lb", "nft", "-j", "list", "ruleset")
    assert '"sticky"' in json_listing


def test_many_services_one_change_is_one_small_transaction(topo: Topology,
                                                           plane: NftablesDataplane) -> None:
    """2,000 services x 10 servers (no traffic): a weight change is applied alone."""
    def many(weight: int) -> dict[str, VirtualService]:
        out = {}
        for i in range(2000):
            host = f"10.78.{i // 250}.{i % 250 + 1}"
            backends = tuple(Backend(f"10.79.{i % 200}.{j + 1}", 8080,
                                     weight if (i, j) == (0, 0) else 1, "m") for j in range(10))
            sid = rs.service_id("tcp", host, PORT)
            out[sid] = VirtualService(sid, host, PORT, "tcp", "wrr", 0, "", backends)
        return out

    started = time.perf_counter()
    plane.sync(many(1))
    created = time.perf_counter() - started
    report = plane.sync(many(3))
    assert report.changed == [next(iter(many(1)))]
    assert report.seconds < 0.25, report.seconds  # ~1-3 ms; generous for loaded machines
    assert created < 20, created
    assert plane.drift(many(3)).empty


def test_encodings_equal_what_nft_makes_of_the_text(topo: Topology, tmp_path: Path) -> None:
    """Rules are written over netlink; for each shape nft's text syntax can express, nft's
    own encoding of that text is byte-equal, so `nft list` shows what we mean."""
    shard = 7
    sticky = rs.SETS[rs.STICKY_SET]
    backend = Backend("10.0.1.1", 8080, 1, "m", upper_threshold=10)
    svc = VirtualService("x", VIP, PORT, "tcp", "rr", 300, "255.255.255.0", (backend,))
    be_rules = rs._backend_chain_rules(svc, backend)
    persistent = rs._persistent_rules(svc, [0x0733C2F1], rs._selector("rr", 1, shard), shard)
    offset = shard << 24
    shapes = [
        (f"ct mark set numgen inc mod 3 offset {offset}", rs._selector("rr", 3, shard)),
        (f"ct mark set numgen random mod 5 offset {offset}", rs._selector("wlc", 5, shard)),
        (f"ct mark set jhash ip saddr mod 4 seed 0x706f7274 offset {offset}",
         rs._selector("sh", 4, shard)),
        ("meta mark & 0x2000 == 0x2000 masquerade", rs.skeleton_rules()["postrouting"][0]),
        ("ct count over 10 drop", be_rules[1]),
        ("meta mark set meta mark | 0x2000 meta l4proto tcp dnat to 10.0.1.1:8080",
         be_rules[2]),
        (f"ct mark set ip daddr . meta l4proto . th dport . ct mark map @{rs.tokens_map(7)}",
         rs.skeleton_rules()[rs.token_chain(7)][0]),
        ("update @sticky { ip daddr . meta l4proto . th dport . ip saddr & 255.255.255.0 "
         ". ct mark timeout 300s }", persistent[-1]),
    ]
    lines = "\n".join(f"add rule ip probe c {text}" for text, _ in shapes)
    (tmp_path / "probe.nft").write_text(
        "table ip probe {\n"
        f"  map {rs.tokens_map(7)} {{\n"
        "    type ipv4_addr . inet_proto . inet_service . mark : mark; }\n"
        "  set sticky { type ipv4_addr . inet_proto . inet_service . ipv4_addr . mark;\n"
        f"               size {sticky.size}; flags dynamic,timeout; }}\n"
        "  chain postrouting { type nat hook postrouting priority srcnat; }\n"
        "  chain c { }\n"
        "}\n" + lines + "\n")
    topo.sh("lb", "nft", "-f", str(tmp_path / "probe.nft"))
    link = _Netlink(topo.lb)
    try:
        dumped = [nl.decode_rule(nl.object_attributes(r))
                  for r in link.dump(partial(nl.get_rules, "probe"))]
    finally:
        link.close()
    made = [expressions for chain, expressions in dumped if chain == "c"]
    for (text, rule), expressions in zip(shapes, made, strict=True):
        assert expressions == rs.wire(rule), text
