"""The HTTP/HTTPS proxy data plane (Portal's router), live-reconfigured from the log.

The node projector calls `ProxyServer.update(routes, certs, pages)` (or awaits `apply(...)`
to know every worker serves it); the API mounts `aiohttp_view(proxy.metrics)` at /metrics and
serves `proxy.health()` for route health.
"""

from portal_es.adapters.proxy.metrics import aiohttp_view
from portal_es.adapters.proxy.server import ProxyApplyError, ProxyServer
from portal_es.adapters.proxy.settings import ProxySettings

__all__ = ["ProxyApplyError", "ProxyServer", "ProxySettings", "aiohttp_view"]
