"""The cluster's parts that need no cluster: message signatures, the Change and Member
aggregates, the change's transactions (on a SQLite store), and the settings' refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventsourcing.persistence import Notification

from portal_es.adapters import store
from portal_es.adapters.broker import Forged, Signer, notification_data, notifications_from
from portal_es.config import ConfigError, load_settings
from portal_es.domain import commands as c
from portal_es.domain.balancer import Meta
from portal_es.domain.change import Change, ChangeAlreadyDecided, ChangeState, change_id_for_key
from portal_es.domain.membership import Member
from portal_es.domain.models import Service
from portal_es.service import changes
from portal_es.service.app import PortalApplication
from portal_es.service.changes import ChangeSpec, NodeResult, Requested
from projections.changes import ChangesView
from tests.cluster.harness import CIPHER
from tests.conftest import free_port

# --- signatures -------------------------------------------------------------------------------


def test_a_signed_message_opens_and_any_other_is_refused() -> None:
    signer = Signer("the-token")
    key, body, signature = signer.seal("ack", "n1", {"position": 7})
    assert key == "ack.n1"
    envelope = signer.open(key, body, signature)
    assert (envelope.kind, envelope.node, envelope.data) == ("ack", "n1", {"position": 7})
    tampered = body.replace(b'"position":7', b'"position":8')
    for routing_key, raw, sig in [
        (key, body, None),  # no signature
        (key, body, Signer("another-token").sign(key, body)),  # the wrong token
        (key, tampered, signature),  # the body changed
        ("ack.n2", body, signer.sign("ack.n2", body)),  # signed, but not what it says it is
        ("log", b"not json", signer.sign("log", b"not json")),
    ]:
        with pytest.raises(Forged):
            signer.open(routing_key, raw, sig)
    with pytest.raises(ValueError):
        Signer("")


def test_log_batches_carry_the_stored_events_exactly() -> None:
    n = Notification(id=42, originator_id=uuid.uuid4(), originator_version=3, topic="a:B",
                     state=b'{"x":1}\x00\xff')
    data = {"after": 40, "events": [notification_data(n.id, n.originator_id,
                                                      n.originator_version, n.topic, n.state)]}
    after, [back] = notifications_from(json.loads(json.dumps(data)))
    assert after == 40 and back == n
    with pytest.raises(Forged):
        notifications_from({"after": 1, "events": [{"id": "x"}]})


# --- aggregates -------------------------------------------------------------------------------


def new_change(key: str = "") -> Change:
    return Change(change_id=str(uuid.uuid4()), origin="n1", command="AddService", actor="a",
                  request_id="r", idempotency_key=key, config_version=2,
                  targets=["n1", "n2"])


def test_a_change_is_decided_once() -> None:
    change = new_change()
    change.record("n1", 5, {}, failed=False)
    with pytest.raises(ValueError):  # compensated only when some node failed it
        change.compensate("m", 500, [])
    change.record("n2", 5, {"vips": "no vip0"}, failed=True)
    change.compensate("Member(s) '[n2]' failed", 500, [])
    assert change.state == ChangeState.compensated and list(change.failed) == ["n2"]
    for decide in (lambda: change.commit(None, []), lambda: change.time_out([], "", None),
                   lambda: change.record("n1", 6, {}, failed=False)):
        with pytest.raises(ChangeAlreadyDecided):
            decide()
    events = [type(e).__name__ for e in change.collect_events()]
    assert events == ["ChangeRequested", "NodeApplied", "NodeFailed", "ChangeCompensated"]


def test_an_idempotency_key_names_one_change_per_client() -> None:
    assert change_id_for_key("token:a", "k") == change_id_for_key("token:a", "k")
    assert change_id_for_key("token:a", "k") != change_id_for_key("token:b", "k")


def test_a_node_leaves_only_as_the_incarnation_that_joined() -> None:
    member = Member(name="n1", incarnation="i1", balancer="nftables")
    member.rejoin("i2", "nftables")
    assert not member.leave("i1")  # an old process's goodbye after a restart: ignored
    assert member.leave("i2") and not member.present
    assert [type(e).__name__ for e in member.collect_events()] == [
        "NodeJoined", "NodeRejoined", "NodeLeft"]


# --- the change's transactions, on a SQLite store ---------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[PortalApplication]:
    url = store.database_url("", tmp_path)
    store.migrate(url)
    application = PortalApplication(store.application_env(url, CIPHER))
    yield application
    application.close()


def spec(key: str = "") -> ChangeSpec:
    change_id = change_id_for_key("anonymous", key) if key else str(uuid.uuid4())
    return ChangeSpec(change_id, "n1", key, ["n1", "n2"])


def add(host: str) -> c.AddService:
    return c.AddService(Service(host=host, port=80))


def test_a_change_and_its_events_are_one_transaction(app: PortalApplication) -> None:
    first = changes.request(app, c.RemoveService("tcp-10_0_0_9-80"), Meta(), None, spec())
    assert isinstance(first, Requested) and first.change is None  # a no-op: no change
    requested = changes.request(app, add("10.0.0.1"), Meta(), None, spec())
    assert isinstance(requested, Requested) and requested.change is not None
    stored = app.recorder.select_notifications(start=1, limit=100)
    types = [app.mapper.to_domain_event(n).__class__.__name__ for n in stored]
    assert types[-2:] == ["ChangeRequested", "ServiceAdded"]
    assert requested.outcome.position == stored[-1].id  # nodes must reach the last event
    results = [NodeResult("n1", requested.outcome.position, {}, False),
               NodeResult("n2", requested.outcome.position, {}, False)]
    changes.commit(app, requested.change, results, requested.outcome.result, [])
    view = ChangesView(app)
    view.catch_up()
    assert view.open_changes() == []
    [summary] = view.recent()
    assert summary["state"] == "committed" and sorted(summary["applied"]) == ["n1", "n2"]


def test_a_retry_with_the_same_key_appends_nothing(app: PortalApplication) -> None:
    requested = changes.request(app, add("10.0.0.1"), Meta(), None, spec("k"))
    assert isinstance(requested, Requested) and requested.change is not None
    changes.commit(app, requested.change, [], requested.outcome.result, [])
    head = app.recorder.max_notification_id()
    again = changes.request(app, add("10.0.0.2"), Meta(), None, spec("k"))
    assert isinstance(again, Change) and again.state == ChangeState.committed
    assert again.result == requested.outcome.result  # what the first request answered
    assert app.recorder.max_notification_id() == head


def test_a_compensation_undoes_the_change_in_the_same_transaction(
        app: PortalApplication) -> None:
    requested = changes.request(app, add("10.0.0.1"), Meta(), None, spec())
    assert isinstance(requested, Requested) and requested.change is not None
    outcome = requested.outcome
    results = [NodeResult("n1", outcome.position, {}, False),
               NodeResult("n2", outcome.position, {"nftables": "refused"}, True)]
    undone = changes.compensate(app, requested.change, results, outcome.events, Meta(),
                                outcome.version, "Member(s) '[n2]' failed", 500, [])
    stored = app.recorder.select_notifications(start=1, limit=100)
    types = [app.mapper.to_domain_event(n).__class__.__name__ for n in stored]
    assert types[-4:] == ["NodeApplied", "NodeFailed", "ChangeCompensated", "ServiceRemoved"]
    assert undone.position == stored[-1].id
    assert app._balancer().state.services == {}


# --- settings -------------------------------------------------------------------------------

CLUSTER = {"cluster-connection": "amqp://u:p@broker:5672/", "cluster-token": "t",
           "db-connection": "postgresql://db/portal", "cert-key-cipher": CIPHER}


@pytest.mark.parametrize(("change", "message"), [
    ({"db-connection": ""}, "cluster mode needs a shared log: set db-connection to a "
                            "postgresql:// URL (a SQLite log is a file on one machine"),
    ({"cluster-token": ""}, "cluster mode needs a cluster-token"),
    ({"cert-key-cipher": ""}, "cluster mode needs cert-key-cipher"),
    ({"cluster-connection": "redis://x"}, "must be an amqp:// or amqps:// URL"),
    ({"heartbeat-interval": 9}, "heartbeat-interval must be shorter than node-timeout"),
])
def test_a_cluster_that_cannot_work_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid settings") as refused:
        load_settings({**CLUSTER, **change}, environ={})
    assert message in str(refused.value)
    assert load_settings(CLUSTER, environ={}).cluster_name == "portal-es"


def test_serve_refuses_a_cluster_on_sqlite_at_start(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "portal_es", "serve", "--work-dir", str(tmp_path / "w"),
         "--api-port", str(free_port()), "--proxy-http", f"127.0.0.1:{free_port()}",
         "--proxy-tls", f"127.0.0.1:{free_port()}", "--balancer", "none", "--no-vips",
         "--cluster-connection", "amqp://guest:guest@127.0.0.1:5672/", "--cluster-token", "t"],
        capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert "cluster mode needs a shared log" in run.stderr and "SQLite" in run.stderr
    assert not (tmp_path / "w").exists()
