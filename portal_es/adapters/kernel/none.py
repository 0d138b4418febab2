"""No kernel balancing (`--balancer none`, `--just-proxy`): services are kept in the log only."""

from __future__ import annotations

from collections.abc import Mapping

from portal_es.adapters.kernel import Drift, SyncReport
from projections.l4 import VirtualService


class NoDataplane:
    name = "none"

    def unsupported(self, service: VirtualService) -> str | None:
        return None

    def sync(self, desired: Mapping[str, VirtualService], full: bool = False) -> SyncReport:
        return SyncReport()

    def drift(self, desired: Mapping[str, VirtualService]) -> Drift:
        return Drift()

    def flush(self) -> None:
        return None
