"""Run the proxy alone with routes from a JSON file (benchmarks, manual tests).

    python -m portal_es.adapters.proxy --http 127.0.0.1:8080 --routes routes.json

The file holds a list of Portal route objects. Stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import tempfile
from pathlib import Path

from portal_es.adapters.proxy.server import ProxyServer
from portal_es.adapters.proxy.settings import ProxySettings
from portal_es.domain.models import ErrorPages, Route


async def _serve(args: argparse.Namespace) -> None:
    routes = [Route.model_validate(r) for r in json.loads(Path(args.routes).read_text())]
    settings = ProxySettings(workers=args.workers, access_log=args.access_log)
    proxy = ProxyServer(args.http, args.tls, args.cert_dir or tempfile.mkdtemp(), settings)
    await proxy.start()
    await proxy.apply(routes, [], ErrorPages())
    print(f"ready http={proxy.http_addr} tls={proxy.tls_addr}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m portal_es.adapters.proxy")
    parser.add_argument("--http", default="127.0.0.1:8080")
    parser.add_argument("--tls", default=None)
    parser.add_argument("--routes", required=True, help="JSON file: a list of routes")
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--cert-dir", default="")
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import uvloop

    uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
