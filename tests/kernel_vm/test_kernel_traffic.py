"""Real packets through IPVS programmed by IpvsDataplane.sync (inside the VM only).

client -> VIP 10.0.0.100 on lb -> b1/b2/b3; each backend answers with its name.
"""

from __future__ import annotations

from functools import partial

from portal_es.adapters.kernel.ipvs import IpvsDataplane
from tests.kernel_vm.topology import (
    BACKENDS,
    CLIENTS,
    DIRECT_VIP,
    ask_tcp,
    ask_udp,
    backend,
    connect,
    desired,
    ipvsadm,
    service,
    tally,
    with_backends,
)


def test_rr_spreads_connections_evenly(plane: IpvsDataplane) -> None:
    plane.sync(desired(service(80, "rr")))
    assert tally(lambda: ask_tcp(80), 60) == {"b1": 20, "b2": 20, "b3": 20}


def test_wrr_follows_the_weights(plane: IpvsDataplane) -> None:
    weighted = (backend("b1", 3), backend("b2", 2), backend("b3", 1))
    plane.sync(desired(service(81, "wrr", weighted)))
    assert tally(lambda: ask_tcp(81), 60) == {"b1": 30, "b2": 20, "b3": 10}


def test_sh_keeps_each_source_on_one_backend(plane: IpvsDataplane) -> None:
    plane.sync(desired(service(82, "sh")))
    picks = {src: tally(partial(ask_tcp, 82, source=src), 4) for src in CLIENTS}
    assert all(len(counts) == 1 for counts in picks.values()), picks
    assert len({b for counts in picks.values() for b in counts}) > 1, "sources all hashed alike"


def test_persistence_keeps_a_client_on_one_backend(plane: IpvsDataplane) -> None:
    plane.sync(desired(service(83, "rr", persistence=300)))
    assert len(tally(lambda: ask_tcp(83), 12)) == 1
    # netmask 255.255.255.0: every address of the client's /24 is one client.
    plane.sync(desired(service(83, "rr", persistence=300, netmask="255.255.255.0")))
    assert len({ask_tcp(83, source=src) for src in CLIENTS}) == 1


def test_udp_rr(plane: IpvsDataplane) -> None:
    plane.sync(desired(service(53, "rr", protocol="udp")))
    assert tally(lambda: ask_udp(53), 30) == {"b1": 10, "b2": 10, "b3": 10}


def test_client_on_the_balancer_itself(plane: IpvsDataplane) -> None:
    plane.sync(desired(service(84, "rr")))
    assert tally(lambda: ask_tcp(84, netns="lb"), 30) == {"b1": 10, "b2": 10, "b3": 10}


def test_direct_routing_and_tunnel_forwarders(plane: IpvsDataplane) -> None:
    # g and i keep the VIP as destination: the backends have it on lo and listen on the port.
    dr = service(86, "rr", tuple(backend(n, forwarder="g", port=86) for n in BACKENDS),
                 host=DIRECT_VIP)
    tun = service(87, "rr", tuple(backend(n, forwarder="i", port=87) for n in BACKENDS),
                  host=DIRECT_VIP)
    plane.sync(desired(dr, tun))
    assert tally(lambda: ask_tcp(86, vip=DIRECT_VIP), 9) == {"b1": 3, "b2": 3, "b3": 3}
    assert tally(lambda: ask_tcp(87, vip=DIRECT_VIP), 9) == {"b1": 3, "b2": 3, "b3": 3}


def test_removed_server_drains_then_goes(plane: IpvsDataplane) -> None:
    full = service(88, "rr")
    plane.sync(desired(full))
    old = connect(88)
    leaving = old.backend
    staying = tuple(backend(n) for n in BACKENDS if n != leaving)

    # Draining: weight 0 -> no new connections, the open one keeps working.
    draining = with_backends(full, *staying, backend(leaving, draining=True))
    assert plane.sync(desired(draining)).changed == [full.id]
    assert leaving not in tally(lambda: ask_tcp(88), 12)
    assert old.echo("still here") == "still here"
    assert f"{BACKENDS[leaving]}:8080" in ipvsadm("-Ln")

    # Drain over: the real server is removed from the kernel.
    plane.sync(desired(with_backends(full, *staying)))
    assert f"{BACKENDS[leaving]}:8080" not in ipvsadm("-Ln")
    assert leaving not in tally(lambda: ask_tcp(88), 6)
    old.close()


def test_sync_keeps_live_connections(plane: IpvsDataplane) -> None:
    """No flush-and-re-add (Portal's defect): connections of what a sync did not change, and
    of a service whose settings it changed in place, keep working."""
    a, b = service(89, "rr"), service(90, "rr")
    plane.sync(desired(a, b))
    on_a, on_b = connect(89), connect(90)
    before = ipvsadm("-Ln -t 10.0.0.100:89")

    # Another service changes (on_b's server gets another weight, another server goes), and a
    # third service appears.
    gone = next(n for n in BACKENDS if n != on_b.backend)
    b2 = with_backends(b, *(backend(n, 5 if n == on_b.backend else 1)
                            for n in BACKENDS if n != gone))
    report = plane.sync(desired(a, b2, service(91, "wrr")))
    assert (report.added, report.changed, report.removed) == ([service(91).id], [b.id], [])
    assert on_a.echo() == "ping"
    assert ipvsadm("-Ln -t 10.0.0.100:89") == before  # same counters

    # b's own scheduler and persistence change: set in place, its connection lives on.
    plane.sync(desired(a, service(90, "wlc", b2.backends, persistence=60)))
    assert on_b.echo() == "ping"
    assert "wlc persistent 60" in ipvsadm("-Ln -t 10.0.0.100:90")
    on_a.close()
    on_b.close()
