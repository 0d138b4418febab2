"""The load balancer's configuration as plain data: what the log folds into.

The aggregate (for invariants), the read model (for GETs) and every node's projector (for the
kernel and the proxy) fold the same events into this same structure, with the same code.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from portal_es.domain.models import CertBundle, ErrorPages, Route, RouteKey, Service, Vip

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

COLLECTIONS = ("services", "servers", "routes", "certs", "vips")


@dataclass
class BalancerState:
    services: dict[str, Service] = field(default_factory=dict)
    routes: dict[RouteKey, Route] = field(default_factory=dict)
    certs: dict[str, CertBundle] = field(default_factory=dict)  # by cert fingerprint
    vips: dict[str, Vip] = field(default_factory=dict)  # by address
    error_pages: ErrorPages = field(default_factory=ErrorPages)

    def portal_json(self) -> dict[str, Any]:
        """The whole configuration, each object in its Portal JSON shape."""
        return {
            "services": [s.portal_json() for s in self.services.values()],
            "routes": [r.portal_json() for r in self.routes.values()],
            "certs": [c.portal_json() for c in self.certs.values()],
            "vips": [v.portal_json() for v in self.vips.values()],
            "errors": self.error_pages.portal_json(),
        }


def insert_at(items: dict[K, V], key: K, value: V, position: int) -> None:
    """Insert into an ordered dict at a position (dicts keep insertion order)."""
    if position >= len(items):
        items[key] = value
        return
    entries = list(items.items())
    entries.insert(position, (key, value))
    items.clear()
    items.update(entries)


def replace_at(items: dict[K, V], old_key: K, new_key: K, value: V) -> None:
    """Replace an entry in place, possibly under a new key."""
    if old_key == new_key:
        items[new_key] = value
        return
    entries = [(new_key, value) if k == old_key else (k, v) for k, v in items.items()]
    items.clear()
    items.update(entries)


def reorder(items: dict[K, V], order: Iterable[K]) -> None:
    entries = [(k, items[k]) for k in order]
    items.clear()
    items.update(entries)
