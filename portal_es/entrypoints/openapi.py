"""The OpenAPI 3.1 document of the REST API (served at /openapi.json).

Hand-written from plain dicts: the wire shape is Portal's (key names, `targets: null`, omitted
empty fields), not what pydantic would generate from the models. Output schemas are closed
(`additionalProperties: false`) and describe exactly what the API sends; input schemas describe
what it accepts: unknown keys are ignored, null means "not given" (as Go's decoder did), and
key names match case-insensitively (not expressible in JSON Schema; documented here).

The repetitive parts come from small tables: FIELDS (per object, the output and the input
schema of each field) and `_operations()` (per path and method: body, success and error
statuses); the statuses every operation shares are added by `operation()`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple

from portal_es.domain import models as m

Schema = dict[str, Any]

MAX_BODY = 1024 * 1024  # the API's limit (api.MAX_BODY; not imported: api imports this module)
MAX_POSITION = 2**63 - 1  # a log position is a signed 64-bit integer in every store


def _package_version() -> str:
    try:
        return version("portal-es")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


# --- building blocks ------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """An optional input field: null is taken as "not given"."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if "null" in types:
        return schema
    out = {**schema, "type": [*types, "null"]}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def array(items: Schema, *, null: bool = False, min_items: int = 0) -> Schema:
    out: Schema = {"type": ["array", "null"] if null else "array", "items": items}
    if min_items:
        out["minItems"] = min_items
    return out


STRING: Schema = {"type": "string"}
PORT: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
COUNT: Schema = {"type": "integer", "minimum": 0}
POSITIVE: Schema = {"type": "integer", "minimum": 1}
IP: Schema = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
IP_OR_EMPTY: Schema = {"type": "string", "anyOf": [*IP["anyOf"], {"maxLength": 0}]}
# The same regular expressions the models validate with (ECMA-compatible as written).
HOSTNAME: Schema = {"type": "string", "pattern": f"^$|{m._HOSTNAME.pattern}"}
IFNAME: Schema = {"type": "string", "pattern": f"^$|{m._IFNAME.pattern}"}
ALIAS: Schema = {"type": "string", "pattern": f"^$|{m._ALIAS.pattern}"}
CIDR = r"^[0-9A-Fa-f:.]+/[0-9.]+$"  # address/prefix; the prefix may be a dotted mask
TARGET: Schema = {"type": "string", "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f]+$"}
URL_PATH: Schema = {"type": "string", "pattern": r"^$|^/\S*$"}
HTTP_STATUS: Schema = {"type": "integer", "minimum": 100, "maximum": 599}


def enum(values: tuple[str, ...], *, empty: bool = False) -> Schema:
    return {"type": "string", "enum": [*values, ""] if empty else list(values)}


# --- objects: (field, output schema, input schema, description) ---------------------------
# Output: every field is sent unless listed in OPTIONAL_OUT. Input: REQUIRED_IN are required,
# the others are optional and nullable. An input schema of None: the field is computed and
# ignored on input.

FIELDS: dict[str, list[tuple[str, Schema, Schema | None, str]]] = {
    "Service": [
        ("id", STRING, None,
         "`type-host-port`, dots in host replaced by `_` (e.g. `tcp-192_168_0_15-80`)"),
        ("host", STRING, IP_OR_EMPTY,
         "virtual address; when `interface` is set, that interface's address"),
        ("interface", {"type": "string", "minLength": 1}, IFNAME,
         "take the address of this interface (omitted on output when empty)"),
        ("port", PORT, PORT, "virtual port"),
        ("type", enum(m.PROTOCOLS), enum(m.PROTOCOLS, empty=True),
         f"protocol; empty means `{m.DEFAULT_PROTOCOL}`; other values: 400 "
         "`Unsupported Protocol - '<type>'`"),
        ("scheduler", enum(m.SCHEDULERS), enum(m.SCHEDULERS, empty=True),
         f"IPVS scheduler; empty means `{m.DEFAULT_SCHEDULER}`"),
        ("persistence", COUNT, COUNT, "seconds of client affinity, 0 = off"),
        ("netmask", STRING, STRING,
         "affinity granularity: a dotted mask or a prefix length (sent back as a dotted mask)"),
        ("servers", array(ref("Server"), min_items=1), array(ref("ServerInput"), null=True),
         "real servers (omitted on output when there are none)"),
    ],
    "Server": [
        ("id", STRING, None, "`host-port`, dots replaced by `_` (e.g. `192_168_0_1-8080`)"),
        ("host", STRING, IP, "real server address; `127.0.0.1` means the service's own host"),
        ("port", PORT, PORT, "real server port"),
        ("forwarder", enum(m.FORWARDERS), enum(m.FORWARDERS, empty=True),
         "g = direct routing, i = ip-in-ip, m = masquerade (NAT); empty means "
         f"`{m.DEFAULT_FORWARDER}`"),
        ("weight", COUNT, COUNT, f"scheduling weight (default {m.DEFAULT_WEIGHT})"),
        ("upper_threshold", COUNT, COUNT, "stop sending new connections above this, 0 = none"),
        ("lower_threshold", COUNT, COUNT,
         "resume below this; at most upper_threshold when that is set"),
    ],
    "Route": [
        ("subdomain", STRING, HOSTNAME, "matched by prefix (lower-cased)"),
        ("domain", STRING, HOSTNAME, "matched exactly (lower-cased)"),
        ("path", STRING, URL_PATH, "empty: all paths; a trailing `/` or `*`: a prefix"),
        ("targets", array(STRING, null=True, min_items=1), array(TARGET, null=True),
         "http(s) URLs to proxy to, round robin; null when there are none"),
        ("fwdpath", STRING, URL_PATH, "replaces the matched path prefix upstream"),
        ("page", STRING, STRING, "a static answer (beats targets)"),
        ("endpoint", STRING, URL_PATH, "health check path; empty: no health checks"),
        ("expected_code", HTTP_STATUS,
         {"type": "integer", "anyOf": [{"minimum": 100, "maximum": 599}, {"const": 0}]},
         f"healthy status (0 means {m.DEFAULT_EXPECTED_CODE})"),
        ("expected_body", STRING, STRING, "healthy body"),
        ("expected_header", STRING, {"type": "string", "pattern": "^$|:"},
         "healthy header, `Field:value`"),
        ("host", STRING, HOSTNAME, "Host header of the health checks"),
        ("timeout", POSITIVE, COUNT,
         f"health check timeout in ms (0 means {m.DEFAULT_HEALTH_TIMEOUT_MS})"),
        ("attempts", POSITIVE, COUNT,
         f"health check attempts (0 means {m.DEFAULT_HEALTH_ATTEMPTS})"),
    ],
    "CertBundle": [
        ("cert", STRING, STRING, "PEM certificate chain, leaf first"),
        ("key", STRING, STRING, "PEM private key of the leaf (unencrypted)"),
    ],
    "Vip": [
        ("ip", STRING, {"type": "string", "anyOf": [*IP["anyOf"], {"pattern": CIDR}]},
         "an address, or address/prefix"),
        ("interface", STRING, IFNAME, "interface to add the address to"),
        ("alias", STRING, ALIAS, "address label; must start with the interface's name"),
    ],
    "ErrorPages": [
        ("no-routes", STRING, STRING, "body of the proxy's 502 when no route matches"),
        ("no-healthy", STRING, STRING, "body of the proxy's 502 when no target is healthy"),
    ],
}
OPTIONAL_OUT = {"Service": {"interface", "servers"}}
REQUIRED_IN = {
    "Service": ["port"],
    "Server": ["host", "port"],
    "CertBundle": ["cert", "key"],
    "Vip": ["ip"],
}
DESCRIPTIONS = {
    "Service": "A virtual service (IPVS virtual server) balanced over its servers.",
    "Server": "A real server behind a service.",
    "Route": "An HTTP(S) proxy route; identity: (subdomain, domain, path).",
    "CertBundle": "A TLS certificate and its key (PEM); identity: the certificate.",
    "Vip": "A virtual IP a node adds to an interface and announces by ARP.",
    "ErrorPages": "Bodies of the proxy's own 502 answers.",
}
INPUT_NOTE = (
    " As input: keys match case-insensitively, unknown keys are ignored, null means not "
    "given; a value of the wrong JSON type (also a number with a fraction, like 1.0, where "
    "an integer is expected) is 400 `Bad JSON syntax received in body`."
)


ROUTE_KEY = ("subdomain", "domain", "path")
FIELDS_BY_NAME = {name: {f: s for f, _, s, _ in fields if s} for name, fields in FIELDS.items()}


def output_schema(name: str) -> Schema:
    fields = FIELDS[name]
    optional = OPTIONAL_OUT.get(name, set())
    return {
        "type": "object",
        "description": DESCRIPTIONS[name],
        "properties": {f: {**out, "description": d} for f, out, _, d in fields},
        "required": [f for f, _, _, _ in fields if f not in optional],
        "additionalProperties": False,
    }


def input_schema(name: str) -> Schema:
    required = REQUIRED_IN.get(name, [])
    properties: dict[str, Schema] = {}
    for field, _, schema, description in FIELDS[name]:
        if schema is None:
            properties[field] = {**nullable(STRING),
                                 "description": f"ignored: computed by the server, {description}"}
        else:
            schema = schema if field in required else nullable(schema)
            properties[field] = {**schema, "description": description}
    out: Schema = {"type": "object", "description": DESCRIPTIONS[name] + INPUT_NOTE,
                   "properties": properties}
    if required:
        out["required"] = required
    return out


def _service_input() -> Schema:
    out = input_schema("Service")
    out["description"] += " Give `host` or `interface` (an interface's address wins)."
    out["anyOf"] = [
        {"required": ["host"], "properties": {"host": IP}},
        {"required": ["interface"], "properties": {"interface": {**IFNAME, "minLength": 1}}},
    ]
    return out


def schemas() -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for name in FIELDS:
        out[name] = output_schema(name)
        out[name + "Input"] = _service_input() if name == "Service" else input_schema(name)
    out["RouteKey"] = {
        "type": "object",
        "description": "The route to remove, by its identity; other route fields are ignored."
        + INPUT_NOTE,
        "properties": {k: nullable(FIELDS_BY_NAME["Route"][k]) for k in ROUTE_KEY},
    }
    out["CertRef"] = {
        "type": "object",
        "description": "The cert bundle to remove, by its certificate; `key` is ignored.",
        "properties": {"cert": {**STRING, "description": "PEM certificate chain, leaf first"}},
        "required": ["cert"],
    }
    out["Error"] = {
        "type": "object",
        "properties": {"error": STRING},
        "required": ["error"],
        "additionalProperties": False,
    }
    out["Success"] = {
        "type": "object",
        "properties": {"msg": {"const": "Success"}},
        "required": ["msg"],
        "additionalProperties": False,
    }
    out["Event"] = {
        "type": "object",
        "description": "One change in the audit log (private keys redacted).",
        "properties": {
            "position": {**POSITIVE, "description": "position in the log (a cursor)"},
            "version": {**POSITIVE, "description": "configuration version after this event"},
            "time": {"type": "string", "format": "date-time"},
            "type": {**STRING, "description": "event type, e.g. `ServiceAdded`"},
            "actor": {**STRING, "description": "`token:<hash prefix>`, `anonymous`, `system`"},
            "request_id": {**STRING, "description": "X-Request-Id of the change"},
            "data": {"type": "object", "description": "the event's fields"},
        },
        "required": ["position", "version", "time", "type", "actor", "request_id", "data"],
        "additionalProperties": False,
    }
    out["EventPage"] = {
        "type": "object",
        "properties": {
            "events": array(ref("Event")),
            "next": {"type": ["integer", "null"], "minimum": 1,
                     "description": "pass as `since` for the next page; null at the end"},
        },
        "required": ["events", "next"],
        "additionalProperties": False,
    }
    return out


# --- responses and parameters ---------------------------------------------------------------

ERRORS = {
    "202": "Saved, but not applied on the node within the deadline: it will be, or it will be "
           "rolled back (the body says which version)",
    "400": "Bad input: invalid JSON or a value of the wrong type (`Bad JSON syntax received in "
           "body`), a missing field, or a bad value (the message names the field)",
    "401": "Missing or wrong X-AUTH-TOKEN (only when the server has an api-token)",
    "412": "If-Match names a version that is no longer current",
    "413": f"Body larger than {MAX_BODY} bytes",
    "500": "The node failed to apply the change, and it was rolled back; or an internal error "
           "(the message names the request id)",
}


def error(description: str) -> Schema:
    return {"description": description,
            "content": {"application/json": {"schema": ref("Error")}}}


# Request examples (Portal's documented curl session), by input schema name.
EXAMPLES: dict[str, Any] = {
    "ServiceInput": {"host": "127.0.0.3", "port": 1234, "type": "tcp", "scheduler": "rr",
                     "persistence": 0, "netmask": ""},
    "ServerInput": {"host": "192.168.0.1", "port": 8080, "forwarder": "m", "weight": 5,
                    "upper_threshold": 10, "lower_threshold": 1},
    "RouteInput": {"domain": "portal.test", "page": "portal works\n"},
    "RouteKey": {"domain": "portal.test"},
    "VipInput": {"ip": "192.168.0.100/24", "interface": "eth0", "alias": "eth0:1"},
    "ErrorPagesInput": {"no-routes": "NoRoutes", "no-healthy": "NoHealthy"},
}


def body_example(schema: Schema) -> Any:
    """The example of a body schema: a $ref to an input, or a list of them."""
    if "$ref" in schema:
        return EXAMPLES.get(schema["$ref"].rsplit("/", 1)[1])
    if "items" in schema:
        item = body_example(schema["items"])
        return None if item is None else [item]
    return None


def ok(schema: Schema, description: str = "OK", *, etag: bool = True) -> Schema:
    out: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if etag:
        out["headers"] = {"ETag": {"$ref": "#/components/headers/ETag"}}
    return out


def path_param(name: str, description: str, example: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}, "example": example}


def query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


SERVICE_ID = path_param("service_id", "a service id", "tcp-127_0_0_3-1234")
SERVER_ID = path_param("server_id", "a server id", "192_168_0_1-8080")
IF_MATCH = {"$ref": "#/components/parameters/IfMatch"}


def or_empty(schema: Schema) -> Schema:
    """A query parameter that may also be given empty, meaning "not given"."""
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


POSITION: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_POSITION}
TIME: Schema = {"type": "string", "format": "date-time"}
EVENT_QUERY = [
    query("since", or_empty(POSITION), "events after this position (exclusive)"),
    query("until", or_empty(POSITION), "events up to this position (inclusive)"),
    query("since_time", or_empty(TIME),
          "events after this time (ISO 8601; UTC when no offset is given)"),
    query("until_time", or_empty(TIME), "events up to this time (inclusive)"),
    query("entity", STRING, "events concerning this object id (service, server, route "
          "subdomain/domain/path, cert fingerprint, vip address or alias)"),
    query("type", STRING, "events of this type, e.g. `ServiceAdded`"),
    query("limit", or_empty({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
          "page size (default 100)"),
]
ROUTE_QUERY = [
    query(k, FIELDS_BY_NAME["Route"][k], f"the route's {k} (when there is no body)")
    for k in ROUTE_KEY
]


# --- the operations -------------------------------------------------------------------------
# Writes (POST/PUT/DELETE) also take If-Match and may answer 202/412/500; every operation may
# answer 401, every one with a body 400 and 413.


class Op(NamedTuple):
    path: str
    method: str
    summary: str
    body: Schema | None  # the request body's schema
    success: Schema  # the 200 response
    errors: dict[str, str]  # status -> description, beyond the ones every operation has
    params: list[Schema]


def _operations() -> list[Op]:
    def lst(name: str) -> Schema:
        return array(ref(name))

    def put_list(name: str) -> Schema:
        return array(ref(name + "Input"), null=True)

    success = ok(ref("Success"), "`{\"msg\":\"Success\"}`, also when there was nothing to remove")
    bad = {"400": ERRORS["400"]}
    svc_404 = {"404": "`No Service Found`"}
    svc_bad = {"400": ERRORS["400"] + "; `Socket in use: '<host>:<port>'` for the API's or a "
               "proxy's socket; `Unsupported Protocol - '<type>'`"}
    ops = [
        ("/services", "get", "List the services", None, ok(lst("Service")), {}, []),
        ("/services", "post", "Add a service (an existing id: unchanged, 200)",
         ref("ServiceInput"), ok(ref("Service")), svc_bad, []),
        ("/services", "put", "Replace all services (dedup by id, last wins; [] or null clears)",
         put_list("Service"), ok(lst("Service")), svc_bad, []),
        ("/services/{service_id}", "get", "Get a service", None, ok(ref("Service")),
         svc_404, [SERVICE_ID]),
        ("/services/{service_id}", "put", "Replace a service (its id may change)",
         ref("ServiceInput"), ok(ref("Service")),
         {**svc_bad, **svc_404, "409": "another service already has the new id"},
         [SERVICE_ID]),
        ("/services/{service_id}", "delete", "Remove a service", None, success, {},
         [SERVICE_ID]),
        ("/services/{service_id}/servers", "get", "List a service's servers", None,
         ok(lst("Server")), svc_404, [SERVICE_ID]),
        ("/services/{service_id}/servers", "post",
         "Add a server (an existing id: unchanged, 200)", ref("ServerInput"),
         ok(ref("Server")), {**bad, **svc_404}, [SERVICE_ID]),
        ("/services/{service_id}/servers", "put", "Replace a service's servers (order kept)",
         put_list("Server"), ok(lst("Server")), {**bad, **svc_404}, [SERVICE_ID]),
        ("/services/{service_id}/servers/{server_id}", "get", "Get a server", None,
         ok(ref("Server")), {"404": "`No Service Found` or `No Server Found`"},
         [SERVICE_ID, SERVER_ID]),
        ("/services/{service_id}/servers/{server_id}", "delete", "Remove a server", None,
         success, {}, [SERVICE_ID, SERVER_ID]),
        ("/routes", "get", "List the routes", None, ok(lst("Route")), {}, []),
        ("/routes", "post", "Add or update a route (by subdomain, domain, path)",
         ref("RouteInput"), ok(ref("Route")), bad, []),
        ("/routes", "put", "Replace all routes", put_list("Route"), ok(lst("Route")), bad, []),
        ("/routes", "delete", "Remove a route, given in the body or else by the query",
         ref("RouteKey"), success,
         {"400": ERRORS["400"] + "; a route given in both the body and the query"},
         ROUTE_QUERY),
        ("/certs", "get", "List the cert bundles", None, ok(lst("CertBundle")), {}, []),
        ("/certs", "post", "Add a cert bundle (invalid PEM or a key that does not match: 400)",
         ref("CertBundleInput"), ok(ref("CertBundle")), bad, []),
        ("/certs", "put", "Replace all cert bundles", put_list("CertBundle"),
         ok(lst("CertBundle")), bad, []),
        ("/certs", "delete", "Remove a cert bundle", ref("CertRef"), success, bad, []),
        ("/vips", "get", "List the vips", None, ok(lst("Vip")), {}, []),
        ("/vips", "post", "Add a vip", ref("VipInput"), ok(ref("Vip")),
         {**bad, "409": "`Ip or alias already in use`"}, []),
        ("/vips", "put", "Replace all vips", put_list("Vip"), ok(lst("Vip")),
         {**bad, "409": "`Ip or alias already in use`"}, []),
        ("/vips", "delete", "Remove a vip (by address)", ref("VipInput"), success, bad, []),
        ("/errors", "get", "Get the proxy's error pages", None, ok(ref("ErrorPages")), {}, []),
        ("/errors", "put", "Set the proxy's error pages", ref("ErrorPagesInput"),
         ok(ref("ErrorPages")), bad, []),
        ("/events", "get", "Read the audit log, oldest first, one page at a time", None,
         ok(ref("EventPage"), etag=False), {"400": "a bad query parameter"}, EVENT_QUERY),
    ]
    return [Op(*op) for op in ops]


TAGS = {
    "/services": "services", "/routes": "routes", "/certs": "certs", "/vips": "vips",
    "/errors": "errors", "/events": "audit",
}


def operation(path: str, method: str, summary: str, body: Schema | None, success: Schema,
              errors: dict[str, str], params: list[Schema]) -> Schema:
    write = method != "get"
    op: Schema = {
        "operationId": f"{method}{path.replace('/', '_').replace('{', '').replace('}', '')}",
        "summary": summary,
        "tags": [next(t for p, t in TAGS.items() if path.startswith(p))],
    }
    parameters = [*params, IF_MATCH] if write else params
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        media: Schema = {"schema": body}
        example = body_example(body)
        if example is not None:
            media["example"] = example
        op["requestBody"] = {
            "required": path != "/routes",  # DELETE /routes: the body or the query
            "content": {"application/json": media},
        }
    responses: dict[str, Schema] = {"200": success}
    statuses = dict(errors)
    statuses["401"] = ERRORS["401"]
    if body is not None:
        statuses.setdefault("400", ERRORS["400"])
        statuses["413"] = ERRORS["413"]
    if write:
        statuses.setdefault("400", "a bad If-Match header")
        statuses.update({s: ERRORS[s] for s in ("202", "412", "500")})
    for status in sorted(statuses):
        responses[status] = error(statuses[status])
    op["responses"] = responses
    return op


def paths() -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for op in _operations():
        out.setdefault(op.path, {})[op.method] = operation(*op)
    out["/openapi.json"] = {"get": {
        "operationId": "get_openapi",
        "summary": "This document (no token needed)",
        "tags": ["meta"],
        "security": [],
        "responses": {"200": ok({"type": "object"}, etag=False)},
    }}
    return out


DESCRIPTION = """\
Portal's REST API (nanopack/portal), served by portal-es, the event-sourced rebuild.

Every answer is compact JSON; every error is `{"error": "<message>"}`. Reads and writes answer
with the configuration version as `ETag: "<version>"`; a write with `If-Match: "<version>"` is
refused with 412 unless that version is still current (`*` or no If-Match: unconditional).

Authentication: when the server has an api-token, every request except this document needs it
in the `X-AUTH-TOKEN` header, or else as the query (or form) value `X-AUTH-TOKEN`; otherwise
401. A server without a token needs none.
"""


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "portal-es",
            "version": _package_version(),
            "description": DESCRIPTION,
            "license": {"name": "MPL-2.0", "identifier": "MPL-2.0"},
        },
        "tags": [{"name": t} for t in (*TAGS.values(), "meta")],
        # Either scheme, or none when the server runs without a token.
        "security": [{"tokenHeader": []}, {"tokenQuery": []}, {}],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "tokenHeader": {"type": "apiKey", "in": "header", "name": "X-AUTH-TOKEN"},
                "tokenQuery": {"type": "apiKey", "in": "query", "name": "X-AUTH-TOKEN"},
            },
            "headers": {
                "ETag": {
                    "description": "the configuration version, as `\"<version>\"`",
                    "required": True,
                    "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
                },
            },
            "parameters": {
                "IfMatch": {
                    "name": "If-Match",
                    "in": "header",
                    "required": False,
                    "description": "apply only if the configuration is still at this version "
                                   "(an ETag this API sent, `W/` allowed), or `*`",
                    "schema": {"type": "string", "pattern": '^(\\*|(W/)?"[0-9]+")$'},
                },
            },
        },
    }
