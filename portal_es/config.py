"""Settings of a portal-es node: Portal's flags, from flags > environment > file > defaults.

Keys are Portal's long flag names (`api-port`); the environment spells them
`PORTAL_ES_API_PORT`; a config file (`-c`, JSON, YAML or TOML) uses the long names as keys.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "PORTAL_ES_"
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "FATAL")
BALANCERS = ("auto", "ipvs", "nftables", "none")


class ConfigError(ValueError):
    """Settings that cannot be used; the message says which and why."""


def default_work_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/portal-es"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "portal-es")


def split_address(value: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:80') -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{value}' is not host:port with a port from 1 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


class Settings(BaseModel):
    """Every server setting, with Portal's names and defaults."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    api_cert: str = Field(
        "", alias="api-cert", description="TLS certificate for the API (PEM file)"
    )
    api_host: str = Field("127.0.0.1", alias="api-host", description="Address the API listens on")
    api_key: str = Field("", alias="api-key", description="TLS private key for the API (PEM file)")
    api_key_password: str = Field(
        "", alias="api-key-password", description="Password of an encrypted api-key"
    )
    api_port: int = Field(8443, alias="api-port", ge=1, le=65535, description="API port")
    api_token: str = Field(
        "", alias="api-token", description="Token clients must send ('' = no auth)"
    )
    balancer: str = Field("auto", description="Kernel balancer: auto, ipvs, nftables or none")
    cluster_connection: str = Field(
        "", alias="cluster-connection", description="RabbitMQ URL (amqp://...) for cluster mode"
    )
    cluster_token: str = Field("", alias="cluster-token", description="Secret shared by the nodes")
    db_connection: str = Field(
        "", alias="db-connection",
        description="Event store: '' = SQLite in work-dir, or postgresql://...",
    )
    insecure: bool = Field(False, description="Serve the API over plain HTTP")
    just_proxy: bool = Field(False, alias="just-proxy", description="No L4 (kernel) balancing")
    log_file: str = Field("", alias="log-file", description="Log to this file ('' = stderr)")
    log_level: str = Field("INFO", alias="log-level", description="TRACE DEBUG INFO WARNING ERROR")
    proxy_http: str = Field("0.0.0.0:80", alias="proxy-http", description="HTTP proxy listener")
    proxy_tls: str = Field("0.0.0.0:443", alias="proxy-tls", description="HTTPS proxy listener")
    work_dir: str = Field(
        default_factory=default_work_dir, alias="work-dir",
        description="Where the SQLite log, keys and generated certs live",
    )
    node_name: str = Field(
        default_factory=lambda: socket.gethostname()[:32], alias="node-name", max_length=32,
        description="This node's name in the log (tracking) and in errors",
    )
    no_vips: bool = Field(False, alias="no-vips", description="Do not manage vips on interfaces")
    drain_timeout: float = Field(
        30.0, alias="drain-timeout", ge=0,
        description="Seconds a removed server keeps its connections before it is deleted",
    )
    reconcile_interval: float = Field(
        30.0, alias="reconcile-interval", gt=0,
        description="Seconds between full reconciles of the kernel with the log (repairs drift)",
    )
    apply_timeout: float = Field(
        10.0, alias="apply-timeout", gt=0,
        description="Seconds a write waits for the node to apply it before answering 202",
    )
    proxy_workers: int = Field(
        -1, alias="proxy-workers", ge=-1,
        description="Proxy processes: -1 = one per core, 0 = inside the server process",
    )
    proxy_connect_timeout: float = Field(
        5.0, alias="proxy-connect-timeout", gt=0, description="Seconds to connect to a target"
    )
    proxy_read_timeout: float = Field(
        60.0, alias="proxy-read-timeout", gt=0,
        description="Seconds a target may stay silent during a request",
    )
    proxy_idle_timeout: float = Field(
        75.0, alias="proxy-idle-timeout", gt=0,
        description="Seconds a client keep-alive connection may stay idle",
    )
    health_interval: float = Field(
        5.0, alias="health-interval", gt=0, description="Seconds between route health checks"
    )
    cert_key_cipher: str = Field(
        "", alias="cert-key-cipher",
        description="Base64 AES key for cert private keys in the log ('' = kept in work-dir)",
    )
    cluster_name: str = Field(
        "portal-es", alias="cluster-name", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The cluster's exchange on the broker (its queues are named after it)",
    )
    heartbeat_interval: float = Field(
        1.0, alias="heartbeat-interval", gt=0,
        description="Seconds between a cluster node's heartbeats",
    )
    node_timeout: float = Field(
        5.0, alias="node-timeout", gt=0,
        description="Seconds without a heartbeat after which a node is down: changes stop "
                    "waiting for it (it catches up when back)",
    )
    change_timeout: float = Field(
        60.0, alias="change-timeout", gt=0,
        description="Seconds a cluster change may wait for live nodes; then it is recorded "
                    "as timed out (and kept)",
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in LOG_LEVELS:
            raise ValueError(f"log-level '{v}' is not one of {', '.join(LOG_LEVELS)}")
        return v.upper()

    @field_validator("balancer")
    @classmethod
    def _balancer(cls, v: str) -> str:
        if v not in BALANCERS:
            raise ValueError(f"balancer '{v}' is not one of {', '.join(BALANCERS)}")
        return v

    @field_validator("proxy_http", "proxy_tls")
    @classmethod
    def _address(cls, v: str) -> str:
        split_address(v)
        return v

    @model_validator(mode="after")
    def _listeners(self) -> Settings:
        http, tls = split_address(self.proxy_http), split_address(self.proxy_tls)
        if http == tls:
            raise ValueError("proxy-http and proxy-tls must differ")
        for name, (host, port) in (("proxy-http", http), ("proxy-tls", tls)):
            if port == self.api_port and (host == self.api_host or host in ("0.0.0.0", "::")):
                raise ValueError(f"{name} uses the API's port {port}")
        return self

    @model_validator(mode="after")
    def _cluster(self) -> Settings:
        if not self.cluster_connection:
            return self
        if not self.cluster_connection.startswith(("amqp://", "amqps://")):
            raise ValueError("cluster-connection must be an amqp:// or amqps:// URL (RabbitMQ)")
        if not self.db_connection.startswith(("postgres://", "postgresql://",
                                              "postgresql+psycopg://")):
            raise ValueError(
                "cluster mode needs a shared log: set db-connection to a postgresql:// URL "
                "(a SQLite log is a file on one machine, which the other nodes can neither "
                "read nor write)")
        if not self.cluster_token:
            raise ValueError("cluster mode needs a cluster-token: every message between the "
                             "nodes is signed with it")
        if not self.cert_key_cipher:
            raise ValueError("cluster mode needs cert-key-cipher, the same on every node: cert "
                             "private keys in the shared log are encrypted with it")
        if self.heartbeat_interval >= self.node_timeout:
            raise ValueError("heartbeat-interval must be shorter than node-timeout")
        return self

    def reserved_sockets(self) -> list[tuple[str, int]]:
        """Sockets that services may not take: the API's and the proxy's."""
        return [(self.api_host, self.api_port), split_address(self.proxy_http),
                split_address(self.proxy_tls)]


FIELDS = {f.alias or name: name for name, f in Settings.model_fields.items()}


def read_file(path: str) -> dict[str, Any]:
    """A config file's keys (JSON, YAML or TOML, chosen by extension; else tried in turn)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror}") from None
    suffix = Path(path).suffix.lower()
    parsers: dict[str, Callable[[str], Any]] = {
        ".json": json.loads, ".toml": tomllib.loads, ".yaml": yaml.safe_load,
        ".yml": yaml.safe_load,
    }
    order = [parsers[suffix]] if suffix in parsers else list(dict.fromkeys(parsers.values()))
    for parse in order:
        try:
            data = parse(text)
            break
        except (ValueError, yaml.YAMLError):
            continue
    else:
        raise ConfigError(f"config file '{path}' is not valid JSON, YAML or TOML")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of setting names to values")
    return data


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key in FIELDS:
        value = environ.get(ENV_PREFIX + key.upper().replace("-", "_"))
        if value is not None:
            out[key] = value
    return out


def _coerce(key: str, value: Any) -> Any:
    """Environment values are strings: read booleans and numbers as a user means them."""
    annotation = Settings.model_fields[FIELDS[key]].annotation
    if isinstance(value, str) and annotation is bool:
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
    if isinstance(value, str) and annotation is int and value.strip().isdigit():
        return int(value)
    if isinstance(value, str) and annotation is float:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_settings(
    flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Merge defaults < file < environment < flags (only flags the user gave)."""
    environ = os.environ if environ is None else environ
    env = from_environment(environ)
    conf = flags.get("conf") or environ.get(ENV_PREFIX + "CONF", "")
    merged: dict[str, Any] = {}
    if conf:
        merged.update(read_file(conf))
    merged.update(env)
    merged.update({k: v for k, v in flags.items() if v is not None and k != "conf"})
    merged.pop("conf", None)
    unknown = sorted(set(merged) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    try:
        return Settings.model_validate({k: _coerce(k, v) for k, v in merged.items()})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
