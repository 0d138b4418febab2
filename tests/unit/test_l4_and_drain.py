"""Desired L4 state and draining, from the log (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from portal_es.domain.balancer import Balancer, Meta
from portal_es.domain.events import BalancerEvent
from portal_es.domain.models import Server, Service
from portal_es.domain.state import BalancerState
from projections.drain import DrainSchedule
from projections.l4 import desired_services, virtual_service

META = Meta()
S1 = Server(host="10.1.0.1", port=80, weight=2)
S2 = Server(host="10.1.0.2", port=80)
LOCAL = Server(host="127.0.0.1", port=8080)
SERVICE = Service(host="10.0.0.1", port=80, scheduler="wrr", servers=(S1, S2))


def events_of(balancer: Balancer) -> list[BalancerEvent]:
    return [e for e in balancer.collect_events() if isinstance(e, BalancerEvent)]


def test_server_on_127_0_0_1_means_the_service_host() -> None:
    vs = virtual_service(SERVICE.model_copy(update={"servers": (LOCAL,)}))
    assert [(b.host, b.port) for b in vs.backends] == [("10.0.0.1", 8080)]


def test_desired_services_keep_order_and_settings() -> None:
    state = BalancerState(services={SERVICE.id: SERVICE})
    vs = desired_services(state)[SERVICE.id]
    assert (vs.protocol, vs.host, vs.port, vs.scheduler) == ("tcp", "10.0.0.1", 80, "wrr")
    assert [(b.host, b.weight) for b in vs.backends] == [("10.1.0.1", 2), ("10.1.0.2", 1)]
    assert vs.active_backends == vs.backends


def test_removed_server_drains_until_the_timeout() -> None:
    balancer = Balancer()
    balancer.add_service(META, SERVICE, ())
    balancer.remove_server(META, SERVICE.id, S1.id)
    schedule = DrainSchedule(timedelta(seconds=30))
    for event in events_of(balancer):
        schedule.observe(event)
    removed_at = balancer.modified_on
    during = schedule.active(removed_at + timedelta(seconds=10))
    assert during == {SERVICE.id: [S1]}
    vs = desired_services(balancer.state, during)[SERVICE.id]
    assert [(b.host, b.draining) for b in vs.backends] == [("10.1.0.2", False), ("10.1.0.1", True)]
    assert [b.host for b in vs.active_backends] == ["10.1.0.2"]
    assert schedule.next_deadline() == removed_at + timedelta(seconds=30)
    assert schedule.active(removed_at + timedelta(seconds=31)) == {}
    assert schedule.next_deadline() is None


def test_readding_or_removing_the_service_ends_the_drain() -> None:
    balancer = Balancer()
    balancer.add_service(META, SERVICE, ())
    balancer.remove_server(META, SERVICE.id, S1.id)
    balancer.add_server(META, SERVICE.id, S1)
    schedule = DrainSchedule(timedelta(seconds=30))
    for event in events_of(balancer):
        schedule.observe(event)
    assert schedule.active(datetime.now(UTC)) == {}
    balancer.replace_servers(META, SERVICE.id, [S2])  # a PUT that drops S1 drains it too
    balancer.remove_service(META, SERVICE.id)
    for event in events_of(balancer):
        schedule.observe(event)
    assert schedule.active(datetime.now(UTC)) == {}


def test_put_without_a_server_drains_it() -> None:
    balancer = Balancer()
    balancer.add_service(META, SERVICE, ())
    balancer.update_service(META, SERVICE.id, SERVICE.model_copy(update={"servers": (S2,)}), ())
    schedule = DrainSchedule(timedelta(seconds=30))
    for event in events_of(balancer):
        schedule.observe(event)
    assert schedule.active(datetime.now(UTC)) == {SERVICE.id: [S1]}


def test_zero_timeout_means_no_drain() -> None:
    balancer = Balancer()
    balancer.add_service(META, SERVICE, ())
    balancer.remove_server(META, SERVICE.id, S1.id)
    schedule = DrainSchedule(timedelta(0))
    for event in events_of(balancer):
        schedule.observe(event)
    assert schedule.active(datetime.now(UTC)) == {}
