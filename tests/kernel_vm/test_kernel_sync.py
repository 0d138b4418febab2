"""IpvsDataplane against the real kernel table (inside the VM only): what it programs, what a
sync touches, drift, rollback and errors. `ipvsadm -Sn` is the independent witness."""

from __future__ import annotations

from dataclasses import replace

import pytest

from portal_es.adapters.kernel import DataplaneError
from portal_es.adapters.kernel.ipvs import IpvsDataplane, Op, ipvs_available
from projections.l4 import Backend, VirtualService
from tests.kernel_vm.topology import backend, desired, ipvsadm, service, sh, with_backends


def saved() -> list[str]:
    """lb's IPVS table as ipvsadm saves it (sorted: the kernel's hash order is not ours)."""
    return sorted(ipvsadm("-Sn").splitlines())


def test_ipvs_available_in_the_vm() -> None:
    assert ipvs_available()


def test_every_portal_setting_reaches_the_kernel(plane: IpvsDataplane) -> None:
    vs = service(80, "wrr", persistence=300, netmask="255.255.255.0", backends=(
        Backend("10.0.1.11", 8080, 3, "m", upper_threshold=10, lower_threshold=2),
        Backend("10.0.1.12", 80, 1, "g"),
        Backend("10.0.1.13", 80, 2, "i", upper_threshold=0, lower_threshold=4),
        Backend("10.0.1.14", 80, 5, "m", draining=True),
    ))
    assert plane.sync(desired(vs)).added == [vs.id]
    assert saved() == sorted([
        "-A -t 10.0.0.100:80 -s wrr -p 300 -M 255.255.255.0",
        "-a -t 10.0.0.100:80 -r 10.0.1.11:8080 -m -w 3",
        "-a -t 10.0.0.100:80 -r 10.0.1.12:80 -g -w 1",
        "-a -t 10.0.0.100:80 -r 10.0.1.13:80 -i -w 2 --tun-type ipip",
        "-a -t 10.0.0.100:80 -r 10.0.1.14:80 -m -w 0",  # draining
    ])
    # ipvsadm's save format leaves thresholds out: its listing shows them.
    listed = ipvsadm("-Ln --thresholds -t 10.0.0.100:80").splitlines()
    thresholds = {line.split()[1]: line.split()[2:4] for line in listed
                  if "->" in line and "Remote" not in line}
    assert thresholds == {
        "10.0.1.11:8080": ["10", "2"],
        "10.0.1.12:80": ["0", "0"],
        # A lower threshold without an upper one means nothing (and the kernel refuses it).
        "10.0.1.13:80": ["0", "0"],
        "10.0.1.14:80": ["0", "0"],
    }


def test_second_sync_changes_nothing(plane: IpvsDataplane) -> None:
    want = desired(service(80, "rr", persistence=30), service(53, "sh", protocol="udp"),
                   service(443, "lblc", persistence=10, netmask="255.255.0.0"))
    first = plane.sync(want)
    assert sorted(first.added) == sorted(want) and not first.changed
    table = saved()
    assert plane.sync(want).empty  # trusting the last sync
    assert plane.sync(want, full=True).empty  # re-reading the kernel: it reports what we set
    assert plane.drift(want).empty
    assert saved() == table


def test_ipv6_service_round_trips(plane: IpvsDataplane) -> None:
    v6 = VirtualService(id="tcp-fd00::1-80", host="fd00::1", port=80, protocol="tcp",
                        scheduler="rr", persistence=60, netmask="",
                        backends=(Backend("fd00::11", 8080, 2, "m"),
                                  Backend("10.0.1.11", 80, 1, "i")))  # across families: tunnel
    assert plane.sync(desired(v6)).added == [v6.id]
    assert plane.sync(desired(v6), full=True).empty
    assert "-A -t [fd00::1]:80 -s rr -p 60" in saved()  # prefix 128 (the default) not shown
    assert "-a -t [fd00::1]:80 -r 10.0.1.11:80 -i -w 1 --tun-type ipip" in saved()


def test_a_change_touches_only_its_service(plane: IpvsDataplane) -> None:
    services = [service(port) for port in (80, 81, 82)]
    plane.sync(desired(*services))
    before = saved()
    changed = with_backends(services[1], backend("b1", 4), backend("b2"), backend("b3"))
    report = plane.sync(desired(services[0], changed, services[2]))
    assert (report.added, report.changed, report.removed) == ([], [changed.id], [])
    after = saved()
    assert [line for line in after if line not in before] == [
        "-a -t 10.0.0.100:81 -r 10.0.1.11:8080 -m -w 4"]
    report = plane.sync(desired(services[0], changed))
    assert report.removed == [services[2].id]


def test_server_changes_are_set_in_place(plane: IpvsDataplane) -> None:
    vs = service(80, backends=(backend("b1"), backend("b2")))
    plane.sync(desired(vs))
    moved = service(80, "wlc", backends=(backend("b1", 7, forwarder="g", port=8080),
                                        backend("b3")), persistence=5)
    report = plane.sync(desired(moved))
    assert report.changed == [vs.id]
    assert saved() == sorted([
        "-A -t 10.0.0.100:80 -s wlc -p 5",
        "-a -t 10.0.0.100:80 -r 10.0.1.11:8080 -g -w 7",
        "-a -t 10.0.0.100:80 -r 10.0.1.13:8080 -m -w 1",
    ])
    assert plane.sync(desired(moved), full=True).empty


def test_hand_edits_are_drift_and_a_full_sync_repairs_them(plane: IpvsDataplane) -> None:
    a, b, c = service(80), service(81), service(82)
    want = desired(a, b, c)
    plane.sync(want)
    table = saved()
    sh("""cd /; ipvs() { nsenter --net=/run/netns/lb ipvsadm "$@"; }
          ipvs -e -t 10.0.0.100:80 -r 10.0.1.11:8080 -m -w 9     # different (weight)
          ipvs -E -t 10.0.0.100:81 -s sh                          # different (scheduler)
          ipvs -D -t 10.0.0.100:82                                # missing
          ipvs -A -t 10.0.0.100:99 -s rr                          # unexpected
          ipvs -A -f 7 -s rr                                      # unexpected (fwmark)""")
    drift = plane.drift(want)
    assert sorted(drift.different) == [a.id, b.id]
    assert drift.missing == [c.id]
    assert sorted(drift.unexpected) == ["fwmark-7", "tcp-10_0_0_100-99"]

    report = plane.sync(want, full=True)
    assert sorted(report.changed) == [a.id, b.id]
    assert (report.added, sorted(report.removed)) == ([c.id], ["fwmark-7", "tcp-10_0_0_100-99"])
    assert saved() == table
    assert plane.drift(want).empty


def test_incremental_sync_trusts_the_last_one(plane: IpvsDataplane) -> None:
    """The cost model: an incremental sync reads nothing back, so a hand edit stays until a
    full sync (the projector runs one periodically and after any failure)."""
    want = desired(service(80))
    plane.sync(want)
    ipvsadm("-e -t 10.0.0.100:80 -r 10.0.1.11:8080 -m -w 9")
    assert plane.sync(want).empty
    assert plane.sync(want, full=True).changed == [service(80).id]


def test_refused_change_is_rolled_back(plane: IpvsDataplane) -> None:
    keep = service(80, backends=(backend("b1"), backend("b2")))
    plane.sync(desired(keep))
    before = saved()
    grown = with_backends(keep, backend("b1", 3), backend("b3"))  # set + add + del
    with pytest.raises(DataplaneError, match="scheduler 'nosuch' is not available"):
        plane.sync(desired(grown, service(81), service(82, "nosuch")))
    assert saved() == before  # the set, the add, the del and service 81 were undone
    assert plane.drift(desired(keep)).empty
    # The next sync starts from the kernel again and succeeds without the bad service.
    assert plane.sync(desired(grown, service(81))).added == [service(81).id]


def test_incremental_sync_recovers_from_a_hand_edit(plane: IpvsDataplane) -> None:
    """A refusal in an incremental sync (here: the service it would change was deleted by
    hand) is retried once as a full sync, which re-reads the kernel."""
    vs = service(80)
    plane.sync(desired(vs))
    ipvsadm("-D -t 10.0.0.100:80")
    report = plane.sync(desired(with_backends(vs, backend("b1", 2))))
    assert report.added == [vs.id]
    assert "-a -t 10.0.0.100:80 -r 10.0.1.11:8080 -m -w 2" in saved()


def test_unsupported_settings_are_refused_before_the_kernel(plane: IpvsDataplane) -> None:
    mixed = service(80, backends=(Backend("fd00::11", 80, 1, "m"),))
    assert plane.unsupported(mixed) is not None
    with pytest.raises(DataplaneError, match="address family"):
        plane.sync(desired(service(81), mixed))
    assert saved() == []


def test_loopback_down_is_named_in_the_error() -> None:
    sh("ip netns add lodown")  # a new namespace: its lo is down
    try:
        with IpvsDataplane(netns="lodown") as down, pytest.raises(DataplaneError,
                                                                  match="loopback"):
            down.sync(desired(service(80)))
    finally:
        sh("ip netns del lodown")


def test_flush_removes_every_service_of_the_namespace(plane: IpvsDataplane) -> None:
    plane.sync(desired(service(80), service(81)))
    ipvsadm("-A -t 10.0.0.100:99 -s rr")
    plane.flush()
    assert saved() == []
    assert plane.sync(desired(service(80))).added == [service(80).id]


def test_hundred_services(plane: IpvsDataplane, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scale within TCG's means (<= 100 services): the exact table, and a one-service change
    is one request to the kernel."""
    many = [service(1000 + i, backends=tuple(
        Backend(f"10.2.{i}.{j}", 8080, 1, "m") for j in range(1, 4))) for i in range(100)]
    want = desired(*many)
    assert len(plane.sync(want).added) == 100
    assert len(saved()) == 400
    assert plane.sync(want, full=True).empty

    requests: list[Op] = []
    apply = plane._kernel.apply

    def counted(op: Op) -> None:
        requests.append(op)
        apply(op)

    monkeypatch.setattr(plane._kernel, "apply", counted)
    one = replace(many[42], scheduler="wrr")
    assert plane.sync({**want, one.id: one}).changed == [one.id]
    assert [str(op) for op in requests] == ["set service tcp-10_0_0_100-1042"]
    assert "-A -t 10.0.0.100:1042 -s wrr" in saved()


def test_all_portal_schedulers_are_in_this_kernel(plane: IpvsDataplane) -> None:
    from portal_es.domain.models import SCHEDULERS

    want = desired(*(service(2000 + i, s) for i, s in enumerate(SCHEDULERS)))
    assert len(plane.sync(want).added) == len(SCHEDULERS)
    assert plane.sync(want, full=True).empty

