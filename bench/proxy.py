"""Benchmark: portal-es's HTTP proxy against nginx as a reverse proxy, on loopback.

    .venv/bin/python bench/proxy.py [--seconds 5] [--connections 1,50] [--workers N]

Starts a small fast upstream (nginx answering a 13-byte body from memory, one worker), nginx
as a keep-alive reverse proxy to it, and the portal-es proxy (`python -m
portal_es.adapters.proxy`) to the same upstream, then drives each with wrk at the same
connection counts and prints requests/s, p50, p99, the latency each proxy adds to the direct
path, and the ratio portal-es / nginx. Both proxies: access log off, one worker per core.

Installs nothing except nginx and wrk from Debian when they are missing and this runs as
root (it says so). All traffic stays on 127.0.0.1; every run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = "hello, world\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None
               and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: install them (apt-get install nginx-light wrk)")
    packages = ["nginx-light" if t == "nginx" else t for t in missing]
    print(f"installing {' '.join(packages)} with apt-get (missing)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                   check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_nginx(workdir: Path, name: str, workers: int,
                server_block: str) -> subprocess.Popen[bytes]:
    prefix = workdir / name
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""
{user}
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    {server_block}
}}
""")
    return subprocess.Popen([nginx_binary(), "-p", str(prefix), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0  # CPU time of the server's processes per request (contention-proof)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (nginx or proxy workers)."""
    pids = [pid, *(int(p) for p in subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())]
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def median(results: list[Result]) -> Result:
    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return Result(mid([r.rps for r in results]), mid([r.p50_ms for r in results]),
                  mid([r.p99_ms for r in results]), sum(r.errors for r in results),
                  mid([r.cpu_us for r in results]))


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if found is None:
        raise ValueError(f"wrk latency {text!r}")
    value, unit = found.groups()
    return float(value) * _UNITS[unit]


def wrk(port: int, connections: int, seconds: int, pid: int | None = None) -> Result:
    threads = min(connections, 2)
    cpu_before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", "Host: bench.test", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu_us = (cpu_seconds(pid) - cpu_before) / max(requests, 1) * 1e6 if pid else 0.0
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)",
                    r"Socket errors:.*?read (\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, out)
        errors += int(found.group(1)) if found else 0
    return Result(rps, p50, p99, errors, cpu_us)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per case, interleaved; the table shows medians")
    parser.add_argument("--connections", default="1,50")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes of each proxy (default: cores)")
    parser.add_argument("--json", action="store_true", help="print results as JSON too")
    args = parser.parse_args()
    ensure_tools()
    connections = [int(c) for c in args.connections.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="portal-es-bench-"))
    upstream_port, nginx_port, portal_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start_nginx(workdir, "upstream", 1, f"""
    server {{
        listen 127.0.0.1:{upstream_port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
    }}"""))
        processes.append(start_nginx(workdir, "proxy", args.workers, f"""
    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{nginx_port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_buffering on;
        }}
    }}"""))
        routes = workdir / "routes.json"
        routes.write_text(json.dumps([{"domain": "bench.test",
                                       "targets": [f"http://127.0.0.1:{upstream_port}"]}]))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "portal_es.adapters.proxy", "--http",
             f"127.0.0.1:{portal_port}", "--routes", str(routes), "--workers",
             str(args.workers), "--cert-dir", str(workdir / "certs")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in (upstream_port, nginx_port, portal_port):
            wait_port(port)

        servers = [("direct", upstream_port, processes[0].pid),
                   ("nginx", nginx_port, processes[1].pid),
                   ("portal-es", portal_port, processes[2].pid)]
        rows: list[tuple[int, str, Result]] = []
        for c in connections:
            runs: dict[str, list[Result]] = {name: [] for name, _, _ in servers}
            for _, port, pid in servers:
                wrk(port, c, 1, pid)  # warm up: connections, pools, caches
            for r in range(args.repeat):
                # Interleaved, order rotating: a noisy neighbour hits every server alike.
                for name, port, pid in servers[r % 3:] + servers[: r % 3]:
                    runs[name].append(wrk(port, c, args.seconds, pid))
            rows += [(c, name, median(runs[name])) for name, _, _ in servers]
        print_table(rows, args.workers, args.seconds, args.repeat)
        if args.json:
            print(json.dumps([{"connections": c, "server": n, **r.__dict__} for c, n, r in rows]))
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM if process.args[0] == sys.executable
                                else signal.SIGQUIT)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(rows: list[tuple[int, str, Result]], workers: int, seconds: int,
                repeat: int) -> None:
    print(f"\nloopback, {os.cpu_count()} cores, {workers} worker(s) per proxy, median of "
          f"{repeat} interleaved {seconds} s runs, upstream = nginx (1 worker) answering "
          f"{len(BODY)} bytes; cpu us/req = CPU time of that server's processes per request\n")
    print(f"{'conns':>5}  {'server':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'+p50 ms':>8} {'cpu us/req':>10} {'errors':>6}")
    by = {(c, n): r for c, n, r in rows}
    for c, name, r in rows:
        added = f"{r.p50_ms - by[(c, 'direct')].p50_ms:8.3f}" if name != "direct" else " " * 8
        print(f"{c:>5}  {name:<10} {r.rps:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} "
              f"{added} {r.cpu_us:>10.1f} {r.errors:>6}")
    print()
    for c in sorted({c for c, _, _ in rows}):
        portal, nginx = by[(c, "portal-es")], by[(c, "nginx")]
        print(f"{c:>3} connection(s): portal-es/nginx = {portal.rps / nginx.rps:.0%} of req/s, "
              f"added p50 {portal.p50_ms - by[(c, 'direct')].p50_ms:.3f} ms "
              f"(nginx {nginx.p50_ms - by[(c, 'direct')].p50_ms:.3f} ms)")


if __name__ == "__main__":
    main()
