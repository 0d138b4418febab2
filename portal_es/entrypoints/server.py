"""`portal-es serve`: open the log, fold it, serve the API."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from portal_es.adapters import store, tls
from portal_es.adapters.kernel import L4Dataplane
from portal_es.adapters.kernel.choice import BalancerUnavailable, choose
from portal_es.adapters.proxy import ProxyServer, ProxySettings
from portal_es.adapters.vips import VipManager
from portal_es.config import Settings
from portal_es.entrypoints.api import add_proxy_routes, create_app
from portal_es.service.app import PortalApplication, ServicePolicy
from projections.l4 import virtual_service
from projections.node import NodeProjector
from projections.state_view import StateView

log = logging.getLogger("portal_es")

LEVELS = {"TRACE": logging.DEBUG, "WARN": logging.WARNING, "FATAL": logging.CRITICAL}


def configure_logging(settings: Settings) -> None:
    level = LEVELS.get(settings.log_level) or getattr(logging, settings.log_level)
    handler: logging.Handler = (
        logging.FileHandler(settings.log_file) if settings.log_file else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(max(level, logging.WARNING))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def open_application(
    settings: Settings, policy: ServicePolicy | None = None
) -> PortalApplication:
    """Migrate the store and open the application on it."""
    work_dir = Path(settings.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db_url = store.database_url(settings.db_connection, work_dir)
    store.migrate(db_url)
    key = store.load_or_create_cipher_key(work_dir, settings.cert_key_cipher)
    return PortalApplication(
        store.application_env(db_url, key), reserved=settings.reserved_sockets(), policy=policy
    )


def proxy_server(settings: Settings) -> ProxyServer:
    workers = None if settings.proxy_workers < 0 else settings.proxy_workers
    return ProxyServer(
        settings.proxy_http, settings.proxy_tls, Path(settings.work_dir),
        ProxySettings(
            workers=workers, connect_timeout=settings.proxy_connect_timeout,
            read_timeout=settings.proxy_read_timeout, idle_timeout=settings.proxy_idle_timeout,
            health_interval=settings.health_interval,
        ),
    )


def node_projector(
    settings: Settings, app: PortalApplication, l4: L4Dataplane,
    proxy: ProxyServer | None = None,
) -> NodeProjector:
    vips = None if settings.no_vips else VipManager(Path(settings.work_dir))
    return NodeProjector(
        app, settings.node_name, l4, vips=vips, proxy=proxy,
        drain_timeout=timedelta(seconds=settings.drain_timeout),
        reconcile_interval=settings.reconcile_interval,
    )


def run(settings: Settings) -> None:
    configure_logging(settings)
    try:
        l4 = choose(settings.balancer, settings.just_proxy)
    except BalancerUnavailable as e:
        log.error("balancer %s: %s", settings.balancer, e)
        sys.exit(1)
    log.info("node %s: balancer %s", settings.node_name, l4.name)
    app = open_application(settings, policy=lambda s: l4.unsupported(virtual_service(s)))
    proxy = proxy_server(settings)
    node = node_projector(settings, app, l4, proxy)
    view = StateView(app)
    started = time.perf_counter()
    view.catch_up()
    log.info("log folded to version %d (position %d) in %.0f ms", view.version, view.position,
             (time.perf_counter() - started) * 1000)
    if not settings.api_token and not _is_loopback(settings.api_host):
        log.warning("NO API TOKEN: anyone who reaches %s:%d can change this load balancer",
                    settings.api_host, settings.api_port)
    ssl_context = None
    if not settings.insecure:
        if settings.api_cert and settings.api_key:
            cert, key = Path(settings.api_cert), Path(settings.api_key)
        else:
            cert, key = tls.self_signed(Path(settings.work_dir), settings.api_host)
        ssl_context = tls.server_context(cert, key, settings.api_key_password)
    scheme = "http" if settings.insecure else "https"
    log.info("API listening on %s://%s:%d (pid %d)", scheme, settings.api_host,
             settings.api_port, os.getpid())
    cluster = None
    if settings.cluster_connection:  # the settings checked it has a PostgreSQL log and a token
        from portal_es.entrypoints import cluster_api
        from portal_es.entrypoints.cluster import ClusterRuntime

        db_url = store.database_url(settings.db_connection, Path(settings.work_dir))
        cluster = ClusterRuntime(settings, app, node, db_url)
    web_app = create_app(app, view, settings.api_token, node, settings.apply_timeout,
                         coordinator=cluster.coordinator if cluster else None)
    if cluster is not None:
        cluster_api.add_routes(web_app, cluster)
    add_proxy_routes(web_app, proxy)

    async def start_node(_: web.Application) -> None:
        try:
            await proxy.start()
        except OSError as e:
            log.error("proxy cannot listen on %s / %s: %s", settings.proxy_http,
                      settings.proxy_tls, e.strerror)
            raise
        log.info("proxy listening on http %s and tls %s", settings.proxy_http,
                 settings.proxy_tls)
        applied = await node.start()
        log.info("node %s applied the log up to position %d in %.0f ms%s", node.node_name,
                 applied.position, applied.seconds * 1000,
                 "" if applied.ok else f" with errors: {applied.errors}")
        if cluster is not None:
            await cluster.start()

    async def stop_node(_: web.Application) -> None:
        # The data plane stays as it is: stopping portal-es must not stop the traffic.
        if cluster is not None:
            await cluster.stop()
        await node.stop()
        await proxy.stop()

    async def stop_changes(_: web.Application) -> None:
        if cluster is not None:  # before on_cleanup shuts the store's worker thread down
            await cluster.stop_changes()

    web_app.on_startup.append(start_node)
    web_app.on_shutdown.append(stop_changes)
    web_app.on_cleanup.append(stop_node)
    try:
        web.run_app(web_app, host=settings.api_host, port=settings.api_port,
                    ssl_context=ssl_context, print=None, access_log=None)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", settings.api_host, settings.api_port, e.strerror)
        sys.exit(1)
    finally:
        app.close()
