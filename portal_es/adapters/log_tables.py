"""Direct access to the event store's tables, for what the library has no call for: positions
kept on import, events deleted after an archive, snapshots thinned, the log's base version.

Everything goes through the record classes eventsourcing-sqlalchemy mapped (so column types,
e.g. UUIDs stored as 16 bytes in SQLite, are converted as the library does), inside the
library's own transactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from eventsourcing.application import Application

from portal_es.domain.balancer import BALANCER_ID


@dataclass(frozen=True)
class Row:
    """One stored event and its position (notification id)."""

    position: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes


def _events(app: Application[Any]) -> Any:
    return app.recorder.events_record_cls  # type: ignore[attr-defined]


def _snapshots(app: Application[Any]) -> Any:
    assert app.snapshots is not None, "snapshotting is not enabled"
    return app.snapshots.recorder.events_record_cls  # type: ignore[attr-defined]


def _transaction(app: Application[Any], commit: bool) -> Any:
    return app.recorder.transaction(commit=commit)  # type: ignore[attr-defined]


def _dialect(app: Application[Any]) -> str:
    return str(app.recorder.datastore.engine.dialect.name)  # type: ignore[attr-defined]


def snapshot_versions(app: Application[Any]) -> list[int]:
    """Versions of the Balancer's snapshots, newest first (nothing decoded)."""
    cls = _snapshots(app)
    with _transaction(app, False) as session:
        rows = session.execute(
            sa.select(cls.originator_version).where(cls.originator_id == BALANCER_ID)
            .order_by(cls.originator_version.desc())
        )
        return [int(v) for (v,) in rows]


def delete_snapshots(app: Application[Any], versions: Sequence[int]) -> None:
    if not versions:
        return
    cls = _snapshots(app)
    with _transaction(app, True) as session:
        session.execute(sa.delete(cls).where(
            cls.originator_id == BALANCER_ID, cls.originator_version.in_(list(versions))
        ))


def log_base_version(app: Application[Any]) -> int:
    """The Balancer version the live log starts after: 0 for a whole log; after an archive,
    the version of its last archived event (a snapshot must hold the state there)."""
    cls = _events(app)
    with _transaction(app, False) as session:
        first = session.execute(
            sa.select(sa.func.min(cls.originator_version)).where(cls.originator_id == BALANCER_ID)
        ).scalar()
    if first is not None:
        return int(first) - 1
    versions = snapshot_versions(app) if app.snapshots is not None else []
    return versions[0] if versions else 0  # everything archived: the newest snapshot


def balancer_head(app: Application[Any]) -> int:
    """The Balancer's current version in the live log (0 when it has none)."""
    cls = _events(app)
    with _transaction(app, False) as session:
        last = session.execute(
            sa.select(sa.func.max(cls.originator_version)).where(cls.originator_id == BALANCER_ID)
        ).scalar()
    return int(last) if last is not None else log_base_version(app)


def first_position(app: Application[Any]) -> int | None:
    cls = _events(app)
    with _transaction(app, False) as session:
        first = session.execute(sa.select(sa.func.min(cls.id))).scalar()
    return int(first) if first is not None else None


def insert_rows(
    app: Application[Any], rows: Iterable[Row], snapshots: Sequence[Row] = (),
    batch: int = 5000,
) -> int:
    """Insert events with their positions kept (import), then `snapshots` (read once `rows`
    is exhausted: the importer finds them on the way), all in one transaction. PostgreSQL's
    id sequence is moved past them so that later writes continue after the imported log."""
    cls = _events(app)
    table = cls.__table__
    count = 0
    with _transaction(app, True) as session:
        if _dialect(app) == "postgresql":  # as the library's writers do: one writer at a time
            session.execute(sa.text(f"LOCK TABLE {table.name} IN EXCLUSIVE MODE"))
        chunk: list[dict[str, Any]] = []
        for row in rows:
            chunk.append({"id": row.position, "originator_id": row.originator_id,
                          "originator_version": row.originator_version, "topic": row.topic,
                          "state": row.state})
            if len(chunk) == batch:
                session.execute(sa.insert(table), chunk)
                count += len(chunk)
                chunk = []
        if chunk:
            session.execute(sa.insert(table), chunk)
            count += len(chunk)
        if snapshots:
            session.execute(sa.insert(_snapshots(app).__table__), [
                {"originator_id": r.originator_id, "originator_version": r.originator_version,
                 "topic": r.topic, "state": r.state} for r in snapshots
            ])
        if _dialect(app) == "postgresql":
            session.execute(sa.text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"GREATEST((SELECT max(id) FROM {table.name}), 1))"
            ))
    return count


def snapshot_row(app: Application[Any], version: int) -> Row | None:
    """The stored snapshot at `version`, as stored (for archives)."""
    cls = _snapshots(app)
    with _transaction(app, False) as session:
        record = session.execute(sa.select(cls).where(
            cls.originator_id == BALANCER_ID, cls.originator_version == version
        )).scalar()
        if record is None:
            return None
        return Row(0, record.originator_id, record.originator_version, record.topic,
                   bytes(record.state))


def delete_events_through(app: Application[Any], position: int) -> int:
    """Remove every event at or before `position` from the live log (after an archive)."""
    cls = _events(app)
    with _transaction(app, True) as session:
        result = session.execute(sa.delete(cls).where(cls.id <= position))
        return int(result.rowcount or 0)


def tracking_positions(app: Application[Any]) -> dict[str, int]:
    """How far each node (and relay) recorded it applied the log."""
    table = f"{app.name.lower()}_tracking"
    with _transaction(app, False) as session:
        rows = session.execute(sa.text(
            f"SELECT application_name, max(notification_id) FROM {table} "
            "GROUP BY application_name"
        ))
        return {str(name): int(position or 0) for name, position in rows}
