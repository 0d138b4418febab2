"""Node maintenance run on the node itself (not through the API): rebuild and flush."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from portal_es.adapters.kernel.choice import choose
from portal_es.adapters.vips import VipManager
from portal_es.config import Settings
from portal_es.entrypoints import log_commands
from portal_es.entrypoints.server import node_projector, open_application
from projections.l4 import virtual_service

log = logging.getLogger(__name__)


def rebuild(
    settings: Settings, dry_run: bool = False, at: str | None = None, reason: str = ""
) -> dict[str, Any]:
    """Fold the log (from the newest snapshot), diff it against the kernel and apply the
    difference (or, with dry_run, only say what would change). Wipes nothing that is correct.
    With `at`, first restore the configuration of that point (log_commands.restore_on_store:
    recorded as events, straight into the store)."""
    l4 = choose(settings.balancer, settings.just_proxy)
    app = open_application(settings, policy=lambda s: l4.unsupported(virtual_service(s)))
    try:
        restore = log_commands.restore_on_store(app, at, reason, dry_run) if at else None
        node = node_projector(settings, app, l4)
        if restore is not None and dry_run:  # the kernel plan of the state restored to
            node.catch_up()
            node.state = restore.target
        plan = node.drift()
        out: dict[str, Any] = {"node": node.node_name, "balancer": l4.name,
                               "position": node.position, "version": node.version,
                               "plan": plan, "summary": plan_summary(plan)}
        if restore is not None:
            out["restore"] = restore.report
        if not dry_run:
            applied = node.apply(full=True)
            out["applied"] = applied.ok
            out["errors"] = applied.errors
            out["seconds"] = round(applied.seconds, 3)
            out["snapshot_taken"] = log_commands.snapshot_if_behind(app)
        return out
    finally:
        app.close()


def plan_summary(plan: dict[str, Any]) -> list[str]:
    """The plan as one line per change, for people: + add, ~ change, - remove."""
    services = plan.get("services", {})
    lines = [f"+ service {s}" for s in services.get("missing", [])]
    lines += [f"~ service {s}" for s in services.get("different", [])]
    lines += [f"- service {s}" for s in services.get("unexpected", [])]
    lines += [f"+ vip {v}" for v in plan.get("vips", {}).get("missing", [])]
    return lines


def flush(settings: Settings) -> dict[str, Any]:
    """Remove everything portal-es programmed on this node: its kernel table or services and
    the vips it added (addresses it did not add stay). The log is untouched."""
    l4 = choose(settings.balancer, settings.just_proxy)
    l4.flush()
    out: dict[str, Any] = {"balancer": l4.name, "flushed": True}
    if not settings.no_vips:
        report = VipManager(Path(settings.work_dir)).flush()
        out["vips_removed"] = report.removed
        out["errors"] = report.errors
    return out
