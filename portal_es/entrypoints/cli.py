"""Temporary CLI (serve only) until the full Portal command set lands."""
from __future__ import annotations

import typer

from portal_es.config import ConfigError, load_settings
from portal_es.entrypoints import server

app = typer.Typer()


@app.callback()
def root() -> None:
    """portal-es."""


@app.command()
def serve(
    api_host: str = typer.Option(None, "--api-host", "-H"),
    api_port: int = typer.Option(None, "--api-port", "-P"),
    insecure: bool = typer.Option(None, "--insecure", "-i"),
    work_dir: str = typer.Option(None, "--work-dir"),
    db_connection: str = typer.Option(None, "--db-connection"),
    api_token: str = typer.Option(None, "--api-token", "-t"),
    proxy_http: str = typer.Option("127.0.0.1:8080", "--proxy-http"),
    proxy_tls: str = typer.Option("127.0.0.1:8444", "--proxy-tls"),
    balancer: str = typer.Option(None, "--balancer"),
    no_vips: bool = typer.Option(None, "--no-vips"),
) -> None:
    try:
        settings = load_settings({"api-host": api_host, "api-port": api_port, "insecure": insecure,
                                  "work-dir": work_dir, "db-connection": db_connection,
                                  "api-token": api_token, "proxy-http": proxy_http,
                                  "proxy-tls": proxy_tls, "balancer": balancer,
                                  "no-vips": no_vips})
    except ConfigError as e:
        raise typer.Exit(str(e)) from None
    server.run(settings)


def main() -> None:
    app()
