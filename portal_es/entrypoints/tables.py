"""`--output table`: the API's JSON as aligned columns a person reads.

Only for people: scripts get the API's JSON (the default), whose shape never changes here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from portal_es.domain.pem import fingerprint

Row = Sequence[str]

SERVICE_COLUMNS = ("SERVICE", "TYPE", "HOST", "PORT", "SCHEDULER", "PERSISTENCE", "NETMASK",
                   "INTERFACE")
SERVER_COLUMNS = ("SERVER", "HOST", "PORT", "FORWARDER", "WEIGHT", "UPPER", "LOWER")
ROUTE_COLUMNS = ("SUBDOMAIN", "DOMAIN", "PATH", "TARGETS", "FWDPATH", "PAGE", "HEALTH CHECK")
CERT_COLUMNS = ("CN", "SANS", "NOT AFTER", "FINGERPRINT")
VIP_COLUMNS = ("IP", "INTERFACE", "ALIAS")
EVENT_COLUMNS = ("POSITION", "TIME", "TYPE", "ACTOR", "DATA")
NODE_COLUMNS = ("NODE", "HEALTH", "POSITION", "LAG", "LAST SEEN", "RELAY", "BALANCER", "ERRORS")
CHANGE_COLUMNS = ("CHANGE", "STATE", "COMMAND", "ORIGIN", "REQUESTED", "APPLIED", "FAILED",
                  "NOT WAITED FOR", "MESSAGE")
DATA_WIDTH = 80  # an event's data is a summary here; the JSON output has all of it
SERVERS_INDENT = "    "


def cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    return str(value)


def aligned(columns: Row, rows: Sequence[Row], indent: str = "") -> list[str]:
    """The header and the rows, each column as wide as its widest cell."""
    widths = [max(len(c) for c in column) for column in zip(columns, *rows, strict=True)]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (columns, *rows)
    ]


def _server_row(server: dict[str, Any]) -> Row:
    keys = ("id", "host", "port", "forwarder", "weight", "upper_threshold", "lower_threshold")
    return [cell(server.get(k)) for k in keys]


def _service_row(service: dict[str, Any]) -> Row:
    keys = ("id", "type", "host", "port", "scheduler", "persistence", "netmask", "interface")
    return [cell(service.get(k)) for k in keys]


def services(items: list[dict[str, Any]]) -> list[str]:
    """One row per service, its servers in an indented table under it."""
    lines = aligned(SERVICE_COLUMNS, [_service_row(s) for s in items])
    out = lines[:1]
    for service, line in zip(items, lines[1:], strict=True):
        out.append(line)
        servers = service.get("servers") or []
        if servers:
            out += aligned(SERVER_COLUMNS, [_server_row(s) for s in servers], SERVERS_INDENT)
    return out


def servers(items: list[dict[str, Any]]) -> list[str]:
    return aligned(SERVER_COLUMNS, [_server_row(s) for s in items])


def _health(route: dict[str, Any]) -> str:
    if not route.get("endpoint"):
        return "-"
    expect = route.get("expected_body") or route.get("expected_header") or route.get(
        "expected_code")
    return f"{route['endpoint']} expect {expect}"


def _page(route: dict[str, Any]) -> str:
    page = route.get("page") or ""
    return f"{len(page.encode())} bytes" if page else "-"


def routes(items: list[dict[str, Any]]) -> list[str]:
    rows = [
        [cell(r.get("subdomain")), cell(r.get("domain")), cell(r.get("path")),
         cell(r.get("targets")), cell(r.get("fwdpath")), _page(r), _health(r)]
        for r in items
    ]
    return aligned(ROUTE_COLUMNS, rows)


def _cert_row(bundle: dict[str, Any]) -> Row:
    """Who the certificate is for and until when, instead of its PEM."""
    pem = str(bundle.get("cert", ""))
    try:
        leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    except ValueError:
        return ["(not a PEM certificate)", "-", "-", "-"]
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        alt = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [*alt.get_values_for_type(x509.DNSName),
                *(str(ip) for ip in alt.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        sans = []
    return [cell(str(names[0].value) if names else ""), cell(sans),
            leaf.not_valid_after_utc.isoformat(), fingerprint(pem)[:16]]


def certs(items: list[dict[str, Any]]) -> list[str]:
    return aligned(CERT_COLUMNS, [_cert_row(b) for b in items])


def vips(items: list[dict[str, Any]]) -> list[str]:
    return aligned(VIP_COLUMNS, [[cell(v.get(k)) for k in ("ip", "interface", "alias")]
                                 for v in items])


def _summary(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= DATA_WIDTH else text[: DATA_WIDTH - 3] + "..."


def events(items: list[dict[str, Any]]) -> list[str]:
    rows = [
        [cell(e.get("position")), cell(e.get("time")), cell(e.get("type")), cell(e.get("actor")),
         _summary(e.get("data"))]
        for e in items
    ]
    return aligned(EVENT_COLUMNS, rows)


def nodes(items: list[dict[str, Any]]) -> list[str]:
    rows = [
        [cell(n.get("node")) + (" *" if n.get("self") else ""), cell(n.get("health")),
         cell(n.get("position")), cell(n.get("lag")),
         "" if n.get("last_seen") is None else f"{n['last_seen']:.1f}s ago",
         "yes" if n.get("relay") else "", cell(n.get("balancer")),
         "; ".join(f"{k}: {v}" for k, v in (n.get("errors") or {}).items())]
        for n in items
    ]
    return [*aligned(NODE_COLUMNS, rows), "(* the node that answered)"]


def changes(items: list[dict[str, Any]]) -> list[str]:
    rows = [
        [cell(c.get("id")), cell(c.get("state")), cell(c.get("command")), cell(c.get("origin")),
         cell(c.get("requested")), " ".join(sorted(c.get("applied") or {})),
         " ".join(sorted(c.get("failed") or {})),
         " ".join([*(c.get("skipped") or []), *(c.get("waiting") or [])]),
         cell(c.get("message"))]
        for c in items
    ]
    return aligned(CHANGE_COLUMNS, rows)


def error_pages(pages: dict[str, Any]) -> list[str]:
    return aligned(("PAGE", "BODY"), [[k, json.dumps(v, ensure_ascii=False)]
                                       for k, v in pages.items()])


def _point(point: dict[str, Any]) -> str:
    return f"position {point.get('position')}, version {point.get('version')}, " \
           f"{point.get('time') or 'no event yet'}"


def state(answer: dict[str, Any]) -> list[str]:
    """GET /state: the point, then every collection as its own table."""
    config = answer.get("state", {})
    lines = [f"at {_point(answer.get('point', {}))}"]
    for name in ("services", "routes", "certs", "vips"):
        items = config.get(name) or []
        lines += ["", f"{name.upper()}:", *(LISTS[name](items) if items else [f"(no {name})"])]
    return [*lines, "", "ERRORS:", *error_pages(config.get("errors") or {})]


def diff(answer: dict[str, Any]) -> list[str]:
    """GET /state/diff: + added, - removed, ~ changed (field: before -> after)."""
    lines = [f"from {_point(answer.get('from', {}))}", f"to   {_point(answer.get('to', {}))}"]
    for name, change in (answer.get("changes") or {}).items():
        if name == "errors":
            if change:
                lines.append(f"~ errors {cell(change['before'])} -> {cell(change['after'])}")
            continue
        singular = name.rstrip("s")
        lines += [f"+ {singular} {_label(item)}" for item in change["added"]]
        lines += [f"- {singular} {_label(item)}" for item in change["removed"]]
        for item in change["changed"]:
            fields = [f"{k}: {cell(v)} -> {cell(item['after'].get(k))}"
                      for k, v in item["before"].items() if item["after"].get(k) != v]
            lines.append(f"~ {singular} {item['id']} ({'; '.join(fields)})")
        if change["reordered"]:
            lines.append(f"~ {name} reordered")
    return lines if len(lines) > 2 else [*lines, "(no changes)"]


def _label(item: dict[str, Any]) -> str:
    if "cert" in item:
        row = _cert_row(item)
        return f"{row[0]} {row[-1]}"  # common name, fingerprint
    if "path" in item and "domain" in item:
        host = ".".join(p for p in (item.get("subdomain"), item.get("domain")) if p)
        return f"{host}{item.get('path') or ''}" or "/"
    return str(item.get("id") or item.get("ip"))


LISTS: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "services": services, "servers": servers, "routes": routes, "certs": certs, "vips": vips,
    "events": events, "nodes": nodes, "changes": changes,
}
# A command that answers one object is shown as a list of one.
SINGLE = {"service": "services", "server": "servers", "route": "routes", "cert": "certs",
          "vip": "vips"}


def render(kind: str, data: Any) -> str:
    """The table for an answer of `kind` (what the command asked for)."""
    if isinstance(data, dict) and set(data) == {"msg"}:
        return str(data["msg"])
    if kind == "errors" and isinstance(data, dict):
        return "\n".join(error_pages(data))
    if kind in ("state", "diff") and isinstance(data, dict) and "error" not in data:
        return "\n".join(state(data) if kind == "state" else diff(data))
    name = SINGLE.get(kind, kind)
    renderer = LISTS.get(name)
    if renderer is None or not isinstance(data, (list, dict, type(None))):
        return json.dumps(data, ensure_ascii=False)  # nothing to tabulate: the answer itself
    items = [data] if isinstance(data, dict) else data or []
    if not items:
        return f"(no {name})"
    return "\n".join(renderer(items))
