"""The log as a file (JSON lines): export, import into another store, archive.

One file format serves backup, migration between SQLite and PostgreSQL, and retention:

    {"portal_es_log": 1, "kind": "export"|"archive", "through": P, "written_at": ...}
    {"snapshot": {...}}     only when the log starts after an archive: the state it starts from
    {"position": 1, "originator_id": "...", "version": 1, "topic": "...", "state": {...}}
    ...
    {"snapshot": {...}}     archives only: the state at P, what the live store keeps
    {"end": {"events": N, "last_position": P}}   a file without it was cut short

Events are copied as stored: the same topic, the same state bytes (the JSON is embedded as an
object so that people and jq can read it, and written back byte for byte), the same position.
So an import gives an identical state, identical GET answers, the same GET /events positions,
and `--at` points keep naming the same moments. Cert private keys stay encrypted with the
source's cert key cipher key: the importing node must use the same key (import checks that
every event decodes before anything is committed).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast
from uuid import UUID

from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import StoredEvent

from portal_es.adapters import log_tables
from portal_es.adapters.log_tables import Row
from portal_es.domain.balancer import BALANCER_ID
from portal_es.domain.errors import DomainError
from portal_es.domain.events import BalancerEvent
from portal_es.domain.snapshot import BalancerSnapshot
from portal_es.service.snapshots import SnapshottingApplication
from projections import history

FORMAT = 1
PAGE = 1000


class LogFileError(DomainError):
    """A file that cannot be imported here, or an archive that cannot be made (nothing was
    changed)."""

    status = 409


@dataclass
class Summary:
    kind: str
    events: int = 0
    first_position: int | None = None
    last_position: int | None = None
    version: int = 0  # the Balancer's version at the end
    snapshots: int = 0
    file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "events": self.events, "first_position": self.first_position,
               "last_position": self.last_position, "version": self.version,
               "snapshots": self.snapshots}
        if self.file:
            out["file"] = self.file
        return {**out, **self.extra}


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _state_field(state: bytes) -> dict[str, Any]:
    """The stored state as readable JSON when it is (it is, unless the whole store is
    encrypted or compressed), else as base64."""
    try:
        text = state.decode("utf-8")
        value = json.loads(text)
        if _dumps(value).encode("utf-8") == state:  # written back byte for byte
            return {"state": value}
    except ValueError:
        pass
    return {"state_b64": base64.b64encode(state).decode()}


def _state_bytes(record: dict[str, Any]) -> bytes:
    if "state_b64" in record:
        return base64.b64decode(record["state_b64"])
    return _dumps(record["state"]).encode("utf-8")


def _event_line(row: Row) -> str:
    return _dumps({"position": row.position, "originator_id": row.originator_id.hex,
                   "version": row.originator_version, "topic": row.topic,
                   **_state_field(row.state)})


def _snapshot_line(row: Row) -> str:
    return _dumps({"snapshot": {"originator_id": row.originator_id.hex,
                                "version": row.originator_version, "topic": row.topic,
                                **_state_field(row.state)}})


def _rows(app: SnapshottingApplication, through: int) -> Iterator[Row]:
    after = 0
    while True:
        page = app.recorder.select_notifications(
            start=after, limit=PAGE, stop=through, inclusive_of_start=False
        )
        for n in page:
            yield Row(n.id, UUID(str(n.originator_id)), n.originator_version, n.topic, n.state)
        if len(page) < PAGE:
            return
        after = page[-1].id


def export(
    app: SnapshottingApplication, out: IO[str], through: int | None = None,
    kind: str = "export",
) -> Summary:
    """Write the live log up to position `through` (None: the head) to `out`."""
    head = history.head(app)
    through = head if through is None else min(through, head)
    summary = Summary(kind, extra={"through": through})
    out.write(_dumps({"portal_es_log": FORMAT, "kind": kind, "through": through,
                      "written_at": datetime.now(UTC).isoformat()}) + "\n")
    base = log_tables.log_base_version(app)
    if base > 0:  # the log was archived: it starts from the state in this snapshot
        snapshot = log_tables.snapshot_row(app, base)
        if snapshot is None:
            raise LogFileError(f"the log starts after version {base} (archived) but the "
                               "snapshot at that version is missing: the file would not replay")
        out.write(_snapshot_line(snapshot) + "\n")
        summary.snapshots += 1
        summary.version = base
    for row in _rows(app, through):
        out.write(_event_line(row) + "\n")
        summary.events += 1
        summary.first_position = summary.first_position or row.position
        summary.last_position = row.position
        if row.originator_id == BALANCER_ID:
            summary.version = row.originator_version
    if kind == "archive" and summary.version > base:
        snapshot = log_tables.snapshot_row(app, summary.version)
        if snapshot is None:
            raise LogFileError(f"no snapshot at version {summary.version} to end the archive")
        out.write(_snapshot_line(snapshot) + "\n")
        summary.snapshots += 1
    out.write(_dumps({"end": {"events": summary.events,
                              "last_position": summary.last_position}}) + "\n")
    return summary


# --- import ---------------------------------------------------------------------------------


def _records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise LogFileError(f"line {number}: not JSON: {e}") from None
        if not isinstance(record, dict):
            raise LogFileError(f"line {number}: not a JSON object")
        yield record


def _row(record: dict[str, Any], position: int = 0) -> Row:
    try:
        return Row(position, UUID(record["originator_id"]), int(record["version"]),
                   str(record["topic"]), _state_bytes(record))
    except (KeyError, TypeError, ValueError) as e:
        raise LogFileError(f"a record lacks or garbles {e}") from None


class _Importer:
    """Checks a file against the store as it streams its rows to the insert."""

    def __init__(self, app: SnapshottingApplication) -> None:
        self.app = app
        self.head = history.head(app)
        self.empty = self.head == 0 and not log_tables.snapshot_versions(app)
        self.folded = history.Folded() if self.empty else history.state_at(app)
        self.snapshots: list[Row] = []  # to insert: those the store does not have yet
        self.existing = set(log_tables.snapshot_versions(app))
        self.summary = Summary("import")
        self.ended = False

    def _snapshot(self, record: dict[str, Any]) -> None:
        row = _row(record)
        if row.originator_id != BALANCER_ID:
            raise LogFileError("a snapshot of another aggregate than the Balancer")
        stored = StoredEvent(row.originator_id, row.originator_version, row.topic, row.state)
        try:
            snapshot = cast(BalancerSnapshot, self.app.mapper.to_domain_event(stored))
            state = snapshot.balancer_state
        except Exception as e:
            raise LogFileError(f"snapshot v{row.originator_version} does not load here: {e} "
                               "(is the cert key cipher key the source's?)") from None
        if self.summary.events == 0 and self.folded.version == 0 and self.head == 0:
            # the file's log starts after an archive: this is its starting state
            self.folded = history.Folded(state, snapshot.originator_version,
                                         snapshot.position, snapshot.event_time)
        elif row.originator_version != self.folded.version:
            raise LogFileError(f"snapshot v{row.originator_version} does not match the "
                               f"events before it (version {self.folded.version})")
        if row.originator_version not in self.existing:
            self.snapshots.append(row)
            self.existing.add(row.originator_version)
            self.summary.snapshots += 1

    def _event(self, record: dict[str, Any]) -> Row:
        position = record.get("position")
        if not isinstance(position, int) or position <= max(self.head, self.folded.position):
            raise LogFileError(
                f"position {position} does not come after the store's log "
                f"(head {max(self.head, self.folded.position)}): import into an empty store, "
                "or a file that continues this one"
            )
        row = _row(record, position)
        if row.originator_id == BALANCER_ID and row.originator_version != self.folded.version + 1:
            raise LogFileError(f"position {position}: version {row.originator_version} does "
                               f"not follow version {self.folded.version}")
        stored = StoredEvent(row.originator_id, row.originator_version, row.topic, row.state)
        try:
            event = cast(DomainEvent, self.app.mapper.to_domain_event(stored))
        except Exception as e:
            raise LogFileError(f"position {position} does not load here: {e} "
                               "(is the cert key cipher key the source's?)") from None
        if row.originator_id == BALANCER_ID:
            if isinstance(event, BalancerEvent):
                try:
                    event.evolve(self.folded.state)
                except (KeyError, ValueError) as e:
                    raise LogFileError(f"position {position}: does not apply to the state "
                                       f"before it: {e!r}") from None
            self.folded.version = row.originator_version
            self.folded.time = event.timestamp
        self.folded.position = position
        self.summary.events += 1
        self.summary.first_position = self.summary.first_position or position
        self.summary.last_position = position
        return row

    def rows(self, lines: Iterable[str]) -> Iterator[Row]:
        records = _records(lines)
        header = next(records, None)
        if header is None or header.get("portal_es_log") != FORMAT:
            raise LogFileError(f"not a portal-es log file (format {FORMAT})")
        self.summary.extra["source_kind"] = header.get("kind")
        for record in records:
            if self.ended:
                raise LogFileError("records after the end line")
            if "end" in record:
                expected = record["end"].get("events") if isinstance(record["end"], dict) else None
                if expected != self.summary.events:
                    raise LogFileError(f"the file says {expected} events, it holds "
                                       f"{self.summary.events}")
                self.ended = True
            elif "snapshot" in record:
                self._snapshot(record["snapshot"])
            else:
                yield self._event(record)
        if not self.ended:
            raise LogFileError("the file was cut short (no end line): nothing imported")


def import_log(app: SnapshottingApplication, lines: Iterable[str]) -> Summary:
    """Append a file's log to the store: an empty store, or one whose log it continues.
    All or nothing: one transaction, committed only when every line checked out."""
    importer = _Importer(app)
    log_tables.insert_rows(app, importer.rows(lines), importer.snapshots)
    folded, summary = importer.folded, importer.summary
    summary.version = folded.version
    if folded.version and folded.position and summary.events:
        # so that the next start does not fold the whole import
        summary.extra["snapshot_taken"] = app.put_snapshot(
            folded.state, folded.version, folded.position, folded.time)
    return summary


# --- archive --------------------------------------------------------------------------------


def archive(
    app: SnapshottingApplication, through: int, path: Path, force: bool = False
) -> Summary:
    """Move the events up to position `through` out of the live store into `path`, keeping
    a snapshot of the state there. History is not rewritten: it moves, whole, to the file
    (which replays into an empty store), and the state stays identical."""
    head = history.head(app)
    first = log_tables.first_position(app)
    if first is None or through < first:
        raise LogFileError(f"nothing to archive up to position {through} (the live log starts "
                           f"at {first})")
    if through > head:
        raise LogFileError(f"position {through} is beyond the head of the log ({head})")
    lagging = {n: p for n, p in log_tables.tracking_positions(app).items() if p < through}
    if lagging and not force:
        raise LogFileError(f"not yet applied by {lagging}: they would have to resume from the "
                           "snapshot (--force to archive anyway)")
    if path.exists():
        raise LogFileError(f"{path} exists: an archive is never overwritten")
    folded = history.state_at(app, through)
    app.put_snapshot(folded.state, folded.version, folded.position, folded.time)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        summary = export(app, out, through, kind="archive")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    summary.extra["deleted"] = log_tables.delete_events_through(app, through)
    app.thin_snapshots()
    summary.file = str(path)
    return summary
