"""The event store on the real databases: SQLite (embedded) and the machine's PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from portal_es.adapters import store
from portal_es.domain import commands as c
from portal_es.domain.balancer import Meta
from portal_es.domain.errors import StaleVersion
from portal_es.domain.models import Server, Service
from portal_es.service.app import PortalApplication
from projections.audit import EventFilter, list_events
from projections.state_view import StateView
from tests.unit.certs import BUNDLES

META = Meta("tester", "req")
KEY = "Q0lQSEVSS0VZQ0lQSEVSS0VZQ0lQSEVSS0VZQ0lQSEU="  # 32 bytes, base64


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = store.database_url("", tmp_path)
    else:
        url = store.database_url(request.getfixturevalue("pg_url"), tmp_path)
    store.migrate(url)
    yield url


def open_app(url: str) -> PortalApplication:
    return PortalApplication(store.application_env(url, KEY))


def service(n: int, servers: int = 0) -> Service:
    return Service(
        host=f"10.0.{n // 250}.{n % 250 + 1}", port=80,
        servers=tuple(Server(host=f"10.1.0.{i + 1}", port=8080) for i in range(servers)),
    )


def test_migrate_is_idempotent(db_url: str) -> None:
    store.migrate(db_url)
    engine = sqlalchemy.create_engine(db_url)
    tables = set(sqlalchemy.inspect(engine).get_table_names())
    engine.dispose()
    assert {"portal_events", "portal_snapshots", "portal_tracking", "alembic_version"} <= tables


def test_restart_restores_exact_state(db_url: str) -> None:
    app = open_app(db_url)
    for n in range(5):
        app.execute(c.AddService(service(n, servers=2)), META)
    app.execute(c.RemoveServer(service(1).id, "10_1_0_1-8080"), META)
    app.execute(c.AddCert(BUNDLES[0]), META)
    view = StateView(app)
    view.catch_up()
    before, version = view.state.portal_json(), view.version
    app.close()

    reopened = open_app(db_url)
    fresh = StateView(reopened)
    fresh.catch_up()
    assert fresh.state.portal_json() == before
    assert fresh.version == version == reopened.version()
    reopened.close()


def test_noop_and_refused_writes_append_nothing(db_url: str) -> None:
    app = open_app(db_url)
    app.execute(c.AddService(service(1)), META)
    head = app.recorder.max_notification_id()
    assert app.execute(c.AddService(service(1)), META).events == []
    assert app.execute(c.RemoveService("tcp-10_9_9_9-80"), META).events == []
    with pytest.raises(StaleVersion):
        app.execute(c.RemoveService(service(1).id), META, expected_version=1)
    assert app.recorder.max_notification_id() == head
    app.close()


def test_if_match_version_guards_writes(db_url: str) -> None:
    app = open_app(db_url)
    version = app.execute(c.AddService(service(1)), META).version
    outcome = app.execute(c.AddService(service(2)), META, expected_version=version)
    assert outcome.version == version + 1
    with pytest.raises(StaleVersion):
        app.execute(c.AddService(service(3)), META, expected_version=version)
    app.close()


def test_cert_private_keys_are_encrypted_at_rest(db_url: str) -> None:
    app = open_app(db_url)
    app.execute(c.AddCert(BUNDLES[1]), META)
    engine = sqlalchemy.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT state FROM portal_events"))
        states = [bytes(r[0]) for r in rows]
    engine.dispose()
    assert any(b"BEGIN CERTIFICATE" in s for s in states)  # the cert itself is public
    assert not any(b"PRIVATE KEY" in s for s in states)
    view = StateView(app)
    view.catch_up()
    assert list(view.state.certs.values()) == [BUNDLES[1]]  # decrypted on read
    events, _ = list_events(app, EventFilter(type="CertAdded"))
    assert events[0]["data"]["cert"]["key"] == "<redacted>"
    app.close()


def test_concurrent_writers_lose_nothing(db_url: str) -> None:
    """Four writers (each its own application and connections, like four nodes) add 25
    services each at the same time: all 100 are in the log, each exactly once."""
    writers, per_writer = 4, 25
    apps = [open_app(db_url) for _ in range(writers)]
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(per_writer):
                apps[w].execute(c.AddService(service(w * per_writer + i)), Meta(f"w{w}", str(i)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    view = StateView(apps[0])
    view.catch_up()
    assert len(view.state.services) == writers * per_writer
    added, _ = list_events(apps[0], EventFilter(type="ServiceAdded", limit=1000))
    assert len(added) == writers * per_writer
    assert view.version == writers * per_writer + 1  # + the Balancer's creation
    for app in apps:
        app.close()
