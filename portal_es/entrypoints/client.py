"""HTTP client of the portal-es API, as the `portal-es` client commands use it.

Kept free of typer and of the server's modules: a client command only needs where the API is,
how to authenticate, and the raw answer (scripts depend on the API's exact JSON).
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from portal_es.config import ENV_PREFIX, ConfigError, from_environment, read_file

UNAUTHORIZED = (
    "Could not contact portal - 401 Unauthorized. Please specify api token (-t 'token')"
)
TOKEN_HEADER = "X-AUTH-TOKEN"
NO_BODY: Any = object()  # a request without a body (None would be sent as JSON null)

# The settings a client reads; every other key of a shared config file is the server's.
CLIENT_KEYS = ("api-host", "api-port", "api-token", "insecure")


class ClientSettings(BaseModel):
    """Where the API listens and how to talk to it (Portal's global client flags)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")

    api_host: str = Field("127.0.0.1", alias="api-host", min_length=1)
    api_port: int = Field(8443, alias="api-port", ge=1, le=65535)
    api_token: str = Field("", alias="api-token")
    insecure: bool = False

    @property
    def base_url(self) -> str:
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"{'http' if self.insecure else 'https'}://{host}:{self.api_port}"


def load_client_settings(
    flags: Mapping[str, Any], environ: Mapping[str, str]
) -> ClientSettings:
    """flags > environment (PORTAL_ES_*) > config file (-c) > defaults, as for the server."""
    conf = flags.get("conf") or environ.get(ENV_PREFIX + "CONF", "")
    merged: dict[str, Any] = {}
    if conf:
        merged.update(read_file(conf))
    merged.update(from_environment(environ))
    merged.update({k: v for k, v in flags.items() if v is not None})
    try:
        return ClientSettings.model_validate({k: merged[k] for k in CLIENT_KEYS if k in merged})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"invalid client settings: {problems}") from None


class ClientError(Exception):
    """The request failed; the message is what the user reads on stderr."""


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def _unverified_context() -> ssl.SSLContext:
    # As Portal's client: the server's default certificate is self-signed, so it is not checked.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def error_text(status: int, text: str) -> str:
    """The API's {"error": "..."} message, or whatever else answered (a proxy, a wrong port)."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"HTTP {status}: {text.strip()[:500] or '(empty answer)'}"


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is portal-es running there?)"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error}); for a server started with --insecure use -i"
    if isinstance(error, (http.client.RemoteDisconnected, ConnectionResetError)):
        return "the server closed the connection (a TLS server spoken to with -i?)"
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(getattr(error, "strerror", None) or error)


class PortalClient:
    """One API, one token; every call answers the raw body or raises ClientError."""

    def __init__(self, settings: ClientSettings, timeout: float = 60.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._context = None if settings.insecure else _unverified_context()

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        given = {k: v for k, v in (query or {}).items() if v is not None}
        suffix = f"?{urllib.parse.urlencode(given)}" if given else ""
        return f"{self.settings.base_url}{path}{suffix}"

    def call(
        self, method: str, path: str, body: Any = NO_BODY,
        query: Mapping[str, Any] | None = None,
    ) -> Answer:
        url = self.url(path, query)
        data = None if body is NO_BODY else json.dumps(body).encode()
        headers = {TOKEN_HEADER: self.settings.api_token}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as r:
                return Answer(r.status, r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            if e.code == 401:
                raise ClientError(UNAUTHORIZED) from None
            raise ClientError(error_text(e.code, text)) from None
        except (OSError, http.client.HTTPException) as e:
            raise ClientError(f"Could not contact portal at {url} - {_reason(e)}") from None

    def get_json(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        answer = self.call("GET", path, query=query)
        try:
            return answer.json()
        except ValueError:
            raise ClientError(f"{path} answered something that is not JSON") from None

    def events(
        self, query: Mapping[str, Any], limit: int | None, page_size: int
    ) -> Iterator[dict[str, Any]]:
        """The matching audit events, page after page (following `next`), at most `limit`."""
        since, remaining = query.get("since"), limit
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page = self.get_json("/events", {**query, "since": since, "limit": size})
            if not isinstance(page, dict) or not isinstance(page.get("events"), list):
                raise ClientError("/events answered something that is not an event page")
            yield from page["events"]
            if remaining is not None:
                remaining -= len(page["events"])
            following = page.get("next")
            # `next` must move forward; a server that repeats itself must not loop us forever.
            if following is None or (since is not None and following <= since):
                return
            since = following


def path(*segments: str) -> str:
    """An API path with each id quoted (ids come from the user)."""
    return "/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)
