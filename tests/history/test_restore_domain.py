"""Balancer.restore (pure): the usual events then a Restored marker; checked like the PUTs it
stands for; undone by compensation like any change."""

from __future__ import annotations

from copy import deepcopy

import pytest

from portal_es.domain import events as ev
from portal_es.domain.balancer import Balancer, Meta
from portal_es.domain.errors import SocketInUse
from portal_es.domain.models import ErrorPages, Route, Vip
from tests.history.scenario import server, service

META = Meta("tester", "r1")
POINT = (12, 10, "2026-01-01T00:00:00+00:00")


def configured() -> Balancer:
    b = Balancer()
    b.add_service(META, service(1, server(1), server(2)), ())
    b.add_service(META, service(2, server(3)), ())
    b.add_route(META, Route(domain="a.test", targets=("http://10.2.0.1",)))
    b.add_vip(META, Vip(ip="10.3.0.1"))
    b.collect_events()
    return b


def test_restore_makes_the_state_equal_and_marks_the_point() -> None:
    b = configured()
    target = deepcopy(b.state)
    b.replace_services(META, [service(2, server(3), server(4)), service(3)], ())
    b.set_error_pages(META, ErrorPages(no_routes="x"))
    b.remove_vip(META, "10.3.0.1")
    b.collect_events()
    b.restore(META, target, (), POINT, "bad deploy")
    events = b.collect_events()
    assert b.state == target
    assert b.state.portal_json() == target.portal_json()  # order too
    marker = events[-1]
    assert isinstance(marker, ev.Restored)
    assert (marker.restored_position, marker.restored_version, marker.reason) == (12, 10,
                                                                                   "bad deploy")
    assert not any(isinstance(e, ev.Restored) for e in events[:-1])
    b.restore(META, target, (), POINT, "again")  # nothing to change: nothing recorded
    assert b.collect_events() == []


def test_a_restore_is_checked_and_compensated_like_any_change() -> None:
    b = configured()
    before = deepcopy(b.state)
    with pytest.raises(SocketInUse):
        b.restore(META, before, [("0.0.0.0", 80)], POINT, "")
    target = deepcopy(b.state)
    target.services.clear()
    b.restore(META, target, (), POINT, "empty it")
    applied = [e for e in b.collect_events() if isinstance(e, ev.BalancerEvent)]
    b.compensate(Meta("tester", "r1:compensation"), applied)
    inverses = b.collect_events()
    assert isinstance(inverses[0], ev.RestoreRolledBack) and inverses[0].reason == "empty it"
    assert b.state == before
