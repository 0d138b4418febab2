"""Data-path cost of the nftables balancer: HTTP requests/s through the service address vs
straight to the same backend, from the same client, in the same run (reference = direct).

Topology (namespaces created here, removed afterwards): client -> lb (NftablesDataplane,
masquerade) -> one nginx backend. Load: wrk (Debian `wrk`), a few seconds per run:
- keep-alive: many requests per connection (conntrack fast path after the first packet);
- new connection per request (`Connection: close`): every request crosses the nat chains.
`--extra N` loads N other services first, to show that dispatch does not grow with them.

    apt-get install -y wrk nginx-light
    .venv/bin/python bench/datapath.py [--seconds 3] [--extra 1000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portal_es.adapters.kernel.nftables import NftablesDataplane
from projections.l4 import Backend, VirtualService
from tests.netns import Topology, topology

VIP = "10.77.1.1"
NGINX_CONF = """daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};
  fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 8080 reuseport; location / {{ return 200 "be1\\n"; }} }} }}
"""


def start_nginx(topo: Topology, workdir: str) -> subprocess.Popen[bytes]:
    conf = Path(workdir) / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=workdir))
    proc = subprocess.Popen(["ip", "netns", "exec", topo.backend(1), "nginx", "-c", str(conf),
                             "-p", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # ready when it answers
        done = subprocess.run(["ip", "netns", "exec", topo.client, "wrk", "-t1", "-c1", "-d1s",
                               f"http://{topo.address('be1')}:8080/"], capture_output=True,
                              text=True, timeout=10)
        if "Requests/sec" in done.stdout and "Socket errors" not in done.stdout:
            return proc
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("nginx did not answer in the backend namespace")


def wrk(topo: Topology, url: str, seconds: int, close: bool) -> float:
    args = ["ip", "netns", "exec", topo.client, "wrk", "-t2", "-c32", f"-d{seconds}s", url]
    if close:
        args[5:5] = ["-H", "Connection: close"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 20).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  note: {url}: " + " ".join(
            ln.strip() for ln in out.splitlines() if "errors" in ln or "Non-2xx" in ln))
    return float(match.group(1))


def extra_services(n: int) -> dict[str, VirtualService]:
    out = {}
    for i in range(n):
        host = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
        bs = tuple(Backend(f"10.200.0.{j + 1}", 8080, 1, "m") for j in range(3))
        sid = f"tcp-{host.replace('.', '_')}-80"
        out[sid] = VirtualService(sid, host, 80, "tcp", "rr", 0, "", bs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--extra", type=int, default=1000)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install -y wrk nginx-light")
    with topology(backends=1, prefix="pes-dp") as topo, \
            tempfile.TemporaryDirectory() as workdir, \
            NftablesDataplane(netns=topo.lb) as plane:
        topo.add_vip(VIP)
        nginx = start_nginx(topo, workdir)
        try:
            backend = Backend(topo.address("be1"), 8080, 1, "m")
            svc = VirtualService("tcp-10_77_1_1-80", VIP, 80, "tcp", "rr", 0, "", (backend,))
            desired = {**extra_services(args.extra), svc.id: svc}
            plane.sync(desired)
            direct_url = f"http://{topo.address('be1')}:8080/"
            vip_url = f"http://{VIP}:80/"
            print(f"HTTP through the nftables balancer vs direct ({args.seconds} s per run, "
                  f"wrk -t2 -c32, nginx backend, {len(desired)} services loaded)")
            print(f"{'load':<26} | {'direct req/s':>12} | {'via VIP req/s':>13} | {'ratio':>6}")
            print("-" * 66)
            for label, close in (("keep-alive", False), ("new connection / request", True)):
                direct = wrk(topo, direct_url, args.seconds, close)
                via = wrk(topo, vip_url, args.seconds, close)
                print(f"{label:<26} | {direct:>12.0f} | {via:>13.0f} | {via / direct:>6.2f}",
                      flush=True)
        finally:
            nginx.terminate()
            nginx.wait(5)
            plane.flush()


if __name__ == "__main__":
    main()
