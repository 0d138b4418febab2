"""The access log: one line per request, NCSA combined format plus proxy fields.

Lines go to the logger "portal_es.proxy.access" (in a worker process, via the parent), so
where they end up is the node's logging configuration, separate from the diagnostic log.
"""

from __future__ import annotations

import time

ACCESS_LOGGER = "portal_es.proxy.access"


class Clock:
    """The log's timestamp, formatted at most once a second (strftime is slow)."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
        return self._text


def _quote(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return text.replace("\\", "\\\\").replace('"', '\\"') if text else "-"


def line(clock: Clock, peer: str, method: bytes, url: bytes, http10: bool, status: int,
         sent: int, referer: bytes, user_agent: bytes, host: str, route: str, target: str,
         upstream_seconds: float | None, request_seconds: float) -> str:
    upstream = f"{upstream_seconds:.4f}" if upstream_seconds is not None else "-"
    return (
        f'{peer or "-"} - - [{clock.now()}] "{method.decode("latin-1")} '
        f'{_quote(url)} HTTP/{"1.0" if http10 else "1.1"}" {status} {sent} '
        f'"{_quote(referer)}" "{_quote(user_agent)}" host="{_quote(host)}" '
        f'route="{route or "-"}" target="{target or "-"}" upstream_time={upstream} '
        f"request_time={request_seconds:.4f}"
    )
