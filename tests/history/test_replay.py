"""Export -> import between the real stores (SQLite <-> PostgreSQL) gives an identical log and
state; what cannot be imported is refused whole; an archive keeps the state, and replays."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from eventsourcing.persistence import Tracking

from portal_es.adapters import log_tables, logfile, store
from portal_es.domain import commands as c
from portal_es.service.app import PortalApplication
from projections import history
from projections.audit import EventFilter, list_events
from tests.history.scenario import META, STEPS, open_app, play, service, sqlite_url


def _export(app: PortalApplication, through: int | None = None) -> str:
    out = io.StringIO()
    logfile.export(app, out, through)
    return out.getvalue()


def _import(app: PortalApplication, text: str) -> logfile.Summary:
    return logfile.import_log(app, io.StringIO(text))


def _events(app: PortalApplication) -> list[dict[str, object]]:
    return list_events(app, EventFilter(limit=10_000))[0]


@pytest.fixture
def pg(pg_url: str, tmp_path: Path) -> str:
    url = store.database_url(pg_url, tmp_path)
    store.migrate(url)
    return url


@pytest.mark.parametrize("direction", ["sqlite->postgres", "postgres->sqlite"])
def test_export_import_gives_an_identical_log_and_state(
    direction: str, pg: str, tmp_path: Path
) -> None:
    sqlite = sqlite_url(tmp_path / "sqlite")
    source_url, target_url = (sqlite, pg) if direction.startswith("sqlite") else (pg, sqlite)
    source = open_app(source_url, interval=5)
    play(source)
    text = _export(source)
    target = open_app(target_url, interval=5)
    summary = _import(target, text)
    assert summary.events == history.head(source) and summary.version == source.version()
    assert _export(target).splitlines()[1:] == text.splitlines()[1:]  # byte for byte, positions
    assert history.state_at(target).state == history.state_at(source).state
    assert _events(target) == _events(source)
    assert log_tables.snapshot_versions(target)[0] == source.version()  # taken at the head
    # and the imported store goes on: writes continue after the imported positions
    outcome = target.execute(c.AddService(service(7)), META)
    assert outcome.position == history.head(source) + 1


def test_what_cannot_be_imported_is_refused_whole(tmp_path: Path) -> None:
    source = open_app(sqlite_url(tmp_path / "a"))
    play(source, STEPS[:5])
    text = _export(source)
    lines = text.splitlines(keepends=True)
    target = open_app(sqlite_url(tmp_path / "b"))
    for bad, why in [
        ("".join(lines[:-1]), "cut short"),
        ("".join([lines[0], *lines[2:]]), "does not follow"),
        ("{}\n" + "".join(lines[1:]), "not a portal-es log"),
        ("".join(lines).replace('"tester"', '"tester', 1), "not JSON"),
    ]:
        with pytest.raises(logfile.LogFileError, match=why):
            _import(target, bad)
        assert history.head(target) == 0  # nothing was committed
    other_key = PortalApplication({**store.application_env(
        sqlite_url(tmp_path / "c"), "T1RIRVJLRVlPVEhFUktFWU9USEVSS0VZT1RIRVJLRVk=")})
    certs = open_app(sqlite_url(tmp_path / "d"))
    play(certs, STEPS[8:9])  # a cert: its key is encrypted with the source's key
    with pytest.raises(logfile.LogFileError, match="cert key cipher"):
        _import(other_key, _export(certs))
    _import(target, text)
    with pytest.raises(logfile.LogFileError, match="does not come after"):
        _import(target, text)  # twice: the store is no longer empty


def test_archive_keeps_the_state_and_the_archive_replays(tmp_path: Path) -> None:
    app = open_app(sqlite_url(tmp_path / "live"), interval=4)
    recorded = play(app)
    before_events = _events(app)
    through = recorded[9].position
    summary = logfile.archive(app, through, tmp_path / "a1.jsonl")
    assert summary.extra["deleted"] == through
    assert log_tables.first_position(app) == through + 1
    assert history.state_at(app).state.portal_json() == recorded[-1].state
    assert history.state_at(app, recorded[12].position).state.portal_json() == recorded[12].state
    with pytest.raises(history.PointUnavailable, match="archived"):
        history.state_at(app, recorded[3].position)
    # a fresh reader starts from the archive's snapshot, the writer goes on
    reopened = open_app(app.env["SQLALCHEMY_URL"], interval=4)
    reopened.execute(c.AddService(service(8)), META)
    # a second archive, then the rest as an export
    later = logfile.archive(reopened, recorded[14].position, tmp_path / "a2.jsonl")
    assert later.snapshots == 2  # where it starts, where it ends
    rest = _export(reopened)
    # The first archive alone replays to the state at its end...
    alone = open_app(sqlite_url(tmp_path / "alone"))
    _import(alone, (tmp_path / "a1.jsonl").read_text())
    assert history.state_at(alone).state.portal_json() == recorded[9].state
    # ...and all of it, in order, to the whole history: the same audit log as before.
    whole = open_app(sqlite_url(tmp_path / "whole"))
    for text in ((tmp_path / "a1.jsonl").read_text(), (tmp_path / "a2.jsonl").read_text(), rest):
        _import(whole, text)
    assert history.state_at(whole).state == history.state_at(reopened).state
    assert _events(whole)[: len(before_events)] == before_events
    header = json.loads((tmp_path / "a1.jsonl").read_text().splitlines()[0])
    assert header["kind"] == "archive" and header["through"] == through


def test_archive_refuses_what_a_node_has_not_applied(tmp_path: Path) -> None:
    app = open_app(sqlite_url(tmp_path / "live"))
    recorded = play(app, STEPS[:4])
    tracking = app.factory.tracking_recorder()  # type: ignore[attr-defined]
    tracking.insert_tracking(Tracking("lb", recorded[1].position))  # node lb applied this far
    with pytest.raises(logfile.LogFileError, match="not yet applied"):
        logfile.archive(app, recorded[3].position, tmp_path / "a.jsonl")
    assert not (tmp_path / "a.jsonl").exists()
    logfile.archive(app, recorded[1].position, tmp_path / "a.jsonl")
    with pytest.raises(logfile.LogFileError, match="exists"):
        logfile.archive(app, recorded[2].position, tmp_path / "a.jsonl", force=True)
