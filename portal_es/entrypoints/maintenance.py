"""Node maintenance run on the node itself (not through the API): rebuild and flush."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from portal_es.adapters.kernel.choice import choose
from portal_es.adapters.vips import VipManager
from portal_es.config import Settings
from portal_es.entrypoints.server import node_projector, open_application
from projections.l4 import virtual_service

log = logging.getLogger(__name__)


def rebuild(settings: Settings, dry_run: bool = False) -> dict[str, Any]:
    """Fold the whole log, diff it against the kernel and apply the difference (or, with
    dry_run, only say what would change). Wipes nothing that is correct."""
    l4 = choose(settings.balancer, settings.just_proxy)
    app = open_application(settings, policy=lambda s: l4.unsupported(virtual_service(s)))
    try:
        node = node_projector(settings, app, l4)
        plan = node.drift()
        out: dict[str, Any] = {"node": node.node_name, "balancer": l4.name,
                               "position": node.position, "version": node.version,
                               "plan": plan}
        if not dry_run:
            applied = node.apply(full=True)
            out["applied"] = applied.ok
            out["errors"] = applied.errors
            out["seconds"] = round(applied.seconds, 3)
        return out
    finally:
        app.close()


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
