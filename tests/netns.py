"""Network-namespace test topologies: real packets, never the machine's own network.

Everything is created inside namespaces this module makes (unique names: prefix + random
suffix) and removed again, also when a test fails: the host namespace, its interfaces and
addresses are never touched. Addresses (10.x) exist only inside those namespaces.

Topology (`Topology.build`)::

    client (10.77.0.100) ─┐
    lb     (10.77.0.2)   ─┤ bridge "br0" in namespace <id>-sw
    be1..N (10.77.0.11..)─┘

`run_in(ns, fn)` runs a Python callable on a fresh thread that entered the namespace (setns on
that thread only); `Topology.sh(ns, ...)` runs a command there (`ip netns exec`). Backends are
small bounded TCP/UDP servers answering with their name; `Client.spread` makes N new
connections and counts who answered. Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SUBNET = "10.77.0"
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsUnavailable(RuntimeError):
    """Namespaces (or the tools to build them) are not available on this machine."""


def _enter(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in(ns: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run `fn` on a new thread inside namespace `ns`; return its result or raise its error.
    The thread is thrown away afterwards, so no other code ever runs in the wrong namespace."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _enter(ns)
            box["result"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    thread = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} in {ns} did not end in {timeout} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def sh(*args: str, timeout: float = 10.0, check: bool = True) -> str:
    """A command in the host namespace that only manages namespaces (ip netns add/del)."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


# --- bounded servers and clients ----------------------------------------------------------------


@dataclass
class EchoServer:
    """Answers every TCP connection / UDP datagram with its name; stops by `stop()` or after
    `max_seconds` / `max_requests`, whichever comes first."""

    name: str
    port: int
    proto: str = "tcp"
    max_seconds: float = 120.0
    max_requests: int = 100_000
    hold: bool = False  # TCP: keep connections open and echo every line (for drain tests)
    served: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _sock: socket.socket | None = None

    def start(self, ns: str) -> EchoServer:
        def bind() -> socket.socket:  # in the namespace: the socket stays bound there
            kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(socket.AF_INET, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", self.port))
            if self.proto == "tcp":
                s.listen(512)
            s.settimeout(0.2)
            return s

        self._sock = run_in(ns, bind)
        threading.Thread(target=self._serve, daemon=True, name=f"echo-{self.name}").start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline \
                and self.served < self.max_requests:
            try:
                if self.proto == "udp":
                    _, peer = self._sock.recvfrom(2048)
                    self._sock.sendto(self.name.encode(), peer)
                else:
                    conn, _ = self._sock.accept()
                    self._answer(conn, deadline)
                self.served += 1
            except (TimeoutError, OSError):
                continue
        self._sock.close()

    def _answer(self, conn: socket.socket, deadline: float) -> None:
        if not self.hold:
            with conn:
                conn.sendall(self.name.encode())
            return

        def lines() -> None:  # echo "<name>" for every line until the peer closes
            with conn:
                conn.settimeout(0.5)
                while not self._stop.is_set() and time.monotonic() < deadline:
                    try:
                        if not conn.recv(256):
                            return
                        conn.sendall(self.name.encode())
                    except TimeoutError:
                        continue
                    except OSError:
                        return

        threading.Thread(target=lines, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def ask(host: str, port: int, proto: str = "tcp", timeout: float = 1.0,
        source: str | None = None) -> str:
    """One new connection (or datagram): the answering server's name, '' on failure.
    Call inside a namespace (run_in)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        try:
            if source:
                s.bind((source, 0))
            if proto == "udp":
                s.sendto(b"?", (host, port))
                return s.recvfrom(2048)[0].decode()
            s.connect((host, port))
            return s.recv(256).decode()
        except OSError:
            return ""


def spread(ns: str, host: str, port: int, n: int, proto: str = "tcp",
           timeout: float = 1.0, max_seconds: float = 20.0) -> Counter[str]:
    """N new connections from namespace `ns`: how many each server answered ('' = failed)."""

    def go() -> Counter[str]:
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + max_seconds
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            counts[ask(host, port, proto, timeout)] += 1
        return counts

    return run_in(ns, go, timeout=max_seconds + 5)


class Held:
    """A TCP connection kept open (made inside a namespace) to check it survives changes."""

    def __init__(self, ns: str, host: str, port: int, timeout: float = 2.0) -> None:
        def connect() -> socket.socket:
            s = socket.create_connection((host, port), timeout=timeout)
            s.settimeout(timeout)
            return s

        self.sock = run_in(ns, connect)

    def ping(self) -> str:
        """Send a line, return the server's answer ('' when the connection is dead)."""
        try:
            self.sock.sendall(b"ping\n")
            return self.sock.recv(256).decode()
        except OSError:
            return ""

    def close(self) -> None:
        self.sock.close()


# --- topologies ---------------------------------------------------------------------------------


@dataclass
class Topology:
    """client, lb and backends on one bridge, each its own namespace (see module doc)."""

    prefix: str = "pes"
    backends: int = 3
    id: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    servers: list[EchoServer] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{self.id}-{role}"

    @property
    def client(self) -> str:
        return self.ns("client")

    @property
    def lb(self) -> str:
        return self.ns("lb")

    def backend(self, i: int) -> str:
        return self.ns(f"be{i}")

    @staticmethod
    def address(role: str) -> str:
        if role == "client":
            return f"{SUBNET}.100"
        if role == "lb":
            return f"{SUBNET}.2"
        return f"{SUBNET}.{10 + int(role.removeprefix('be'))}"

    def roles(self) -> list[str]:
        return ["client", "lb"] + [f"be{i}" for i in range(1, self.backends + 1)]

    def sh(self, role: str, *args: str, check: bool = True, timeout: float = 10.0) -> str:
        """A command inside this topology's namespace `role` (ip netns exec)."""
        return sh("ip", "netns", "exec", self.ns(role), *args, check=check, timeout=timeout)

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def build(self) -> Topology:
        try:
            self._add_ns(self.ns("sw"))
        except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as e:
            raise NetnsUnavailable(f"cannot create a network namespace: {e}") from e
        try:
            sw = self.ns("sw")
            sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", sw, "link", "set", "br0", "up")
            for i, role in enumerate(self.roles()):
                self._add_ns(self.ns(role))
                # Both ends are created inside the switch namespace, then one is moved: no
                # interface ever exists in the host namespace.
                sh("ip", "-n", sw, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0")
                sh("ip", "-n", sw, "link", "set", "eth0", "netns", self.ns(role))
                sh("ip", "-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
                sh("ip", "-n", self.ns(role), "addr", "add", f"{self.address(role)}/24",
                   "dev", "eth0")
                sh("ip", "-n", self.ns(role), "link", "set", "eth0", "up")
            self.sh("lb", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        except BaseException:
            self.destroy()
            raise
        return self

    def add_vip(self, vip: str) -> None:
        """The service address: local on the balancer (on lo, so LB-local clients work), and
        routed to the balancer by the client and the backends."""
        self.sh("lb", "ip", "addr", "add", f"{vip}/32", "dev", "lo")
        for role in self.roles():
            if role != "lb":
                self.sh(role, "ip", "route", "replace", f"{vip}/32", "via", self.address("lb"))

    def start_backends(self, port: int, proto: str = "tcp", hold: bool = False,
                       max_seconds: float = 120.0) -> list[EchoServer]:
        started = [EchoServer(f"be{i}", port, proto, max_seconds=max_seconds, hold=hold)
                   .start(self.backend(i)) for i in range(1, self.backends + 1)]
        self.servers += started
        return started

    def destroy(self) -> None:
        for server in self.servers:
            server.stop()
        for name in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                sh("ip", "netns", "del", name, check=False)
        self.namespaces.clear()


@contextlib.contextmanager
def topology(backends: int = 3, prefix: str = "pes") -> Iterator[Topology]:
    """A built topology, always destroyed afterwards (also when the test fails)."""
    topo = Topology(prefix=prefix, backends=backends).build()
    try:
        yield topo
    finally:
        topo.destroy()


@contextlib.contextmanager
def namespace(prefix: str = "pes") -> Iterator[str]:
    """One empty namespace (lo up), always removed afterwards (benchmarks, unit plumbing)."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    try:
        sh("ip", "netns", "add", name)
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as e:
        raise NetnsUnavailable(f"cannot create a network namespace: {e}") from e
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)
