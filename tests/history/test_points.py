"""The configuration at any point of the log, from positions and times, on both stores; and
snapshots: taken, used (the fold never starts at 0), thinned, and skipped when unreadable."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal_es.adapters import log_tables
from portal_es.adapters.kernel.none import NoDataplane
from portal_es.domain import commands as c
from portal_es.domain.balancer import BALANCER_ID
from portal_es.domain.state import BalancerState
from portal_es.service.app import PortalApplication
from projections import history
from projections.node import NodeProjector
from projections.state_view import StateView
from tests.history.scenario import (
    META,
    STEPS,
    open_app,
    play,
    server,
    service,
)


def test_state_at_every_position_equals_the_state_recorded_then(db_url: str) -> None:
    app = open_app(db_url, interval=5)
    recorded = play(app)
    for step in recorded:
        folded = history.state_at(app, step.position)
        assert (folded.position, folded.version) == (step.position, step.version)
        assert folded.state.portal_json() == step.state
    assert history.state_at(app, 0).state == BalancerState()
    with pytest.raises(history.PointUnavailable):
        history.state_at(app, recorded[-1].position + 1)


def test_a_time_means_the_last_event_at_or_before_it(db_url: str) -> None:
    app = open_app(db_url)
    first = play(app, STEPS[:3])
    time.sleep(0.05)
    middle = history.state_at(app)
    assert middle.time is not None
    time.sleep(0.05)
    play(app, STEPS[3:6])
    assert history.resolve(app, middle.time.isoformat()) == first[-1].position
    between = (middle.time + timedelta(milliseconds=25)).isoformat()
    assert history.resolve(app, between) == first[-1].position
    assert history.resolve(app, "2000-01-01T00:00:00") == 0
    assert history.resolve(app, "2999-01-01") == history.head(app)
    assert history.resolve(app, " 7 ") == 7
    with pytest.raises(history.BadPoint):
        history.resolve(app, "yesterday")


def test_diff_names_each_object_added_removed_changed(db_url: str) -> None:
    app = open_app(db_url)
    recorded = play(app)
    a, b = history.state_at(app, recorded[1].position), history.state_at(app)
    changes = history.diff(a.state, b.state)
    services = changes["services"]
    assert [s["id"] for s in services["added"]] == [service(3).id]
    assert [s["id"] for s in services["removed"]] == [service(1).id]
    assert [s["id"] for s in services["changed"]] == [service(2).id]
    before, after = services["changed"][0]["before"], services["changed"][0]["after"]
    assert (before["scheduler"], after["scheduler"]) == ("wlc", "rr")
    assert [r["domain"] for r in changes["routes"]["added"]] == ["a.test"]
    assert changes["errors"]["after"] == {"no-routes": "none here", "no-healthy": "all down"}
    assert history.changed(changes)
    assert not history.changed(history.diff(b.state, b.state))


# --- snapshots ------------------------------------------------------------------------------


def _garble(app: PortalApplication, table: str, where: str) -> None:
    engine = app.recorder.datastore.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {table} SET state = :junk WHERE {where}"),
                     {"junk": b"\x00not json"})


def _many(app: PortalApplication, n: int) -> None:
    app.execute(c.AddService(service(1, server(1))), META)
    for i in range(n):  # weights 1..n: each a ServerUpdated
        app.execute(c.ReplaceServers(service(1).id, (server(1, weight=i % 50 + 2),)), META)


def test_snapshots_are_taken_used_and_thinned(db_url: str) -> None:
    app = open_app(db_url, interval=10)
    _many(app, 200)
    versions = log_tables.snapshot_versions(app)
    # the newest 3, then one per 100 versions (10 intervals)
    assert versions[:3] == [200, 190, 180] and set(versions[3:]) == {100, 10}, versions
    latest = app.latest_snapshot()
    assert latest is not None and latest.originator_version == 200
    # Events before the newest snapshot are never read again: garble them all.
    _garble(app, "portal_events", f"id < {latest.position}")
    view = StateView(app)
    view.catch_up()
    node = NodeProjector(open_app(db_url, interval=10), "n1", NoDataplane())
    node.step(full=True)
    fresh = open_app(db_url, interval=10)
    assert view.version == fresh.version() == node.version == 202
    assert node.state == view.state
    assert view.state.services[service(1).id].servers[0].weight == 199 % 50 + 2
    fresh.execute(c.AddService(service(2)), META)  # the repository loads from the snapshot too


def test_an_unreadable_snapshot_falls_back_to_an_older_one_then_to_the_log(db_url: str) -> None:
    app = open_app(db_url, interval=10)
    _many(app, 35)
    truth = history.state_at(app).state
    newest = log_tables.snapshot_versions(app)[0]
    _garble(app, "portal_snapshots", f"originator_version = {newest}")
    for fold in (lambda a: history.state_at(a).state,
                 lambda a: a.repository.get(BALANCER_ID).state):
        assert fold(open_app(db_url, interval=10)) == truth
    _garble(app, "portal_snapshots", "originator_version > 0")  # all of them: the log
    assert history.state_at(open_app(db_url, interval=10)).state == truth
    reopened = open_app(db_url, interval=10)
    view = StateView(reopened)
    view.catch_up()
    node = NodeProjector(reopened, "n1", NoDataplane())
    node.step(full=True)
    assert view.state == node.state == truth
    log_tables.delete_snapshots(reopened, log_tables.snapshot_versions(reopened))  # missing
    assert history.state_at(reopened).state == truth
    assert reopened.execute(c.AddService(service(9)), META).events


def test_a_projector_resuming_from_a_snapshot_still_drains_recent_removals(db_url: str) -> None:
    app = open_app(db_url, interval=3)
    app.execute(c.AddService(service(1, server(1), server(2))), META)
    app.execute(c.RemoveServer(service(1).id, server(2).id), META)
    for i in range(4):  # past a snapshot
        app.execute(c.AddService(service(10 + i)), META)
    latest = app.latest_snapshot()
    assert latest is not None and latest.originator_version >= 6
    node = NodeProjector(open_app(db_url, interval=3), "n1", NoDataplane(),
                         drain_timeout=timedelta(seconds=60))
    node.step(full=True)
    draining = node.drains.active(datetime.now(UTC))
    assert [s.id for s in draining[service(1).id]] == [server(2).id]
    assert [(b.host, b.draining) for b in node.desired_l4()[service(1).id].backends] == \
        [("10.1.0.1", False), ("10.1.0.2", True)]
