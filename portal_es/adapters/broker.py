"""The cluster's messages on RabbitMQ (aio-pika): one durable topic exchange, signed messages.

Routing keys (the exchange is named after the cluster, `cluster-name`):
- `log`              event batches from the relay, in log order: {"after": P, "events": [...]}.
                     Persistent, into each node's durable log queue (bounded: the store fills
                     whatever a full queue dropped).
- `ack.<node>`       a node applied the log up to a position (with its errors, if any).
- `heartbeat.<node>` a node is alive, and how far it is.
Acks and heartbeats are transient and go to a per-connection exclusive queue: stale ones are
worthless, and a node that reconnects learns the present from the next ones.

Every message body is JSON {"kind", "node", "time", "data"}, signed with HMAC-SHA256 under the
cluster token over the routing key and the body (header `x-portal-es-signature`). A message
with a missing or wrong signature, or whose kind does not match its routing key, is dropped
and logged, never handed on. Control messages older than CONTROL_MAX_AGE are dropped too
(a replayed heartbeat must not raise the dead).

The connection is not aio-pika's robust one: on any loss this adapter reconnects itself,
re-declares, re-binds, calls `on_connected` (the node catches up from the store there, after
its queue is bound again, so nothing falls between the two) and only then consumes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from eventsourcing.persistence import Notification

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-portal-es-signature"
SCHEME = "v1="
LOG = "log"
ACK = "ack"
HEARTBEAT = "heartbeat"
KINDS = (LOG, ACK, HEARTBEAT)
CONTROL_MAX_AGE = 30.0  # seconds; generous for clock skew, short for replays
PREFETCH = 256
PUBLISH_TIMEOUT = 5.0
LOG_QUEUE_MAX = 10_000  # messages a down node's queue keeps (drop-head beyond: the store has them)
QUEUE_EXPIRES_MS = 3_600_000  # a node gone for an hour: its log queue is deleted
AMQP_HEARTBEAT = 5  # seconds: a silent broker link is noticed within ~2 of these


class BrokerUnavailable(RuntimeError):
    """Not connected to the broker (or it did not confirm): retry later, the store has it."""


class Forged(ValueError):
    """A message that is not signed with the cluster token (or is otherwise not ours)."""


@dataclass(frozen=True)
class Envelope:
    kind: str
    node: str
    time: float
    data: dict[str, Any]


class Signer:
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("a cluster token is required to sign messages")
        self._key = hashlib.sha256(b"portal-es cluster v1\n" + token.encode()).digest()

    def sign(self, routing_key: str, body: bytes) -> str:
        mac = hmac.new(self._key, routing_key.encode() + b"\n" + body, hashlib.sha256)
        return SCHEME + mac.hexdigest()

    def verify(self, routing_key: str, body: bytes, signature: object) -> bool:
        if not isinstance(signature, str):
            return False
        return hmac.compare_digest(self.sign(routing_key, body), signature)

    def seal(self, kind: str, node: str, data: dict[str, Any]) -> tuple[str, bytes, str]:
        """(routing key, body, signature) of a message."""
        routing_key = kind if kind == LOG else f"{kind}.{node}"
        body = json.dumps({"kind": kind, "node": node, "time": time.time(), "data": data},
                          separators=(",", ":")).encode()
        return routing_key, body, self.sign(routing_key, body)

    def open(self, routing_key: str, body: bytes, signature: object) -> Envelope:
        if not self.verify(routing_key, body, signature):
            raise Forged("missing or wrong signature")
        try:
            raw = json.loads(body)
            envelope = Envelope(str(raw["kind"]), str(raw["node"]), float(raw["time"]),
                                dict(raw["data"]))
        except (ValueError, KeyError, TypeError) as e:
            raise Forged(f"malformed body: {e}") from None
        expected = envelope.kind if envelope.kind == LOG else f"{envelope.kind}.{envelope.node}"
        if envelope.kind not in KINDS or expected != routing_key:
            raise Forged(f"kind {envelope.kind!r} does not match routing key {routing_key!r}")
        return envelope


def with_heartbeat(url: str, seconds: int = AMQP_HEARTBEAT) -> str:
    """The AMQP URL with a short connection heartbeat, unless it sets one."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", str(seconds))
    return urlunsplit(parts._replace(query=urlencode(query)))


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


LogHandler = Callable[[Envelope], Awaitable[None]]
ControlHandler = Callable[[Envelope], None]
Connected = Callable[[], Awaitable[None]]


class Broker:
    def __init__(
        self, url: str, cluster: str, node: str, token: str, *,
        on_log: LogHandler, on_control: ControlHandler, on_connected: Connected,
    ) -> None:
        self.url = with_heartbeat(url)
        self.cluster = cluster
        self.node = node
        self.signer = Signer(token)
        self.on_log = on_log
        self.on_control = on_control
        self.on_connected = on_connected
        self.connected = asyncio.Event()
        self.dropped = 0  # forged or malformed messages seen
        self.log_queue = f"{cluster}.log.{node}"
        self.control_queue = f"{cluster}.control.{node}.{uuid.uuid4().hex[:8]}"
        self._exchange: AbstractExchange | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._last_error = ""

    # --- publishing -------------------------------------------------------------------------

    async def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Publish and wait for the broker's confirm; BrokerUnavailable if it cannot."""
        exchange = self._exchange
        if exchange is None:
            raise BrokerUnavailable("not connected to the broker")
        routing_key, body, signature = self.signer.seal(kind, self.node, data)
        message = aio_pika.Message(
            body, content_type="application/json", headers={SIGNATURE_HEADER: signature},
            delivery_mode=(aio_pika.DeliveryMode.PERSISTENT if kind == LOG
                           else aio_pika.DeliveryMode.NOT_PERSISTENT),
        )
        try:
            await exchange.publish(message, routing_key, mandatory=False,
                                   timeout=PUBLISH_TIMEOUT)
        except Exception as e:  # nack, closed channel, lost connection, timeout: all retryable
            raise BrokerUnavailable(f"publish {routing_key}: {type(e).__name__}: {e}") from e

    # --- receiving --------------------------------------------------------------------------

    def _open(self, message: AbstractIncomingMessage) -> Envelope | None:
        try:
            return self.signer.open(message.routing_key or "", message.body,
                                    (message.headers or {}).get(SIGNATURE_HEADER))
        except Forged as e:
            self.dropped += 1
            log.warning("dropped a message on %r (not applied): %s", message.routing_key, e)
            return None

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        envelope = self._open(message)
        if envelope is None:
            return
        if abs(time.time() - envelope.time) > CONTROL_MAX_AGE:
            log.warning("dropped a stale %s from %s (%.0f s old)", envelope.kind,
                        envelope.node, time.time() - envelope.time)
            return
        try:
            self.on_control(envelope)
        except Exception:
            log.exception("handling %s from %s", envelope.kind, envelope.node)

    async def _on_log_message(self, message: AbstractIncomingMessage) -> None:
        # Enqueued synchronously, in delivery order: one task applies them, one at a time.
        self._inbox.put_nowait(message)

    async def _process_log(self) -> None:
        while True:
            message = await self._inbox.get()
            envelope = self._open(message)
            if envelope is not None:
                try:
                    await self.on_log(envelope)
                except Exception:  # the store is the truth: the node catches up from it later
                    log.exception("applying a log batch failed; it will come from the store")
            await message.ack()

    # --- the connection ---------------------------------------------------------------------

    async def _declare(self, channel: AbstractChannel) -> tuple[Any, Any]:
        exchange = await channel.declare_exchange(
            self.cluster, aio_pika.ExchangeType.TOPIC, durable=True)
        log_queue = await channel.declare_queue(
            self.log_queue, durable=True,
            arguments={"x-max-length": LOG_QUEUE_MAX, "x-overflow": "drop-head",
                       "x-expires": QUEUE_EXPIRES_MS},
        )
        await log_queue.bind(exchange, LOG)
        control = await channel.declare_queue(self.control_queue, exclusive=True,
                                              auto_delete=True)
        await control.bind(exchange, f"{ACK}.*")
        await control.bind(exchange, f"{HEARTBEAT}.*")
        self._exchange = exchange
        return log_queue, control

    async def _session(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=5)
        processor: asyncio.Task[None] | None = None
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=PREFETCH)
            log_queue, control = await self._declare(channel)
            self.connected.set()
            log.info("connected to the broker %s (exchange %s)", redacted(self.url),
                     self.cluster)
            self._last_error = ""
            await self.on_connected()
            await control.consume(self._on_control, no_ack=True)
            processor = asyncio.create_task(self._process_log(), name="broker-log")
            await log_queue.consume(self._on_log_message)
            closed = [asyncio.ensure_future(connection.closed()),
                      asyncio.ensure_future(channel.closed()), processor]
            await asyncio.wait(closed, return_when=asyncio.FIRST_COMPLETED)
            for future in closed[:2]:
                future.cancel()
        finally:
            self.connected.clear()
            self._exchange = None
            if processor is not None:
                processor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await processor
            while not self._inbox.empty():  # unacked: the broker redelivers them
                self._inbox.get_nowait()
            with contextlib.suppress(Exception):
                await connection.close()

    async def run(self) -> None:
        """Stay connected: reconnect after any loss, with a short backoff."""
        backoff = 0.2
        while True:
            try:
                await self._session()
                backoff = 0.2
                log.warning("lost the broker connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                if error != self._last_error:  # once per distinct error, not every retry
                    log.warning("broker %s unavailable: %s", redacted(self.url), error)
                    self._last_error = error
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


# --- the log's records as message data ----------------------------------------------------


def notification_data(
    position: int, originator_id: uuid.UUID, originator_version: int, topic: str, state: bytes
) -> dict[str, Any]:
    return {"id": position, "originator_id": originator_id.hex,
            "originator_version": originator_version, "topic": topic,
            "state": base64.b64encode(state).decode()}


def notifications_from(data: dict[str, Any]) -> tuple[int, list[Notification]]:
    """(after, notifications) of a `log` message."""
    try:
        after = int(data["after"])
        events = [
            Notification(id=int(e["id"]), originator_id=uuid.UUID(e["originator_id"]),
                         originator_version=int(e["originator_version"]), topic=str(e["topic"]),
                         state=base64.b64decode(e["state"]))
            for e in data["events"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise Forged(f"malformed log batch: {e}") from None
    return after, events
