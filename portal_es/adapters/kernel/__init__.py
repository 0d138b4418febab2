"""Kernel data planes: what a node's projector programs (nftables, IPVS, or nothing)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from projections.l4 import VirtualService


class DataplaneError(RuntimeError):
    """The kernel refused a change; what was live before is still live (or was restored)."""


@dataclass
class SyncReport:
    """What one sync changed (ids of services), and how long it took."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


@dataclass
class Drift:
    """How the kernel differs from the log's desired state (for status and reconcile)."""

    missing: list[str] = field(default_factory=list)  # desired, not live
    unexpected: list[str] = field(default_factory=list)  # live, not desired
    different: list[str] = field(default_factory=list)  # both, not equal

    @property
    def empty(self) -> bool:
        return not (self.missing or self.unexpected or self.different)


class L4Dataplane(Protocol):
    """A kernel layer-4 balancer. Implementations diff against the kernel's own state and
    apply only the difference; they never flush and re-add (Portal's defect)."""

    name: str

    def unsupported(self, service: VirtualService) -> str | None:
        """Why this data plane cannot express `service` (None when it can)."""

    def sync(self, desired: Mapping[str, VirtualService], full: bool = False) -> SyncReport:
        """Make the kernel match `desired`. `full` re-reads the kernel instead of trusting
        what the last sync left (after start, failures, or for a periodic reconcile)."""

    def drift(self, desired: Mapping[str, VirtualService]) -> Drift:
        """Compare the kernel with `desired` without changing anything."""

    def flush(self) -> None:
        """Remove everything this data plane programmed (explicit `portal-es flush` only)."""
