"""Tunables of the HTTP/HTTPS proxy, with defaults close to nginx's where nginx has one."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProxySettings:
    # Processes serving traffic. None: one per core (SO_REUSEPORT listeners, the kernel spreads
    # connections). 0: serve inside the calling process's event loop (tests, tiny nodes).
    workers: int | None = None
    connect_timeout: float = 5.0     # seconds to open a connection to a target
    read_timeout: float = 60.0       # seconds an upstream may stay silent mid-request
    idle_timeout: float = 75.0       # seconds a client connection may stay silent
    pool_idle_timeout: float = 30.0  # seconds an unused upstream keep-alive connection is kept
    tunnel_timeout: float = 3600.0   # seconds a WebSocket (upgraded) connection may stay silent
    max_header_bytes: int = 64 * 1024                 # request line + headers; 431 above
    max_connections_per_target: int = 512             # per worker; requests queue above it
    health_interval: float = 5.0     # seconds between health-check rounds
    upstream_verify_tls: bool = False  # https targets: Portal trusted them (often self-signed)
    access_log: bool = True          # one line per request at logger "portal_es.proxy.access"
    stop_grace: float = 5.0          # seconds in-flight requests get to finish on stop()

    def worker_count(self) -> int:
        if self.workers is None:
            return os.cpu_count() or 1
        return self.workers
