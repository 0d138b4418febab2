"""One small handler per command: call the one Balancer method that carries it out."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from portal_es.domain import commands as c
from portal_es.domain.balancer import Balancer, Meta, Socket

Handler = Callable[[Balancer, Any, Meta, Iterable[Socket]], Any]

HANDLERS: dict[type[c.Command], Handler] = {
    c.AddService: lambda b, cmd, m, r: b.add_service(m, cmd.service, r),
    c.UpdateService: lambda b, cmd, m, r: b.update_service(m, cmd.service_id, cmd.service, r),
    c.ReplaceServices: lambda b, cmd, m, r: b.replace_services(m, cmd.services, r),
    c.RemoveService: lambda b, cmd, m, r: b.remove_service(m, cmd.service_id),
    c.AddServer: lambda b, cmd, m, r: b.add_server(m, cmd.service_id, cmd.server),
    c.ReplaceServers: lambda b, cmd, m, r: b.replace_servers(m, cmd.service_id, cmd.servers),
    c.RemoveServer: lambda b, cmd, m, r: b.remove_server(m, cmd.service_id, cmd.server_id),
    c.AddRoute: lambda b, cmd, m, r: b.add_route(m, cmd.route),
    c.ReplaceRoutes: lambda b, cmd, m, r: b.replace_routes(m, cmd.routes),
    c.RemoveRoute: lambda b, cmd, m, r: b.remove_route(m, cmd.key),
    c.AddCert: lambda b, cmd, m, r: b.add_cert(m, cmd.cert),
    c.ReplaceCerts: lambda b, cmd, m, r: b.replace_certs(m, cmd.certs),
    c.RemoveCert: lambda b, cmd, m, r: b.remove_cert(m, cmd.cert_id),
    c.AddVip: lambda b, cmd, m, r: b.add_vip(m, cmd.vip),
    c.ReplaceVips: lambda b, cmd, m, r: b.replace_vips(m, cmd.vips),
    c.RemoveVip: lambda b, cmd, m, r: b.remove_vip(m, cmd.address),
    c.SetErrorPages: lambda b, cmd, m, r: b.set_error_pages(m, cmd.pages),
    c.RestoreState: lambda b, cmd, m, r: b.restore(
        m, cmd.target, r, (cmd.position, cmd.version, cmd.time), cmd.reason
    ),
}
