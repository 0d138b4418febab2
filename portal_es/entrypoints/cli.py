"""The `portal-es` command line: Portal's client commands, the server, the store's migrations.

Portal (cobra) had persistent flags: -i -t -H -P -c worked before and after the subcommand.
Click has no such thing, so those options are declared on the root and again on every
command, and a command's own value wins over the root's. Only options placed before the
subcommand belong to the root: that keeps the root's -s (--server) apart from add-service's
-s (--service-scheduler), and the global -i/-t/-c apart from the commands' -I/-T/-C.

Options and commands are small tables (Opt, ClientCommand). typer reads a command's options
from its function's signature, so `typer_command` builds that signature from a table.
"""

from __future__ import annotations

import enum
import inspect
import json
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from portal_es.config import FIELDS, ConfigError, Settings, load_settings
from portal_es.entrypoints.client import (
    CLIENT_KEYS,
    NO_BODY,
    Answer,
    ClientError,
    PortalClient,
    error_text,
    load_client_settings,
    path,
)

Values = Mapping[str, Any]
# Annotated built at run time from a table: typed as Any so mypy does not read it as a type.
_ANNOTATED: Any = Annotated
METAVARS: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "SECONDS"}


class BadInput(ValueError):
    """Command line input that cannot be sent; exit 2, nothing sent."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag

    def usage_error(self, ctx: typer.Context) -> typer.BadParameter:
        return typer.BadParameter(str(self), ctx=ctx, param_hint=self.flag)


class Output(enum.StrEnum):
    json = "json"
    table = "table"


@dataclass(frozen=True)
class Opt:
    """One command line option, and the request body field it fills (if any)."""

    name: str  # the parameter's name: the key in a command's values
    decls: tuple[str, ...]  # ("--service-host", "-O")
    help: str
    type: Any = str
    key: str | None = None  # the JSON field it sets in a request body
    default: Any = None  # used when not given (None: left to the API); shown in --help
    metavar: str | None = None
    from_file: bool = False  # "@path" reads the value from a file
    minimum: int | None = None
    positional: bool = False  # an argument (`diff A B`), not an option; decls[0] names it

    @property
    def hint(self) -> str:
        return f"'{self.decls[0]}'"

    def parameter(self) -> inspect.Parameter:
        # The parameter's own default stays None, so "not given" is told apart from a value
        # (env and config file fill what flags left out); the real default is shown instead.
        hidden = self.default is None or self.default == "" or self.default is False
        shown = "" if hidden else f" [default: {self.default}]"
        option = typer.Argument(
            help=self.help, metavar=self.decls[0], show_default=False,
        ) if self.positional else typer.Option(
            *self.decls, help=self.help + shown, min=self.minimum,
            metavar=self.metavar or METAVARS.get(self.type),
        )
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=_ANNOTATED[self.type | None, option],
        )


Runner = Callable[[typer.Context, Values], None]


def typer_command(opts: Sequence[Opt], run: Runner) -> Callable[..., None]:
    """A function whose signature makes typer declare `opts`; it calls run(ctx, values)."""

    def command(ctx: typer.Context, **values: Any) -> None:
        run(ctx, values)

    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *(opt.parameter() for opt in opts),
    ]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


# --- global (persistent) options -----------------------------------------------------------

INSECURE = Opt("insecure", ("--insecure", "-i"),
               "Plain HTTP (else HTTPS without certificate checks, as Portal's client)", bool)
API_TOKEN = Opt("api_token", ("--api-token", "-t"), "Token for API access")
API_HOST = Opt("api_host", ("--api-host", "-H"), "Address of the API", default="127.0.0.1")
API_PORT = Opt("api_port", ("--api-port", "-P"), "Port of the API", int, default=8443)
CONF = Opt("conf", ("--conf", "-c"),
           "Config file (JSON, YAML or TOML; keys are the long flag names)", metavar="FILE")
OUTPUT = Opt("output", ("--output",), "json: the API's answer as is; table: for people",
             Output, default=Output.json.value, metavar="[json|table]")
GLOBAL = (INSECURE, API_TOKEN, API_HOST, API_PORT, CONF, OUTPUT)

# --- server settings, one option per Settings field ----------------------------------------

SHORT = {"api-host": "-H", "api-port": "-P", "api-token": "-t", "insecure": "-i"}


def setting_opt(key: str) -> Opt:
    field = Settings.model_fields[FIELDS[key]]
    decls = (f"--{key}", SHORT[key]) if key in SHORT else (f"--{key}",)
    return Opt(FIELDS[key], decls, field.description or "", field.annotation,
               default=field.get_default(call_default_factory=True))


SETTINGS = tuple(setting_opt(key) for key in FIELDS)
SERVER_ONLY = tuple(o for o in SETTINGS if o.name not in {g.name for g in GLOBAL})
SERVER = Opt("server", ("--server", "-s"), "Run the server (as `portal-es serve`)", bool)
VERSION = Opt("version", ("--version",), "Print the version and exit", bool)

# --- the objects' options (Portal's flags) -------------------------------------------------

SERVICE_ID = Opt("service_id", ("--service-id", "-I"),
                 "Id of the service (else computed from -O, -R and -T)")
SERVICE_HOST = Opt("service_host", ("--service-host", "-O"), "Host of the service", key="host")
SERVICE_PORT = Opt("service_port", ("--service-port", "-R"), "Port of the service", int,
                   key="port")
SERVICE_TYPE = Opt("service_type", ("--service-type", "-T"), "Type of service [tcp udp]",
                   key="type", default="tcp")
SERVICE_REF = (SERVICE_ID, SERVICE_HOST, SERVICE_PORT, SERVICE_TYPE)
SERVICE = (
    *SERVICE_REF,
    Opt("service_interface", ("--service-interface", "-F"),
        "Interface whose address the service takes", key="interface"),
    Opt("service_scheduler", ("--service-scheduler", "-s"),
        "Scheduler [rr wrr lc wlc lblc lblcr dh sh sed nq]", key="scheduler", default="wlc"),
    Opt("service_persistence", ("--service-persistence", "-e"),
        "Seconds a client sticks to the same server (0: off)", int, key="persistence",
        default=0),
    Opt("service_netmask", ("--service-netmask", "-n"), "Netmask to group clients by",
        key="netmask", default=""),
)
SERVER_REF = (
    Opt("server_id", ("--server-id", "-S"), "Id of the server (else computed from -o and -p)"),
    Opt("server_host", ("--server-host", "-o"), "Host of the server", key="host"),
    Opt("server_port", ("--server-port", "-p"), "Port of the server", int, key="port"),
)
SERVER_FIELDS = (
    *SERVER_REF,
    Opt("server_forwarder", ("--server-forwarder", "-f"), "Forwarder method [g i m]",
        key="forwarder", default="g"),
    Opt("server_weight", ("--server-weight", "-w"), "Weight of the server", int, key="weight",
        default=1),
    Opt("server_upper_threshold", ("--server-upper-threshold", "-u"),
        "No new connections above this many (0: no limit)", int, key="upper_threshold",
        default=0),
    Opt("server_lower_threshold", ("--server-lower-threshold", "-l"),
        "Resume new connections below this many", int, key="lower_threshold", default=0),
)
ROUTE = (
    Opt("subdomain", ("--subdomain", "-s"), "Subdomain to match by", key="subdomain"),
    Opt("domain", ("--domain", "-d"), "Domain to match by", key="domain"),
    Opt("path", ("--path", "-p"), "Path to match by", key="path"),
    Opt("targets", ("--targets",), "Target URL (repeat the flag for several)", list[str],
        key="targets", metavar="URL"),
    Opt("fwdpath", ("--fwdpath",), "Path the matched path prefix is replaced by", key="fwdpath"),
    Opt("page", ("--page",), "Static page to answer with (instead of targets)", key="page",
        from_file=True),
    Opt("endpoint", ("--endpoint",), "Health check path on each target", key="endpoint"),
    Opt("expected_code", ("--expected-code",), "Healthy status code (200)", int,
        key="expected_code"),
    Opt("expected_body", ("--expected-body",), "Healthy body", key="expected_body"),
    Opt("expected_header", ("--expected-header",), "Healthy header 'Field:value'",
        key="expected_header"),
    Opt("host", ("--host",), "Host header of the health checks", key="host"),
    Opt("timeout", ("--timeout",), "Health check timeout in ms (3000)", int, key="timeout"),
    Opt("attempts", ("--attempts",), "Failed checks before unhealthy (3)", int, key="attempts"),
)
CERT = (
    Opt("key", ("--key", "-k"), "PEM private key, or @file", key="key", from_file=True),
    Opt("cert", ("--cert", "-C"), "PEM certificate (chain), or @file", key="cert",
        from_file=True),
)
VIP = (
    Opt("ip", ("--ip", "-I"), "Address to add (ip or ip/prefix)", key="ip"),
    Opt("interface", ("--interface", "-F"), "Interface to add it on", key="interface"),
    Opt("alias", ("--alias", "-A"), "Label of the address (starts with the interface name)",
        key="alias"),
)
JSON = Opt("json", ("--json", "-j"), "JSON (or @file), merged over the flags", metavar="JSON")
JSON_LIST = Opt("json", ("--json", "-j"), "JSON array (or @file) of the whole new list",
                metavar="JSON")
JSON_PAGES = Opt("json", ("--json", "-j"), 'JSON object {"no-routes": ..., "no-healthy": ...}',
                 metavar="JSON")
EVENTS = (
    Opt("since", ("--since",), "Only after this position", int, minimum=0),
    Opt("until", ("--until",), "Only up to this position", int, minimum=0),
    Opt("since_time", ("--since-time",), "Only after this time (ISO 8601)", metavar="TIME"),
    Opt("until_time", ("--until-time",), "Only up to this time (ISO 8601)", metavar="TIME"),
    Opt("entity", ("--entity",), "Only events about this id (service, server, domain, vip...)"),
    Opt("type", ("--type",), "Only events of this type (e.g. ServiceAdded)"),
    Opt("limit", ("--limit",), "At most this many events (else all of them)", int, minimum=1),
    Opt("page_size", ("--page-size",), "Events per request", int, default=1000, minimum=1),
)
# A point of the log: a position (as `events` shows them) or an ISO 8601 time (the last event
# at or before it).
AT = Opt("at", ("--at",), "A point of the log: position (as in `events`) or ISO 8601 time",
         metavar="POINT")
REASON = Opt("reason", ("--reason",), "Why: recorded with the restore, shown by `events`")
POINT_A = Opt("a", ("A",), "The earlier point: log position or ISO 8601 time", positional=True)
POINT_B = Opt("b", ("B",), "The later point (else now)", positional=True)


def _state_query(values: Values) -> str:
    at = values.get("at")
    return "" if at is None else "?" + urllib.parse.urlencode({"at": at})


def _diff_query(values: Values) -> str:
    if not values.get("a"):
        raise BadInput("'A'", "required: the earlier point (log position or ISO 8601 time)")
    query = {"from": values.get("a"), "to": values.get("b")}
    return "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})


# The cluster's changes (cluster mode): one by id, or the latest, newest first.
CHANGE_ID = Opt("change_id", ("--id",), "One change (the id in a 202's Location: /changes/ID)")
CHANGE_STATE = Opt("state", ("--state",),
                   "Only changes in this state [requested committed compensated timed_out]")
CHANGE_LIMIT = Opt("limit", ("--limit",), "At most this many changes (default 100, max 1000)",
                   int, minimum=1)


def _changes_path(values: Values) -> str:
    if values.get("change_id"):
        return path("changes", str(values["change_id"]))
    query = {k: values.get(k) for k in ("state", "limit") if values.get(k) is not None}
    return "/changes" + ("?" + urllib.parse.urlencode(query) if query else "")


def _restore_body(values: Values) -> dict[str, Any]:
    if not values.get("at"):
        raise BadInput("'--at'", "required: the point of the log to restore")
    return {"at": values["at"], "reason": values.get("reason") or ""}


# --- turning values into a request ---------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One API request, and what its answer holds (for --output table)."""

    method: str
    path: str
    kind: str
    body: Any = NO_BODY


def _read_at(value: str, flag: str) -> str:
    """'@file' -> the file's text (PEM and JSON never start with '@')."""
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text()
    except OSError as e:
        raise BadInput(flag, f"cannot read '{value[1:]}': {e.strerror}") from None


def _parse_json(values: Values) -> Any:
    text = values.get("json")
    if text is None:
        return None
    text = _read_at(text, "'-j'")
    try:
        return json.loads(text)
    except ValueError as e:
        raise BadInput("'-j'", f"not valid JSON: {e}") from None


def _body(values: Values, opts: Sequence[Opt]) -> dict[str, Any]:
    """The flags as a request body (defaults for flags not given), with -j merged over them."""
    body: dict[str, Any] = {}
    for opt in opts:
        value = opt.default if values.get(opt.name) is None else values[opt.name]
        if opt.key and value is not None:
            body[opt.key] = _read_at(value, opt.hint) if opt.from_file else value
    extra = _parse_json(values)
    if extra is None:
        return body
    if not isinstance(extra, dict):
        raise BadInput("'-j'", "must be a JSON object")
    # Go's decoder matched keys case-insensitively and left a field unchanged on null.
    return {**body, **{str(k).lower(): v for k, v in extra.items() if v is not None}}


def _json_list(values: Values) -> Any:
    if values.get("json") is None:
        raise BadInput("'-j'", "required: the JSON array of the whole new list")
    items = _parse_json(values)
    if items is not None and not isinstance(items, list):
        raise BadInput("'-j'", "must be a JSON array")
    return items


def _json_object(values: Values) -> dict[str, Any]:
    if values.get("json") is None:
        raise BadInput("'-j'", "required")
    return _body(values, ())


def _id(kind: str, values: Values, parts: Sequence[str]) -> str:
    """Portal's ids: given, else computed from host and port ('.' -> '_')."""
    if values.get(f"{kind}_id"):
        return str(values[f"{kind}_id"])
    host, port = values.get(f"{kind}_host"), values.get(f"{kind}_port")
    if not host or port is None:
        flags = "'-I' or '-O'/'-R'" if kind == "service" else "'-S' or '-o'/'-p'"
        raise BadInput(flags, f"Must enter host and port combo or id of {kind}")
    return "-".join([*parts, host.replace(".", "_"), str(port)])


def _service(values: Values) -> str:
    kind = values.get("service_type") or SERVICE_TYPE.default
    return path("services", _id("service", values, [kind]))


def _server(values: Values) -> str:
    return f"{_service(values)}{path('servers', _id('server', values, []))}"


# --- the client commands ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCommand:
    name: str
    help: str
    opts: tuple[Opt, ...]
    request: Callable[[Values], Call]


COMMANDS = [
    ClientCommand("add-service", "Add a service", (*SERVICE, JSON),
                  lambda v: Call("POST", "/services", "service", _body(v, SERVICE))),
    ClientCommand("set-service",
                  "Replace a service (found by -I or -O/-R/-T; -j may change it)",
                  (*SERVICE, JSON), lambda v: Call("PUT", _service(v), "service",
                                                   _body(v, SERVICE))),
    ClientCommand("remove-service", "Remove a service", SERVICE_REF,
                  lambda v: Call("DELETE", _service(v), "msg")),
    ClientCommand("show-service", "Show a service", SERVICE_REF,
                  lambda v: Call("GET", _service(v), "service")),
    ClientCommand("show-services", "Show all services", (),
                  lambda v: Call("GET", "/services", "services")),
    ClientCommand("set-services", "Replace all services", (JSON_LIST,),
                  lambda v: Call("PUT", "/services", "services", _json_list(v))),
    ClientCommand("add-server", "Add a server to a service", (*SERVICE_REF, *SERVER_FIELDS, JSON),
                  lambda v: Call("POST", _service(v) + "/servers", "server",
                                 _body(v, SERVER_FIELDS))),
    ClientCommand("remove-server", "Remove a server from a service", (*SERVICE_REF, *SERVER_REF),
                  lambda v: Call("DELETE", _server(v), "msg")),
    ClientCommand("show-server", "Show a server of a service", (*SERVICE_REF, *SERVER_REF),
                  lambda v: Call("GET", _server(v), "server")),
    ClientCommand("show-servers", "Show the servers of a service", SERVICE_REF,
                  lambda v: Call("GET", _service(v) + "/servers", "servers")),
    ClientCommand("set-servers", "Replace the servers of a service", (*SERVICE_REF, JSON_LIST),
                  lambda v: Call("PUT", _service(v) + "/servers", "servers", _json_list(v))),
    ClientCommand("show-errors", "Show the proxy's error pages", (),
                  lambda v: Call("GET", "/errors", "errors")),
    ClientCommand("set-errors", "Set the proxy's error pages", (JSON_PAGES,),
                  lambda v: Call("PUT", "/errors", "errors", _json_object(v))),
    ClientCommand("status", "Show the node: balancer, how far it applied the log, drift", (),
                  lambda v: Call("GET", "/status", "status")),
    ClientCommand("nodes", "Show the cluster's nodes: health, position, lag behind the head", (),
                  lambda v: Call("GET", "/cluster/nodes", "nodes")),
    ClientCommand("changes", "Show the cluster's changes (requested, applied or failed per "
                  "node, committed, compensated or timed out), newest first; or one by --id",
                  (CHANGE_ID, CHANGE_STATE, CHANGE_LIMIT),
                  lambda v: Call("GET", _changes_path(v), "changes")),
    ClientCommand("show", "Show the whole configuration, now or --at a point of the log", (AT,),
                  lambda v: Call("GET", "/state" + _state_query(v), "state")),
    ClientCommand("diff", "Show what changed between two points of the log, per object",
                  (POINT_A, POINT_B),
                  lambda v: Call("GET", "/state/diff" + _diff_query(v), "diff")),
    ClientCommand("restore",
                  "Restore the configuration of a point of the log (recorded as events; "
                  "applied by the server's node like any change)", (AT, REASON),
                  lambda v: Call("POST", "/state/restore", "state", _restore_body(v))),
]


def _list_commands(plural: str, singular: str, opts: tuple[Opt, ...]) -> list[ClientCommand]:
    """add-X, set-Xs, show-Xs, remove-X of a list resource (routes, certs, vips)."""
    where = f"/{plural}"
    return [
        ClientCommand(f"add-{singular}", f"Add a {singular}", (*opts, JSON),
                      lambda v: Call("POST", where, singular, _body(v, opts))),
        ClientCommand(f"set-{plural}", f"Replace all {plural}", (JSON_LIST,),
                      lambda v: Call("PUT", where, plural, _json_list(v))),
        ClientCommand(f"show-{plural}", f"Show all {plural}", (),
                      lambda v: Call("GET", where, plural)),
        ClientCommand(f"remove-{singular}", f"Remove a {singular}", (*opts, JSON),
                      lambda v: Call("DELETE", where, "msg", _body(v, opts))),
    ]


COMMANDS += [
    *_list_commands("routes", "route", ROUTE),
    *_list_commands("certs", "cert", CERT),
    *_list_commands("vips", "vip", VIP),
]


# --- running -----------------------------------------------------------------------------


def fail(message: str, code: int) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def given(ctx: typer.Context, values: Values, name: str) -> Any:
    """A persistent option: the command's own value, else the root's (None when neither)."""
    value = values.get(name)
    return ctx.find_root().params.get(name) if value is None else value


def _refuse_server_flags(ctx: typer.Context) -> None:
    root = ctx.find_root().params
    named = [o.hint for o in SERVER_ONLY if root.get(o.name) is not None]
    if named:
        raise typer.BadParameter(
            "for the server only (`portal-es serve` or `portal-es --server`)",
            ctx=ctx, param_hint=", ".join(named),
        )


def _client(ctx: typer.Context, values: Values) -> PortalClient:
    flags = {key: given(ctx, values, FIELDS[key]) for key in CLIENT_KEYS}
    flags["conf"] = given(ctx, values, "conf")
    try:
        return PortalClient(load_client_settings(flags, os.environ))
    except ConfigError as e:
        fail(f"portal-es: {e}", 2)


def _table(kind: str, data: Any) -> str:
    # Imported here: cryptography (for certs) is only needed when a person asks for a table.
    from portal_es.entrypoints import tables

    return tables.render(kind, data)


def _as_table(kind: str, answer: Answer) -> str:
    try:
        data = answer.json()
    except ValueError:
        return answer.text.rstrip("\n")  # not JSON: shown as it came
    return _table(kind, data)


def _emit(ctx: typer.Context, values: Values, kind: str, answer: Answer) -> None:
    if answer.status == 202:  # saved, not yet applied on the node: say so, it is no failure
        typer.echo(f"warning: {error_text(answer.status, answer.text)}", err=True)
    if given(ctx, values, "output") == Output.table:
        typer.echo(_as_table(kind, answer))
    else:
        typer.echo(answer.text.rstrip("\n"))  # the API's JSON, exactly: scripts parse it


def run_call(request: Callable[[Values], Call]) -> Runner:
    def run(ctx: typer.Context, values: Values) -> None:
        _refuse_server_flags(ctx)
        try:
            call = request(values)
        except BadInput as e:
            raise e.usage_error(ctx) from None
        client = _client(ctx, values)
        try:
            answer = client.call(call.method, call.path, call.body)
        except ClientError as e:
            fail(str(e), 1)
        _emit(ctx, values, call.kind, answer)

    return run


def _iso(values: Values, name: str) -> str | None:
    value = values.get(name)
    if value is not None:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise BadInput(f"'--{name.replace('_', '-')}'", "not an ISO 8601 time") from None
    return value


def run_events(ctx: typer.Context, values: Values) -> None:
    """The audit log, one JSON object per line (or a table), following `next` page by page."""
    _refuse_server_flags(ctx)
    try:
        query = {"since": values.get("since"), "until": values.get("until"),
                 "since_time": _iso(values, "since_time"), "until_time": _iso(values, "until_time"),
                 "entity": values.get("entity"), "type": values.get("type")}
    except BadInput as e:
        raise e.usage_error(ctx) from None
    client = _client(ctx, values)
    table = given(ctx, values, "output") == Output.table
    shown: list[dict[str, Any]] = []
    try:
        for event in client.events(query, values.get("limit"), values.get("page_size") or 1000):
            if table:
                shown.append(event)
            else:
                typer.echo(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
    except ClientError as e:
        fail(str(e), 1)
    if table:
        typer.echo(_table("events", shown))


def settings_flags(ctx: typer.Context, values: Values) -> dict[str, Any]:
    """Every setting by its long name, None where neither the command nor the root had it."""
    flags = {key: given(ctx, values, name) for key, name in FIELDS.items()}
    flags["conf"] = given(ctx, values, "conf")
    return flags


def _settings(flags: Mapping[str, Any]) -> Settings:
    try:
        return load_settings(flags)
    except ConfigError as e:
        fail(f"portal-es: {e}", 2)


def start_server(flags: Mapping[str, Any]) -> None:
    settings = _settings(flags)
    # Imported here: the server's modules take a second to load, a client command needs none.
    from portal_es.adapters.store import StoreConfigError, database_url
    from portal_es.entrypoints import server

    try:
        database_url(settings.db_connection, Path(settings.work_dir))
    except StoreConfigError as e:
        fail(f"portal-es: {e}", 2)
    server.run(settings)


def run_serve(ctx: typer.Context, values: Values) -> None:
    start_server(settings_flags(ctx, values))


def run_migrate(ctx: typer.Context, values: Values) -> None:
    """Apply the event store's migrations and say from which revision to which."""
    settings = _settings(settings_flags(ctx, values))
    from portal_es.adapters import store

    work_dir = Path(settings.work_dir)
    try:
        db_url = store.database_url(settings.db_connection, work_dir)
    except store.StoreConfigError as e:
        fail(f"portal-es: {e}", 2)
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    shown = _redacted(db_url)
    try:
        before = _revision(db_url)
        store.migrate(db_url)
        after = _revision(db_url)
    except Exception as e:  # any driver's or alembic's error: reported, exit 1
        fail(f"portal-es: cannot migrate {shown}: {e}", 1)
    if before == after:
        typer.echo(f"{shown}: already at revision {after}, nothing to do")
    else:
        typer.echo(f"{shown}: migrated from revision {before or '(empty store)'} to {after}")


DRY_RUN = Opt("dry_run", ("--dry-run",), "Only print what would change", bool)
NODE_SETTINGS = tuple(
    o for o in SETTINGS
    if o.name in ("db_connection", "work_dir", "balancer", "just_proxy", "no_vips", "node_name",
                  "cert_key_cipher", "log_level")
)


def _maintenance(ctx: typer.Context, values: Values, action: Callable[[Settings], Any]) -> None:
    """Run a node maintenance action here (it programs this node's kernel: needs root)."""
    settings = _settings(settings_flags(ctx, values))
    from portal_es.adapters.kernel.choice import BalancerUnavailable
    from portal_es.domain.errors import DomainError
    from portal_es.entrypoints.server import configure_logging

    configure_logging(settings)
    try:
        result = action(settings)
    except BalancerUnavailable as e:
        fail(f"portal-es: balancer {settings.balancer}: {e}", 1)
    except DomainError as e:  # e.g. a restore the domain refuses (a socket in use)
        fail(f"portal-es: {e}", 1)
    typer.echo(json.dumps(result, separators=(",", ":"), ensure_ascii=False))
    if result.get("errors"):
        raise typer.Exit(1)


def run_rebuild(ctx: typer.Context, values: Values) -> None:
    from portal_es.entrypoints import maintenance

    if values.get("reason") and not values.get("at"):
        raise typer.BadParameter("only with --at", ctx=ctx, param_hint=REASON.hint)
    _maintenance(ctx, values, lambda s: maintenance.rebuild(
        s, bool(values.get("dry_run")), values.get("at"), values.get("reason") or ""))


# --- the log's own commands: on the store, no server needed -----------------------------------

# A restore is checked against the sockets the node's API and proxy listen on (as every write
# is): rebuild --at takes them like `serve` (flags, environment or the node's config file).
LISTENERS = tuple(
    o for o in SETTINGS if o.name in ("api_host", "api_port", "proxy_http", "proxy_tls")
)
STORE_SETTINGS = tuple(
    o for o in SETTINGS if o.name in ("db_connection", "work_dir", "cert_key_cipher", "log_level")
)
UNTIL = Opt("until", ("--until",), "Only up to this point (log position or ISO 8601 time)",
            metavar="POINT")
EXPORT = Opt("export", ("--export",), "Write the log to this new file instead of printing it",
             metavar="FILE")
IMPORT = Opt("import_files", ("--import",),
             "Import this log file into the store (empty, or whose log the file continues); "
             "repeat for an archive, then the export that follows it", list[str],
             metavar="FILE")
ARCHIVE_FILE = Opt("file", ("--file",), "The new archive file (JSON lines)", metavar="FILE")
FORCE = Opt("force", ("--force",), "Archive even what a node has not applied yet", bool)


def _on_store(ctx: typer.Context, values: Values, action: Callable[[Any], Any]) -> None:
    """Run `action(app)` on the store this node's settings name; print its JSON result."""
    settings = _settings(settings_flags(ctx, values))
    from portal_es.domain.errors import DomainError
    from portal_es.entrypoints import log_commands
    from portal_es.entrypoints.server import configure_logging

    configure_logging(settings)
    app = log_commands.open_store(settings)
    try:
        result = action(app)
    except DomainError as e:
        fail(f"portal-es: {e}", 1)
    except OSError as e:
        fail(f"portal-es: {e.filename or ''}: {e.strerror}", 1)
    finally:
        app.close()
    if result is not None:
        typer.echo(json.dumps(result, separators=(",", ":"), ensure_ascii=False))


def run_replay(ctx: typer.Context, values: Values) -> None:
    from portal_es.entrypoints import log_commands as lc

    export, imports, until = values.get("export"), values.get("import_files"), values.get("until")
    if export and imports:
        raise typer.BadParameter("export or import, not both", ctx=ctx, param_hint=IMPORT.hint)
    if imports and until:
        raise typer.BadParameter("only for printing or --export", ctx=ctx,
                                 param_hint=UNTIL.hint)
    if imports:
        _on_store(ctx, values, lambda app: lc.replay_import(app, [Path(f) for f in imports]))
    elif export:
        _on_store(ctx, values, lambda app: lc.replay_export(app, Path(export), until))
    else:  # the log itself on stdout: JSON lines, nothing else
        stdout = typer.get_text_stream("stdout")
        _on_store(ctx, values, lambda app: lc.replay_print(app, stdout, until) and None)


def run_archive(ctx: typer.Context, values: Values) -> None:
    from portal_es.entrypoints import log_commands as lc

    until, path = values.get("until"), values.get("file")
    if not until:
        raise typer.BadParameter("required", ctx=ctx, param_hint=UNTIL.hint)
    if not path:
        raise typer.BadParameter("required", ctx=ctx, param_hint=ARCHIVE_FILE.hint)
    _on_store(ctx, values,
              lambda app: lc.archive(app, until, Path(path), bool(values.get("force"))))


def run_flush(ctx: typer.Context, values: Values) -> None:
    from portal_es.entrypoints import maintenance

    _maintenance(ctx, values, maintenance.flush)


def _revision(db_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _redacted(db_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(db_url).render_as_string(hide_password=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # 40 ms: only for --version

    try:
        return version("portal-es")
    except PackageNotFoundError:
        return "unknown"


def run_root(ctx: typer.Context, values: Values) -> None:
    if values.get("version"):
        typer.echo(f"portal-es {_version()}")
        raise typer.Exit()
    if values.get("server") and ctx.invoked_subcommand not in (None, "serve"):
        raise typer.BadParameter("starts the server: it takes no command", ctx=ctx,
                                 param_hint=SERVER.hint)
    if ctx.invoked_subcommand is not None:
        return  # the command reads the root's options through `given`
    if values.get("server"):
        start_server(settings_flags(ctx, values))
    else:
        typer.echo(ctx.get_help())


# --- the application ---------------------------------------------------------------------

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # plain help and errors: stable for scripts and tests
    pretty_exceptions_enable=False,  # a traceback with locals could show the api token
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback(
    invoke_without_command=True,
    help="portal-es: Portal, the API-driven load balancer, event-sourced. "
         "Run the server with `serve` (or --server); the other commands are its API's client.",
)(typer_command((*GLOBAL, SERVER, VERSION, *SERVER_ONLY), run_root))
app.command("serve", help="Run the server: the API, the proxy and the kernel balancer")(
    typer_command((*SETTINGS, CONF), run_serve)
)
app.command("migrate", help="Apply the event store's migrations, then exit")(
    typer_command(
        (*(o for o in SETTINGS if o.name in ("db_connection", "work_dir")), CONF), run_migrate
    )
)
for _command in COMMANDS:
    app.command(_command.name, help=_command.help)(
        typer_command((*_command.opts, *GLOBAL), run_call(_command.request))
    )
app.command("events", help="Show the audit log (every change: who, when, what)")(
    typer_command((*EVENTS, *GLOBAL), run_events)
)
app.command("rebuild", help="Restore this node's kernel and vips from the log (a diff); "
                            "--at restores the configuration of a past point first (recorded "
                            "as events, written straight into the store: for a node whose "
                            "server is not running; else use `restore`)")(
    typer_command((*NODE_SETTINGS, *LISTENERS, CONF, DRY_RUN, AT, REASON), run_rebuild)
)
app.command("replay", help="Print the log (JSON lines), export it to a file, or import files "
                           "into the store (backup, restore, SQLite <-> PostgreSQL)")(
    typer_command((*STORE_SETTINGS, CONF, UNTIL, EXPORT, IMPORT), run_replay)
)
app.command("archive", help="Move the log up to a point into a file, keeping a snapshot of "
                            "the state there (the file replays with `replay --import`)")(
    typer_command((*STORE_SETTINGS, CONF, UNTIL, ARCHIVE_FILE, FORCE), run_archive)
)
app.command("flush", help="Remove everything portal-es programmed on this node")(
    typer_command((*NODE_SETTINGS, CONF), run_flush)
)


def main() -> None:
    app(prog_name="portal-es")
