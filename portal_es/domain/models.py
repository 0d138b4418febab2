"""Portal's data model as immutable, validated value objects.

Validation lives here, once: the API, the CLI, config and broker messages all build these
models, so every entry point rejects the same bad input with the same message. Pydantic is
used as a pure validation library (no I/O). Fields are strict: a string where a number is
expected is a type error (Portal's "Bad JSON syntax"), a number out of range is a value
error naming the field.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq")
PROTOCOLS = ("tcp", "udp")
FORWARDERS = ("g", "i", "m")

DEFAULT_SCHEDULER = "wlc"
DEFAULT_PROTOCOL = "tcp"
DEFAULT_FORWARDER = "g"
DEFAULT_WEIGHT = 1
DEFAULT_EXPECTED_CODE = 200
DEFAULT_HEALTH_TIMEOUT_MS = 3000
DEFAULT_HEALTH_ATTEMPTS = 3

# RFC 1123 labels; "*" is allowed as a whole label for wildcard subdomains.
_LABEL = r"(\*|[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_ALIAS = re.compile(r"^[^\s/]{1,15}$")
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")

Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
# Kernel fields (IPVS weights, thresholds, timeouts) are 32-bit: refuse what cannot fit.
NonNegative = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
Str = Annotated[str, Field(strict=True)]


class UnsupportedValue(ValueError):
    """A value outside an enumeration; its message is the exact text Portal clients match."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


def _address(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"invalid {what} '{value}': not an IP address") from None


def is_interface_name(name: str) -> bool:
    return bool(_IFNAME.fullmatch(name))


def id_part(host: str) -> str:
    """Portal's id spelling of an address: dots become underscores."""
    return host.replace(".", "_")


class Server(_Model):
    """A real server behind a service (IPVS real server / nftables backend)."""

    id: Str = ""
    host: Str
    port: Port
    forwarder: Str = DEFAULT_FORWARDER
    weight: NonNegative = DEFAULT_WEIGHT
    upper_threshold: NonNegative = 0
    lower_threshold: NonNegative = 0

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return _address(v, "server host")

    @field_validator("forwarder")
    @classmethod
    def _forwarder(cls, v: str) -> str:
        v = v or DEFAULT_FORWARDER
        if v not in FORWARDERS:
            raise UnsupportedValue(f"Unsupported Forwarder - '{v}'")
        return v

    @model_validator(mode="after")
    def _derive(self) -> Server:
        if self.upper_threshold and self.lower_threshold > self.upper_threshold:
            raise ValueError(
                f"lower_threshold {self.lower_threshold} is above "
                f"upper_threshold {self.upper_threshold}"
            )
        object.__setattr__(self, "id", f"{id_part(self.host)}-{self.port}")
        return self

    def portal_json(self) -> dict[str, Any]:
        return self.model_dump()


class Service(_Model):
    """A virtual service: an address, port and protocol balanced over servers."""

    id: Str = ""
    host: Str = ""
    interface: Str = ""
    port: Port
    type: Str = DEFAULT_PROTOCOL
    scheduler: Str = DEFAULT_SCHEDULER
    persistence: NonNegative = 0
    netmask: Str = ""
    servers: tuple[Server, ...] = ()

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return _address(v, "service host") if v else v

    @field_validator("interface")
    @classmethod
    def _interface(cls, v: str) -> str:
        if v and not is_interface_name(v):
            raise ValueError(f"invalid interface name '{v}'")
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        v = v or DEFAULT_PROTOCOL
        if v not in PROTOCOLS:
            raise UnsupportedValue(f"Unsupported Protocol - '{v}'")
        return v

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        v = v or DEFAULT_SCHEDULER
        if v not in SCHEDULERS:
            raise UnsupportedValue(f"Unsupported Scheduler - '{v}'")
        return v

    @field_validator("netmask")
    @classmethod
    def _netmask(cls, v: str) -> str:
        if not v:
            return v
        try:
            return str(ipaddress.IPv4Network(f"0.0.0.0/{v}").netmask)
        except ValueError:
            raise ValueError(f"invalid netmask '{v}'") from None

    @field_validator("servers", mode="before")
    @classmethod
    def _servers_null(cls, v: Any) -> Any:
        return () if v is None else v

    @model_validator(mode="after")
    def _derive(self) -> Service:
        if not self.host:
            raise ValueError("service host is required (or an interface to take it from)")
        # The same server twice: the last one wins, at the place of the first (as PUT lists).
        unique = {s.id: s for s in self.servers}
        object.__setattr__(self, "servers", tuple(unique.values()))
        object.__setattr__(self, "id", f"{self.type}-{id_part(self.host)}-{self.port}")
        return self

    def server(self, server_id: str) -> Server | None:
        return next((s for s in self.servers if s.id == server_id), None)

    def portal_json(self) -> dict[str, Any]:
        out = self.model_dump(exclude={"servers"})
        if not self.interface:
            del out["interface"]
        if self.servers:
            out["servers"] = [s.portal_json() for s in self.servers]
        return out


RouteKey = tuple[str, str, str]


class Route(_Model):
    """An HTTP(S) proxy route: (subdomain, domain, path) -> targets or a static page."""

    subdomain: Str = ""
    domain: Str = ""
    path: Str = ""
    targets: tuple[Str, ...] = ()
    fwdpath: Str = ""
    page: Str = ""
    endpoint: Str = ""
    expected_code: NonNegative = DEFAULT_EXPECTED_CODE
    expected_body: Str = ""
    expected_header: Str = ""
    host: Str = ""
    timeout: NonNegative = DEFAULT_HEALTH_TIMEOUT_MS
    attempts: NonNegative = DEFAULT_HEALTH_ATTEMPTS

    @field_validator("subdomain", "domain", "host")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if v and not _HOSTNAME.fullmatch(v):  # fullmatch: "$" takes a final "\n"
            raise ValueError(f"invalid host name '{v}'")
        return v.lower()

    @field_validator("path", "fwdpath", "endpoint")
    @classmethod
    def _path(cls, v: str) -> str:
        if v and (not v.startswith("/") or any(c.isspace() for c in v)):
            raise ValueError(f"invalid path '{v}': must start with '/' and have no spaces")
        return v

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_null(cls, v: Any) -> Any:
        return () if v is None else v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for target in v:
            if _URL_UNSAFE.search(target):  # urlsplit would silently drop some of them
                raise ValueError(f"invalid target '{target}': spaces or control characters")
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"invalid target '{target}': must be an http(s) URL")
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ValueError(f"invalid target '{target}': bad port") from None
        return v

    @field_validator("expected_code")
    @classmethod
    def _code(cls, v: int) -> int:
        if v == 0:
            return DEFAULT_EXPECTED_CODE
        if not 100 <= v <= 599:
            raise ValueError(f"invalid expected_code {v}: must be an HTTP status (100-599)")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: int) -> int:
        return v or DEFAULT_HEALTH_TIMEOUT_MS

    @field_validator("attempts")
    @classmethod
    def _attempts(cls, v: int) -> int:
        return v or DEFAULT_HEALTH_ATTEMPTS

    @field_validator("expected_header")
    @classmethod
    def _header(cls, v: str) -> str:
        if v and ":" not in v:
            raise ValueError(f"invalid expected_header '{v}': must be 'Field:value'")
        return v

    @property
    def key(self) -> RouteKey:
        return (self.subdomain, self.domain, self.path)

    def portal_json(self) -> dict[str, Any]:
        out = self.model_dump()
        out["targets"] = list(self.targets) or None
        return out


class CertBundle(_Model):
    """A certificate chain and its private key (PEM). Identity: the certificate."""

    cert: Str
    key: Str

    @model_validator(mode="after")
    def _pair(self) -> CertBundle:
        from portal_es.domain.pem import check_pair  # local: keeps crypto out of import time

        check_pair(self.cert, self.key)
        return self

    @property
    def id(self) -> str:
        from portal_es.domain.pem import fingerprint

        return fingerprint(self.cert)

    def portal_json(self) -> dict[str, Any]:
        return self.model_dump()


class Vip(_Model):
    """A virtual IP that a node adds to an interface and announces (ARP)."""

    ip: Str
    interface: Str = ""
    alias: Str = ""

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            iface = ipaddress.ip_interface(v)
        except ValueError:
            raise ValueError(f"invalid vip ip '{v}': not an address or address/prefix") from None
        return str(iface) if "/" in v else str(iface.ip)

    @field_validator("interface")
    @classmethod
    def _interface(cls, v: str) -> str:
        if v and not _IFNAME.fullmatch(v):
            raise ValueError(f"invalid interface name '{v}'")
        return v

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if v and not _ALIAS.fullmatch(v):
            raise ValueError(f"invalid alias '{v}': 1-15 characters, no spaces")
        return v

    @model_validator(mode="after")
    def _alias_on_interface(self) -> Vip:
        if self.alias and self.interface and not self.alias.startswith(self.interface):
            # The kernel requires an address label to start with its interface's name.
            raise ValueError(f"alias '{self.alias}' must start with interface '{self.interface}'")
        return self

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]

    def portal_json(self) -> dict[str, Any]:
        return self.model_dump()


class ErrorPages(_Model):
    """Bodies of the proxy's own 502 answers."""

    no_routes: Str = Field(default="NoRoutes", alias="no-routes")
    no_healthy: Str = Field(default="NoHealthy", alias="no-healthy")

    def portal_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


Kind = Literal["service", "server", "route", "cert", "vip", "error_pages"]
