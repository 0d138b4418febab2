"""What the log's own commands do on the store (no server needed): restore a past point
(`rebuild --at`), print/export/import the log (`replay`), archive its beginning (`archive`).

`rebuild --at` writes the restore straight into the store: it is for a node whose server is
not running (disaster recovery, a wiped node). With a server running, `portal-es restore`
(POST /state/restore) is the way: that server's coordinator applies the restore and rolls it
back if the node cannot. Either way it is the same command on the Balancer, recorded as the
same events (the changes, then a Restored marker naming the point and the reason).
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from portal_es.adapters import log_tables, logfile
from portal_es.config import Settings
from portal_es.domain.balancer import Meta
from portal_es.domain.commands import RestoreState
from portal_es.domain.state import BalancerState
from portal_es.service.app import PortalApplication
from projections import history


def cli_actor() -> str:
    """Who ran a command on the node itself (the API's actors are token hashes)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


@dataclass
class Restore:
    """A restore planned (and, unless a dry run, written)."""

    target: BalancerState
    report: dict[str, Any]


def restore_command(
    app: PortalApplication, at: str, reason: str
) -> tuple[RestoreState, dict[str, Any]]:
    """The command that restores point `at`, and how it differs from now (per object)."""
    point = history.state_at(app, history.resolve(app, at))
    now = history.state_at(app)
    command = RestoreState(point.state, point.position, point.version,
                           point.time.isoformat() if point.time else "", reason)
    changes = history.diff(now.state, point.state)
    return command, {"to": point.point(), "from": now.point(), "changes": changes,
                     "changed": history.changed(changes)}


def restore_on_store(app: PortalApplication, at: str, reason: str, dry_run: bool) -> Restore:
    command, report = restore_command(app, at, reason)
    if not dry_run:
        meta = Meta(actor=cli_actor(), request_id=f"restore-{uuid.uuid4().hex}")
        outcome = app.execute(command, meta)
        report.update(version=outcome.version, position=outcome.position,
                      events=len(outcome.events))
    return Restore(deepcopy(command.target), report)


def snapshot_if_behind(app: PortalApplication) -> bool:
    """After a long fold (a rebuild, an old store opened by a new version), keep its result:
    a snapshot at the head when the newest one is an interval or more behind."""
    interval = app.snapshot_interval
    latest = app.latest_snapshot()
    behind = log_tables.balancer_head(app) - (latest.originator_version if latest else 0)
    if interval <= 0 or behind < interval:
        return False
    folded = history.state_at(app)
    return app.put_snapshot(folded.state, folded.version, folded.position, folded.time)


# --- replay and archive -------------------------------------------------------------------


def _through(app: PortalApplication, until: str | None) -> int | None:
    return None if until is None else history.resolve(app, until)


def replay_print(app: PortalApplication, out: IO[str], until: str | None) -> dict[str, Any]:
    return logfile.export(app, out, _through(app, until)).as_json()


def replay_export(app: PortalApplication, path: Path, until: str | None) -> dict[str, Any]:
    if path.exists():
        raise logfile.LogFileError(f"{path} exists: not overwritten")
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        summary = logfile.export(app, out, _through(app, until))
    partial.replace(path)
    summary.file = str(path)
    return summary.as_json()


def replay_import(app: PortalApplication, paths: Sequence[Path]) -> dict[str, Any]:
    """Import files in order (an archive, then what followed it) into the store."""
    done = []
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            summary = logfile.import_log(app, lines)
        summary.file = str(path)
        done.append(summary.as_json())
    folded = history.state_at(app)
    return {"imported": done, "head": folded.point()}


def archive(app: PortalApplication, until: str, path: Path, force: bool) -> dict[str, Any]:
    return logfile.archive(app, history.resolve(app, until), path, force).as_json()


def open_store(settings: Settings) -> PortalApplication:
    from portal_es.entrypoints.server import open_application  # loads aiohttp: only here

    return open_application(settings)
