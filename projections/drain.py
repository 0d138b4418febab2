"""Which removed servers are still draining: they take no new connections, but keep the ones
they have until the drain timeout has passed since their removal.

Derived from the log (event times), not kept on the side, so draining survives a restart.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from portal_es.domain import events as ev
from portal_es.domain.models import Server


class DrainSchedule:
    def __init__(self, timeout: timedelta) -> None:
        self.timeout = timeout
        self._until: dict[tuple[str, str], tuple[Server, datetime]] = {}

    def _drain(self, service_id: str, server: Server, at: datetime) -> None:
        if self.timeout > timedelta(0):
            self._until[(service_id, server.id)] = (server, at + self.timeout)

    def _forget_service(self, service_id: str) -> None:
        for key in [k for k in self._until if k[0] == service_id]:
            del self._until[key]

    def observe(self, event: ev.BalancerEvent) -> None:
        match event:
            case ev.ServerRemoved(service_id=sid, previous=server):
                self._drain(sid, server, event.timestamp)
            case ev.ServerAdded(service_id=sid, server=server) | ev.ServerUpdated(
                service_id=sid, server=server
            ):
                self._until.pop((sid, server.id), None)
            case ev.ServiceUpdated(service=new, previous=old) if new.id == old.id:
                kept = {s.id for s in new.servers}
                for server in old.servers:
                    if server.id not in kept:
                        self._drain(new.id, server, event.timestamp)
                for server in new.servers:
                    self._until.pop((new.id, server.id), None)
            case ev.ServiceUpdated(previous=old):
                self._forget_service(old.id)
            case ev.ServiceRemoved(previous=old) | ev.ServiceAdded(service=old):
                self._forget_service(old.id)

    def active(self, now: datetime) -> dict[str, list[Server]]:
        """Servers still draining at `now`, by service id (expired ones are forgotten)."""
        for key in [k for k, (_, until) in self._until.items() if until <= now]:
            del self._until[key]
        out: dict[str, list[Server]] = {}
        for (sid, _), (server, _) in self._until.items():
            out.setdefault(sid, []).append(server)
        return out

    def next_deadline(self) -> datetime | None:
        return min((until for _, until in self._until.values()), default=None)
