"""A client, a load balancer and three backends in network namespaces, with echo servers, for
IPVS tests inside the VM (tests/vm/ipvs-vm.sh).

    client (10.0.0.2-9) --veth-- lb (10.0.0.1, VIPs) --bridge-- b1 b2 b3 (10.0.1.11-13)

The backends route back through lb (default gateway), so IPVS masquerading sees the replies.
VIP (10.0.0.100) is for NAT services. DIRECT_VIP (10.0.0.200) is also on each backend's
loopback, which direct routing and tunnelling need (the packet arrives still addressed to
it); the NAT VIP must not be there, or a backend would answer a client on lb (whose source
is the VIP) to itself. Every backend answers on TCP and UDP port 8080 (the NAT target) and on
DIRECT_PORTS (DR and tunnel keep the VIP's port): with its name on connect (TCP) or to any
datagram (UDP), then it echoes lines (TCP).

Why not tests/netns.py's topology: there client, lb and backends share one bridge, so a
backend answers the client directly and IPVS masquerading (the backends' gateway must be the
balancer) never sees the reply; and its servers either greet or hold a connection, where the
drain tests need both on one connection. Its namespace entry (`run_in`) is reused.

Python is ~12x slower in the emulated guest and a process start costs up to a second, so the
topology is built with a few `ip -batch` processes, and the echo servers are one thread of
the test process: sockets are created inside a namespace and keep it for their life.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from projections.l4 import Backend, VirtualService
from tests.netns import run_in

VIP = "10.0.0.100"  # NAT services
DIRECT_VIP = "10.0.0.200"  # DR and tunnel services: also on the backends' loopback
LB_FRONT = "10.0.0.1"
CLIENTS = [f"10.0.0.{i}" for i in range(2, 10)]
BACKENDS = {"b1": "10.0.1.11", "b2": "10.0.1.12", "b3": "10.0.1.13"}
NAT_PORT = 8080
DIRECT_PORTS = (86, 87)  # the VIP ports of the direct-routing and tunnel tests
TIMEOUT = 5.0


def sh(script: str) -> str:
    """Run shell commands (set -e); the error carries their output."""
    done = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"failed ({done.returncode}): {script}\n{done.stdout}{done.stderr}")
    return done.stdout


def ipvsadm(args: str) -> str:
    """ipvsadm on lb's table (nsenter: lighter than `ip netns exec`, no sysfs remount)."""
    return sh(f"nsenter --net=/run/netns/lb ipvsadm {args}")


def socket_in(netns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = run_in(netns, lambda: socket.socket(socket.AF_INET, kind))
    s.settimeout(TIMEOUT)
    return s


def _batch(lines: list[str], netns: str | None = None) -> str:
    """`ip -batch` (one process for many commands: each process costs ~0.3 s in the guest)."""
    where = f"-n {netns} " if netns else ""
    return f"ip {where}-batch - <<'EOB'\n" + "\n".join(lines) + "\nEOB"


def _sysctl(netns: str, *settings: str) -> str:
    return f"ip netns exec {netns} sysctl -qw {' '.join(settings)}"


def build() -> None:
    """Create the namespaces, links and addresses (a fresh guest has none of them)."""
    root = [f"netns add {ns}" for ns in ("client", "lb", *BACKENDS)] + [
        "link add br1 type bridge", "link set br1 up",
        "link add c0 netns client type veth peer name l0 netns lb",
        "link add l1 type veth peer name l1b netns lb", "link set l1 master br1 up",
    ]
    per_ns = {
        "client": ["link set lo up", "link set c0 up",
                   *(f"addr add {a}/24 dev c0" for a in CLIENTS)],
        "lb": ["link set lo up", "link set l0 up", "link set l1b up",
               f"addr add {LB_FRONT}/24 dev l0", f"addr add {VIP}/32 dev l0",
               f"addr add {DIRECT_VIP}/32 dev l0", "addr add 10.0.1.1/24 dev l1b"],
    }
    sysctls = [
        # Direct routing and tunnel replies come back through lb with the VIP as source, an
        # address lb owns: accept them (else dropped as martians), and forward them.
        _sysctl("lb", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.accept_local=1",
                "net.ipv4.conf.l1b.accept_local=1", "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.l1b.rp_filter=0"),
    ]
    for ns, addr in BACKENDS.items():
        root += [f"link add {ns}p type veth peer name eth0 netns {ns}",
                 f"link set {ns}p master br1 up"]
        # ipip: the namespace's tunl0 receives the encapsulated packets of forwarder i.
        per_ns[ns] = ["link set lo up", "link set eth0 up", "link set tunl0 up",
                      f"addr add {addr}/24 dev eth0", "route add default via 10.0.1.1",
                      f"addr add {DIRECT_VIP}/32 dev lo"]
        sysctls.append(_sysctl(ns, "net.ipv4.conf.all.rp_filter=0",
                               "net.ipv4.conf.tunl0.rp_filter=0"))
    sh("\n".join(["modprobe ipip", _batch(root),
                  *(_batch(lines, ns) for ns, lines in per_ns.items()), *sysctls]))


@dataclass
class EchoFleet:
    """TCP+UDP echo servers of every backend, served by one thread (selectors)."""

    ports: tuple[int, ...] = (NAT_PORT, *DIRECT_PORTS)
    _sel: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> EchoFleet:
        for name in BACKENDS:
            for port in self.ports:
                self._listen(name, port)
        self._thread = threading.Thread(target=self._serve, name="echo", daemon=True)
        self._thread.start()
        return self

    def _listen(self, name: str, port: int) -> None:
        tcp = socket_in(name)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("0.0.0.0", port))
        tcp.listen(64)
        tcp.setblocking(False)
        self._sel.register(tcp, selectors.EVENT_READ, (self._accept, name))
        udp = socket_in(name, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", port))
        udp.setblocking(False)
        self._sel.register(udp, selectors.EVENT_READ, (self._datagram, name))

    def _accept(self, sock: socket.socket, name: str) -> None:
        conn, _ = sock.accept()
        conn.setblocking(False)
        conn.send(f"{name}\n".encode())
        self._sel.register(conn, selectors.EVENT_READ, (self._echo, name))

    def _datagram(self, sock: socket.socket, name: str) -> None:
        _, peer = sock.recvfrom(2048)
        sock.sendto(f"{name}\n".encode(), peer)

    def _echo(self, conn: socket.socket, name: str) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if data:
            conn.send(data)
        else:
            self._sel.unregister(conn)
            conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                handler, name = key.data
                with contextlib.suppress(OSError):
                    handler(key.fileobj, name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            self._sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]


def _readline(s: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data.decode().strip()


@dataclass
class Conn:
    """An open TCP connection through the balancer: who answered, and can it still talk?"""

    sock: socket.socket
    backend: str

    def echo(self, text: str = "ping") -> str:
        self.sock.sendall(f"{text}\n".encode())
        return _readline(self.sock)

    def close(self) -> None:
        self.sock.close()


def connect(port: int, netns: str = "client", source: str | None = None,
            vip: str = VIP) -> Conn:
    s = socket_in(netns)
    if source:
        s.bind((source, 0))
    s.connect((vip, port))
    return Conn(s, _readline(s))


def ask_tcp(port: int, netns: str = "client", source: str | None = None,
            vip: str = VIP) -> str:
    conn = connect(port, netns, source, vip)
    conn.close()
    return conn.backend


def ask_udp(port: int, netns: str = "client") -> str:
    # A new socket per question: a new source port, so a new IPVS connection entry.
    s = socket_in(netns, socket.SOCK_DGRAM)
    try:
        s.sendto(b"?", (VIP, port))
        return s.recv(256).decode().strip()
    finally:
        s.close()


def tally(ask: Callable[[], str], n: int) -> Counter[str]:
    return Counter(ask() for _ in range(n))


# --- desired state, as the projector would hand it to the data plane ------------------------


def backend(name: str, weight: int = 1, forwarder: str = "m", port: int = NAT_PORT,
            draining: bool = False) -> Backend:
    return Backend(host=BACKENDS[name], port=port, weight=weight, forwarder=forwarder,
                   draining=draining)


def service(port: int, scheduler: str = "rr", backends: tuple[Backend, ...] | None = None,
            protocol: str = "tcp", persistence: int = 0, netmask: str = "",
            host: str = VIP) -> VirtualService:
    """A service on the VIP; by default rr over the three backends, NAT to port 8080."""
    if backends is None:
        backends = tuple(backend(name) for name in BACKENDS)
    sid = f"{protocol}-{host.replace('.', '_')}-{port}"
    return VirtualService(id=sid, host=host, port=port, protocol=protocol, scheduler=scheduler,
                          persistence=persistence, netmask=netmask, backends=backends)


def desired(*services: VirtualService) -> dict[str, VirtualService]:
    return {s.id: s for s in services}


def with_backends(vs: VirtualService, *backends: Backend) -> VirtualService:
    return replace(vs, backends=backends)
