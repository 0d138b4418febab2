"""A portal-es cluster for tests: real node processes, each in its own network namespace with
its own nftables data plane, on the machine's PostgreSQL and RabbitMQ.

A namespace cannot reach the host's 127.0.0.1, so:
- PostgreSQL is reached through its unix socket (db-connection ...?host=/var/run/postgresql);
- RabbitMQ through a unix-socket bridge: one socat on the host (unix socket -> 127.0.0.1:5672)
  and one in each namespace (127.0.0.1:5672 in the namespace -> that unix socket);
- the test calls each node's API from a thread inside its namespace (tests.netns.run_in).
Nothing is routed anywhere else. Each cluster has its own exchange and queue names (a random
cluster name), its own namespaces; all are removed afterwards, also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aio_pika

from portal_es.adapters import store
from portal_es.adapters.broker import Signer
from portal_es.adapters.kernel.nftables import NftablesDataplane, nftables_available
from portal_es.domain.state import BalancerState
from portal_es.service.app import PortalApplication
from projections.l4 import desired_services
from projections.state_view import StateView
from tests.conftest import reset_postgres, unavailable
from tests.http import Answer, call
from tests.netns import NetnsUnavailable, run_in, sh
from tests.nodes import NsPortal

T = TypeVar("T")
PG_SOCKET = "/var/run/postgresql"
# The database `test` by default; PORTAL_ES_CLUSTER_PG_DB names another one (so that a
# developer can run these while other suites use `test`).
PG_DB = os.environ.get("PORTAL_ES_CLUSTER_PG_DB", "test")
PG_URL = f"postgresql://postgres@/{PG_DB}?host={PG_SOCKET}"
AMQP = ("127.0.0.1", 5672)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
CIPHER = "gR60mTuoRo38fasUtuMcxot8Bggeuyv9paiJCU53ItU="
VIP_IFACE = "vip0"
COLLECTIONS = ("services", "routes", "certs", "vips", "errors")


def require() -> None:
    """Root, namespaces, nftables, socat, PostgreSQL's socket and RabbitMQ; else unavailable()
    (a failure with CI=true)."""
    if os.geteuid() != 0:
        unavailable("cluster tests need root (network namespaces, nftables)")
    if shutil.which("socat") is None:
        unavailable("cluster tests need socat (the RabbitMQ bridge into namespaces)")
    if not nftables_available():
        unavailable("nftables is not usable here (libnftables1 missing)")
    if not Path(PG_SOCKET, ".s.PGSQL.5432").exists():
        unavailable(f"PostgreSQL's socket is not in {PG_SOCKET}")
    if not amqp_listening():
        unavailable("RabbitMQ is not listening on 127.0.0.1:5672")


def amqp_listening(wait: float = 30.0) -> bool:
    """RabbitMQ accepts connections (waiting a little: CI starts it detached just before)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection(AMQP, timeout=2):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


def until(check: Callable[[], T], timeout: float, what: str, step: float = 0.1) -> T:
    """Poll `check` until it returns something truthy (bounded in time)."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {last!r})")
        time.sleep(step)
        last = check()
    return last


@dataclass
class Node(NsPortal):
    name: str = ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP (alive to the kernel, silent to the cluster) or SIGCONT."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def get(self, path: str) -> Any:
        answer = self.api("GET", path)
        assert answer.status == 200, (path, answer.status, answer.text)
        return answer.json

    def proxy(self, host: str, path: str = "/") -> Answer:
        """A request to this node's HTTP proxy (from inside its namespace)."""
        assert self.process is not None
        args = list(self.process.args)  # type: ignore[arg-type]
        address = args[args.index("--proxy-http") + 1]
        return run_in(self.netns, lambda: call("GET", f"http://{address}{path}",
                                               headers={"Host": host}))

    def me(self) -> dict[str, Any]:
        return next(r for r in self.get("/cluster/nodes") if r["self"])

    def kernel_drift(self, state: BalancerState) -> dict[str, list[str]]:
        """How this node's kernel differs from `state` (read by the test, not the node)."""
        with NftablesDataplane(netns=self.netns) as plane:
            drift = plane.drift(desired_services(state))
        return {"missing": drift.missing, "unexpected": drift.unexpected,
                "different": drift.different}

    def addresses(self, interface: str = VIP_IFACE) -> list[str]:
        out = sh("ip", "-n", self.netns, "-j", "addr", "show", "dev", interface)
        return sorted(f"{a['local']}/{a['prefixlen']}" for i in json.loads(out)
                      for a in i.get("addr_info", []) if a.get("family") == "inet")

    def ruleset(self) -> str:
        return sh("ip", "netns", "exec", self.netns, "nft", "list", "table", "ip", "portal_es",
                  check=False)


@dataclass
class Cluster:
    """`size` nodes n1..nN; nodes listed in `no_vip_iface` lack the interface vip0."""

    tmp: Path
    size: int = 3
    no_vip_iface: tuple[str, ...] = ()
    node_timeout: float = 2.0
    apply_timeout: float = 10.0
    extra: list[str] = field(default_factory=list)
    id: str = field(default_factory=lambda: secrets.token_hex(3))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    nodes: list[Node] = field(default_factory=list)
    _bridges: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _app: PortalApplication | None = None

    @property
    def name(self) -> str:
        return f"pes-test-{self.id}"

    @property
    def socket_path(self) -> str:
        return str(self.tmp / "amqp.sock")

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Cluster:
        reset_postgres(PG_URL)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._bridges.append(subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self.socket_path},fork,unlink-early",
             f"TCP:{AMQP[0]}:{AMQP[1]},nodelay"], stderr=subprocess.DEVNULL))
        until(lambda: Path(self.socket_path).exists(), 5, "the AMQP bridge socket")
        for i in range(1, self.size + 1):
            self._add_node(f"n{i}")
        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(lambda n: n.start(), self.nodes))
        self.wait_alive()
        return self

    def _add_node(self, name: str) -> None:
        ns = f"pes-{self.id}-{name}"
        try:
            sh("ip", "netns", "add", ns)
        except (RuntimeError, FileNotFoundError) as e:
            raise NetnsUnavailable(f"cannot create a network namespace: {e}") from e
        self._namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        if name not in self.no_vip_iface:  # a veth pair, both ends inside the namespace
            sh("ip", "-n", ns, "link", "add", VIP_IFACE, "type", "veth", "peer", "name",
               f"{VIP_IFACE}p")
            sh("ip", "-n", ns, "link", "set", VIP_IFACE, "up")
            sh("ip", "-n", ns, "link", "set", f"{VIP_IFACE}p", "up")
        self._bridges.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, "socat",
             f"TCP-LISTEN:{AMQP[1]},bind=127.0.0.1,reuseaddr,fork,nodelay",
             f"UNIX-CONNECT:{self.socket_path}"], stderr=subprocess.DEVNULL))
        self.nodes.append(Node(
            self.tmp / name, db_connection=PG_URL, kernel=True, netns=ns, name=name,
            extra=["--balancer", "nftables", "--node-name", name, "--cluster-name", self.name,
                   "--cluster-connection", AMQP_URL, "--cluster-token", self.token,
                   "--cert-key-cipher", CIPHER, "--node-timeout", str(self.node_timeout),
                   "--heartbeat-interval", str(self.node_timeout / 4), "--drain-timeout", "0",
                   "--apply-timeout", str(self.apply_timeout), "--change-timeout", "20",
                   "--log-level", "INFO",
                   *self.extra],
        ))

    def wait_alive(self, names: list[str] | None = None, timeout: float = 30) -> None:
        """Until every named node sees every named node alive."""
        names = names or [n.name for n in self.nodes]

        def all_alive() -> bool:
            for name in names:
                rows = {r["node"]: r for r in self.node(name).get("/cluster/nodes")}
                if any(rows.get(n, {}).get("health") not in ("alive", "failing") for n in names):
                    return False
            return True

        until(all_alive, timeout, f"{names} alive for each other", step=0.2)

    def stop(self) -> None:
        def stop(node: Node) -> None:
            with contextlib.suppress(Exception):
                node.stop()

        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(stop, self.nodes))
        for bridge in self._bridges:
            bridge.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                bridge.wait(5)
        for ns in self._namespaces:  # its nftables table and vips go with it
            sh("ip", "netns", "del", ns, check=False)
        if self._app is not None:
            self._app.close()
        with contextlib.suppress(Exception):
            asyncio.run(self._delete_broker_objects())

    async def _delete_broker_objects(self) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            for node in self.nodes:
                await channel.queue_delete(f"{self.name}.log.{node.name}")
            await channel.exchange_delete(self.name)

    # --- the log, as the test reads it ------------------------------------------------------

    @property
    def app(self) -> PortalApplication:
        if self._app is None:
            url = store.database_url(PG_URL, self.tmp)
            self._app = PortalApplication(store.application_env(url, CIPHER))
        return self._app

    def fold(self) -> BalancerState:
        """The whole log folded by the test itself."""
        view = StateView(self.app)
        view.catch_up()
        return view.state

    def fold_version(self) -> int:
        view = StateView(self.app)
        view.catch_up()
        return view.version

    def head(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    def expected_gets(self, state: BalancerState) -> dict[str, Any]:
        return {
            "services": [s.portal_json() for s in state.services.values()],
            "routes": [r.portal_json() for r in state.routes.values()],
            "certs": [c.portal_json() for c in state.certs.values()],
            "vips": [v.portal_json() for v in state.vips.values()],
            "errors": state.error_pages.portal_json(),
        }

    def gets(self, node: Node) -> dict[str, Any]:
        return {c: node.get(f"/{c}") for c in COLLECTIONS}

    def wait_converged(self, timeout: float = 60) -> BalancerState:
        """Until every node applied the whole log with no errors; then check each node's
        kernel and GETs against the test's own fold of the log."""
        def converged() -> bool:
            head = self.head()
            return all(n.me()["position"] >= head and not n.me()["errors"] for n in self.nodes)

        until(converged, timeout, "every node at the head of the log", step=0.2)
        state = self.fold()
        expected = self.expected_gets(state)
        for node in self.nodes:
            assert node.kernel_drift(state) == {"missing": [], "unexpected": [],
                                                "different": []}, node.name
            assert self.gets(node) == expected, node.name
        return state

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        node = self.nodes[0]
        position: int | None = since
        while position is not None:
            page = node.get(f"/events?since={position}&limit=1000")
            out += page["events"]
            position = page["next"]
        return out


def write(node: Node, method: str, path: str, body: Any = None,
          headers: dict[str, str] | None = None) -> Answer:
    return node.api(method, path, body, headers=headers or {})


Request = tuple[str, str, Any]  # method, path, body
Result = tuple[float, int, str]  # seconds, status, text


def writer_loop(node: Node, requests: list[Request], max_seconds: float,
                out: list[Result] | None = None) -> list[Result]:
    """Send `requests` one after the other from inside the node's namespace (bounded in count
    and time). Results are appended to `out` as they come (other threads watch progress)."""
    results: list[Result] = [] if out is None else out

    def go() -> list[Result]:
        deadline = time.monotonic() + max_seconds
        for method, path, body in requests:
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            answer = call(method, node.url + path, body)
            results.append((time.perf_counter() - started, answer.status, answer.text))
        return results

    return run_in(node.netns, go, timeout=max_seconds + 30)


@dataclass
class Writers:
    """Writer threads, one per (node, requests), started together."""

    jobs: list[tuple[Node, list[Request]]]
    max_seconds: float
    results: list[list[Result]] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Writers:
        for node, requests in self.jobs:
            out: list[Result] = []
            self.results.append(out)
            thread = threading.Thread(target=writer_loop,
                                      args=(node, requests, self.max_seconds, out), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def done(self) -> int:
        return sum(len(r) for r in self.results)

    def wait_for(self, count: int, timeout: float) -> None:
        until(lambda: self.done() >= count, timeout, f"{count} writes answered", step=0.05)

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join(self.max_seconds + 60)

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for results in self.results:
            for _, status, _ in results:
                out[status] = out.get(status, 0) + 1
        return out


class BrokerTap:
    """The test's own consumer on the cluster's exchange (acks and heartbeats), and a way to
    publish raw messages (forged ones)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._connection: Any = None
        self._exchange: Any = None

    def __enter__(self) -> BrokerTap:
        self._thread.start()
        self._call(self._open())
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._call(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(15)

    async def _open(self) -> None:
        self._connection = await aio_pika.connect(AMQP_URL)
        channel = await self._connection.channel()
        self._exchange = await channel.declare_exchange(
            self.cluster.name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._exchange, "ack.*")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.seen.append((message.routing_key or "", json.loads(message.body)))

        await queue.consume(on_message, no_ack=True)

    def acks(self) -> list[dict[str, Any]]:
        return [body for key, body in self.seen if key.startswith("ack.")]

    def publish(self, routing_key: str, body: bytes, signature: str | None) -> None:
        headers = {} if signature is None else {"x-portal-es-signature": signature}

        async def go() -> None:
            await self._exchange.publish(
                aio_pika.Message(body, headers=headers), routing_key=routing_key)

        self._call(go())


def forged_signature(routing_key: str, body: bytes) -> str:
    """A well-formed signature under a token that is not the cluster's."""
    return Signer("not-the-cluster-token").sign(routing_key, body)


@contextlib.contextmanager
def cluster(tmp: Path, **options: Any) -> Iterator[Cluster]:
    require()
    c = Cluster(tmp, **options)
    try:
        c.start()
        yield c
    except NetnsUnavailable as e:
        unavailable(str(e))
    except BaseException:
        for node in c.nodes:  # shown by pytest with the failure
            print(f"--- {node.name} (last 40 lines of {node.work_dir / 'server.log'})")
            print("\n".join(node.log.splitlines()[-40:]))
        raise
    finally:
        c.stop()
