"""The IPVS data plane where the kernel has no IPVS: desired state -> kernel records, the diff,
its undo, the wire format (checked against pyroute2's IPVS codec) and the generic netlink
socket (on the host's own nlctrl family). The host runs these; the VM runs only the
test_kernel_* modules."""

from __future__ import annotations

import errno
import ipaddress
import struct
from dataclasses import replace
from socket import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2 import IPVSDest, IPVSService
from pyroute2.netlink.generic.ipvs import ipvsmsg

from portal_es.adapters.kernel import DataplaneError, L4Dataplane
from portal_es.adapters.kernel.ipvs import (
    FULL_PREFIX_V6,
    GENL_ID_CTRL,
    IP_VS_CONN_F_DROUTE,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_TUNNEL,
    IP_VS_SVC_F_PERSISTENT,
    IPVS_CMD_GET_SERVICE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    GenlSocket,
    IpvsDataplane,
    KernelRefused,
    KernelService,
    Op,
    RealServer,
    ServiceKey,
    Table,
    genl_message,
    ipvs_available,
    kernel_service,
    kernel_services,
    op_request,
    parse_attrs,
    parse_dest,
    parse_service,
    plan,
    undo,
    unsupported,
)
from projections.l4 import Backend, VirtualService
from tests.conftest import unavailable
from tests.netns import NetnsUnavailable, namespace


def vs(host: str = "10.0.0.1", port: int = 80, backends: tuple[Backend, ...] = (),
       **kw: object) -> VirtualService:
    fields: dict[str, object] = dict(id=f"tcp-{host.replace('.', '_')}-{port}", host=host,
                                     port=port, protocol="tcp", scheduler="wlc",
                                     persistence=0, netmask="", backends=backends)
    fields.update(kw)
    return VirtualService(**fields)  # type: ignore[arg-type]


def test_it_is_an_l4_dataplane_that_opens_nothing_until_used() -> None:
    plane: L4Dataplane = IpvsDataplane()  # mypy checks the protocol; no socket yet
    assert plane.name == "ipvs"
    assert plane.unsupported(vs()) is None


def test_service_settings_map_to_kernel_fields() -> None:
    k = kernel_service(vs(scheduler="sh", persistence=300, netmask="255.255.255.0",
                          protocol="udp"))
    assert k.key == ServiceKey(AF_INET, IPPROTO_UDP, "10.0.0.1", 80)
    assert (k.scheduler, k.flags, k.timeout, k.netmask) == (
        "sh", IP_VS_SVC_F_PERSISTENT, 300, 0xFFFFFF00)
    plain = kernel_service(vs())
    assert (plain.flags, plain.timeout, plain.netmask) == (0, 0, 0xFFFFFFFF)
    v6 = kernel_service(vs(host="fd00:0::1"))
    assert (v6.key.af, v6.key.addr, v6.netmask) == (AF_INET6, "fd00::1", FULL_PREFIX_V6)


def test_backend_settings_map_to_real_server_fields() -> None:
    k = kernel_service(vs(backends=(
        Backend("10.1.0.1", 80, 3, "m", 10, 2),
        Backend("10.1.0.2", 80, 1, "g"),
        Backend("10.1.0.3", 80, 1, "i", 0, 5),  # lower without upper: meaningless, dropped
        Backend("10.1.0.4", 80, 4, "m", draining=True),
    )))
    got = [(d.addr, d.fwd_method, d.weight, d.u_thresh, d.l_thresh) for d in k.dests.values()]
    assert got == [
        ("10.1.0.1", IP_VS_CONN_F_MASQ, 3, 10, 2),
        ("10.1.0.2", IP_VS_CONN_F_DROUTE, 1, 0, 0),
        ("10.1.0.3", IP_VS_CONN_F_TUNNEL, 1, 0, 0),
        ("10.1.0.4", IP_VS_CONN_F_MASQ, 0, 0, 0),
    ]


def test_a_live_server_beats_its_draining_twin() -> None:
    k = kernel_service(vs(backends=(Backend("10.1.0.1", 80, 2, "m"),
                                    Backend("10.1.0.1", 80, 1, "m", draining=True))))
    assert [d.weight for d in k.dests.values()] == [2]


def test_two_ids_for_one_kernel_service_are_refused() -> None:
    with pytest.raises(DataplaneError, match="same IPVS service"):
        kernel_services({"a": vs(host="fd00::1"), "b": vs(host="fd00:0::1")})


def test_report_ids_use_portals_spelling() -> None:
    assert ServiceKey(AF_INET, IPPROTO_TCP, "10.0.0.1", 80).id == "tcp-10_0_0_1-80"
    assert ServiceKey(AF_INET, 0, "", 0, fwmark=7).id == "fwmark-7"


@pytest.mark.parametrize(("service", "reason"), [
    (vs(host="fd00::1", netmask="255.255.255.0"), "prefix length"),
    (vs(persistence=10**8), "persistence"),
    (vs(backends=(Backend("fd00::2", 80, 1, "m"),)), "address family"),
    (vs(backends=(Backend("10.1.0.1", 80, 2**31, "m"),)), "weight"),
    (vs(backends=(Backend("10.1.0.1", 80, 1, "m", 2**32),)), "threshold"),
])
def test_unsupported_names_the_limit(service: VirtualService, reason: str) -> None:
    assert reason in (unsupported(service) or "")


def test_everything_else_is_supported() -> None:
    assert unsupported(vs(host="fd00::1", backends=(Backend("10.1.0.1", 80, 1, "i"),))) is None
    assert unsupported(vs(persistence=86400, netmask="255.255.0.0", backends=(
        Backend("10.1.0.1", 80, 100, "g", 1000, 10),))) is None


def test_plan_touches_only_differences() -> None:
    a = kernel_service(vs(port=80, backends=(Backend("10.1.0.1", 80, 1, "m"),
                                             Backend("10.1.0.2", 80, 1, "m"))))
    b = kernel_service(vs(port=81))
    c = kernel_service(vs(port=82))
    a2 = kernel_service(vs(port=80, backends=(Backend("10.1.0.1", 80, 5, "m"),
                                              Backend("10.1.0.3", 80, 1, "m"))))
    assert plan({a.key: a, b.key: b}, {a.key: a, b.key: b}).ops == []
    p = plan({a2.key: a2, c.key: c}, {a.key: a, b.key: b})
    assert [str(op) for op in p.ops] == [
        "del service tcp-10_0_0_1-81",
        "add real server 10.1.0.3:80 of service tcp-10_0_0_1-80",
        "set real server 10.1.0.1:80 of service tcp-10_0_0_1-80",
        "del real server 10.1.0.2:80 of service tcp-10_0_0_1-80",
        "add service tcp-10_0_0_1-82",
    ]
    assert (p.added, p.changed, p.removed) == ([c.key], [a.key], [b.key])
    settings_only = replace(a, scheduler="rr")
    assert [op.verb for op in plan({a.key: settings_only}, {a.key: a}).ops] == ["set"]


# --- plan and undo against a model of the kernel ------------------------------------------


def simulate(table: Table, op: Op) -> Table:
    """What the kernel does with one request (the parts that matter to the diff)."""
    out = dict(table)
    key = op.service.key
    if op.dest is None:
        if op.verb == "del":
            del out[key]
        else:
            dests = out[key].dests if op.verb == "set" else {}
            out[key] = replace(op.service, dests=dests)
        return out
    dests = dict(out[key].dests)
    if op.verb == "del":
        del dests[op.dest.key]
    else:
        assert (op.dest.key in dests) == (op.verb == "set")
        dests[op.dest.key] = op.dest
    out[key] = replace(out[key], dests=dests)
    return out


dest_st = st.builds(
    lambda i, w, f: RealServer(AF_INET, f"10.1.0.{i}", 80, f, w, 0, 0),
    st.integers(1, 4), st.integers(0, 3), st.sampled_from([0, 2, 3]))
service_st = st.builds(
    lambda port, sched, timeout, dests: KernelService(
        ServiceKey(AF_INET, IPPROTO_TCP, "10.0.0.1", port), sched,
        IP_VS_SVC_F_PERSISTENT if timeout else 0, timeout, 0xFFFFFFFF,
        {d.key: d for d in dests}),
    st.integers(80, 83), st.sampled_from(["rr", "wlc"]), st.sampled_from([0, 60]),
    st.lists(dest_st, max_size=4))
table_st = st.lists(service_st, max_size=4).map(lambda ss: {s.key: s for s in ss})


@settings(max_examples=200, deadline=None)
@given(live=table_st, want=table_st, cut=st.integers(0, 100))
def test_plan_reaches_desired_and_undo_returns_to_live(live: Table, want: Table,
                                                       cut: int) -> None:
    ops = plan(want, live).ops
    table = live
    for op in ops:
        table = simulate(table, op)
    assert table == want
    # A failure after any prefix: undoing that prefix in reverse restores what was live.
    done = ops[: cut % (len(ops) + 1)]
    table = live
    for op in done:
        table = simulate(table, op)
    for op in reversed(done):
        for inverse in undo(op, live):
            table = simulate(table, inverse)
    assert table == live


# --- the wire format, with pyroute2's IPVS codec as the reference ---------------------------

SVC = kernel_service(vs(scheduler="wrr", persistence=300, netmask="255.255.255.0", backends=(
    Backend("10.1.0.1", 8080, 3, "m", 10, 2),)))
SVC6 = kernel_service(vs(host="fd00::1", protocol="udp", scheduler="sh", backends=(
    Backend("fd00::2", 53, 7, "g"),)))


def decoded(op: Op) -> ipvsmsg:
    """Our request bytes, as pyroute2 reads them."""
    cmd, attrs = op_request(op)
    msg = ipvsmsg(genl_message(0x20, cmd, 1, attrs, 5, 1))
    msg.decode()
    return msg


@pytest.mark.parametrize("svc", [SVC, SVC6])
def test_service_requests_read_back_in_pyroute2(svc: KernelService) -> None:
    for verb in ("add", "set"):
        nla = decoded(Op(verb, svc)).get_attr("IPVS_CMD_ATTR_SERVICE")
        got = {name: nla.get_attr(f"IPVS_SVC_ATTR_{name}") for name in
               ("AF", "PROTOCOL", "ADDR", "PORT", "SCHED_NAME", "TIMEOUT", "NETMASK")}
        assert got == {"AF": svc.key.af, "PROTOCOL": svc.key.protocol, "ADDR": svc.key.addr,
                       "PORT": svc.key.port, "SCHED_NAME": svc.scheduler,
                       "TIMEOUT": svc.timeout,
                       "NETMASK": str(ipaddress.IPv4Address(svc.netmask))}
        assert nla.get_attr("IPVS_SVC_ATTR_FLAGS")["flags"] == svc.flags
    key_only = decoded(Op("del", svc)).get_attr("IPVS_CMD_ATTR_SERVICE")
    assert key_only.get_attr("IPVS_SVC_ATTR_SCHED_NAME") is None


@pytest.mark.parametrize("svc", [SVC, SVC6])
def test_dest_requests_read_back_in_pyroute2(svc: KernelService) -> None:
    dest = next(iter(svc.dests.values()))
    msg = decoded(Op("add", svc, dest))
    assert msg.get_attr("IPVS_CMD_ATTR_SERVICE").get_attr("IPVS_SVC_ATTR_ADDR") == svc.key.addr
    nla = msg.get_attr("IPVS_CMD_ATTR_DEST")
    got = {name: nla.get_attr(f"IPVS_DEST_ATTR_{name}") for name in
           ("ADDR_FAMILY", "PORT", "FWD_METHOD", "WEIGHT", "U_THRESH", "L_THRESH")}
    assert got == {"ADDR_FAMILY": dest.af, "PORT": dest.port, "FWD_METHOD": dest.fwd_method,
                   "WEIGHT": dest.weight, "U_THRESH": dest.u_thresh, "L_THRESH": dest.l_thresh}


def dumped(nla_name: str, record: IPVSService | IPVSDest) -> dict[int, bytes]:
    """A dump item encoded by pyroute2, as our reader receives it."""
    msg = ipvsmsg()
    msg["cmd"] = IPVS_CMD_GET_SERVICE
    msg["version"] = 1
    msg["attrs"] = [(nla_name, record.dump_nla())]
    msg.encode()
    return parse_attrs(bytes(msg.data[20:]))


@pytest.mark.parametrize("svc", [SVC, SVC6])
def test_dumps_written_by_pyroute2_parse_back(svc: KernelService) -> None:
    fields = dict(af=svc.key.af, protocol=svc.key.protocol, addr=svc.key.addr,
                  port=svc.key.port, sched_name=svc.scheduler, timeout=svc.timeout,
                  netmask=str(ipaddress.IPv4Address(svc.netmask)),
                  flags={"flags": svc.flags | 0x2, "mask": 0xFFFFFFFF})  # HASHED, as dumped
    assert parse_service(dumped("IPVS_CMD_ATTR_SERVICE", IPVSService(**fields))) == replace(
        svc, dests={})
    dest = next(iter(svc.dests.values()))
    pyroute2_dest = IPVSDest(addr=dest.addr, addr_family=dest.af, port=dest.port,
                             fwd_method=dest.fwd_method, weight=dest.weight,
                             u_thresh=dest.u_thresh, l_thresh=dest.l_thresh)
    assert parse_dest(dumped("IPVS_CMD_ATTR_DEST", pyroute2_dest), svc.key.af) == dest


class FakeNetlink:
    """Plays the kernel's side of a socket: canned datagrams, one per recv."""

    def __init__(self, *datagrams: bytes) -> None:
        self.datagrams = list(datagrams)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.datagrams.pop(0)


def fake_socket(*datagrams: bytes) -> GenlSocket:
    sock = object.__new__(GenlSocket)
    sock.sock = FakeNetlink(*datagrams)  # type: ignore[assignment]
    sock.seq = 0
    sock.family = 0x20
    return sock


def nlmsg(kind: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 2, seq, 0) + payload


def test_dump_replies_are_collected_across_datagrams_until_done() -> None:
    item = genl_message(0x20, 4, 1, b"", 2, 1)[16:] + struct.pack("=HH", 7, 6) + b"rr\0\0"  # padded
    stale = nlmsg(2, 0, struct.pack("=i", -17))  # an old request's answer: skipped
    sock = fake_socket(stale + nlmsg(0x20, 1, item), nlmsg(0x20, 1, item) + nlmsg(3, 1, bytes(4)))
    replies = sock.request(0x20, IPVS_CMD_GET_SERVICE, 1, b"", NLM_F_REQUEST | NLM_F_DUMP)
    assert replies == [{6: b"rr\0"}, {6: b"rr\0"}]


def test_an_error_answer_raises_the_kernels_code() -> None:
    sock = fake_socket(nlmsg(2, 1, struct.pack("=i", -errno.ESRCH)))
    with pytest.raises(KernelRefused) as refused:
        sock.request(0x20, 6, 1, b"")
    assert refused.value.code == errno.ESRCH


# --- the socket, on the host kernel's own generic netlink ------------------------------------


def test_a_namespaced_socket_resolves_families() -> None:
    try:
        with namespace("pes-genl") as ns:
            sock = GenlSocket("nlctrl", ns)
            assert sock.family == GENL_ID_CTRL
            with pytest.raises(KernelRefused) as refused:
                GenlSocket("no-such-family", ns)
            assert refused.value.code == errno.ENOENT
            sock.close()
    except NetnsUnavailable as e:
        unavailable(str(e))


def test_ipvs_is_unavailable_in_a_missing_namespace() -> None:
    assert not ipvs_available("pes-no-such-namespace")
