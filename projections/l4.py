"""Desired layer-4 state: what the kernel of a node should balance, as plain data.

Pure functions of the folded configuration (and of which removed servers are still draining),
so the same log gives the same kernel programme on every node and in every test. The kernel
adapters (nftables, IPVS) turn this into their own objects and diff it against what is live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from portal_es.domain.models import Server, Service
from portal_es.domain.state import BalancerState

# A server host of exactly 127.0.0.1 means "the service's own host" (Portal's convention).
SERVICE_HOST_PLACEHOLDER = "127.0.0.1"


@dataclass(frozen=True)
class Backend:
    """A real server as the kernel sees it."""

    host: str
    port: int
    weight: int
    forwarder: str  # g (direct routing) | i (ip-in-ip) | m (masquerade/NAT)
    upper_threshold: int = 0
    lower_threshold: int = 0
    draining: bool = False  # removed from the log: no new connections, existing ones finish

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class VirtualService:
    """A virtual service (address, port, protocol) and its backends, in the log's order."""

    id: str
    host: str
    port: int
    protocol: str  # tcp | udp
    scheduler: str
    persistence: int  # seconds of client affinity, 0 = none
    netmask: str  # affinity granularity ("" = per address)
    backends: tuple[Backend, ...]

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol, self.host, self.port)

    @property
    def active_backends(self) -> tuple[Backend, ...]:
        """Backends that take new connections."""
        return tuple(b for b in self.backends if not b.draining and b.weight > 0)


def backend(service: Service, server: Server, draining: bool = False) -> Backend:
    host = service.host if server.host == SERVICE_HOST_PLACEHOLDER else server.host
    return Backend(
        host=host, port=server.port, weight=server.weight, forwarder=server.forwarder,
        upper_threshold=server.upper_threshold, lower_threshold=server.lower_threshold,
        draining=draining,
    )


def virtual_service(service: Service, draining: Sequence[Server] = ()) -> VirtualService:
    live = [backend(service, s) for s in service.servers]
    keys = {b.key for b in live}
    drained = [backend(service, s, draining=True) for s in draining]
    return VirtualService(
        id=service.id, host=service.host, port=service.port, protocol=service.type,
        scheduler=service.scheduler, persistence=service.persistence, netmask=service.netmask,
        backends=tuple(live + [b for b in drained if b.key not in keys]),
    )


def desired_services(
    state: BalancerState, draining: Mapping[str, Sequence[Server]] | None = None
) -> dict[str, VirtualService]:
    """Every service of the configuration, with its still-draining removed servers."""
    draining = draining or {}
    return {
        sid: virtual_service(service, draining.get(sid, ()))
        for sid, service in state.services.items()
    }
