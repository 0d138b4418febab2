"""The outbox relay: the log's new events, in log order, onto the broker (publisher confirms).

The log is the outbox: nothing is written twice (no separate outbox table), and the relay
only ever publishes what is committed. Exactly one relay is active per cluster: the holder
of a PostgreSQL advisory lock. Every node campaigns (while it is connected to the broker);
when the active relay's process dies, PostgreSQL ends its session and frees the lock, and
the next campaigner takes over within CAMPAIGN_INTERVAL.

Each message says which position it follows ("after"), so a consumer knows whether it holds
everything before it (notification ids can have gaps: a gap in ids is not a missed event).
The relay records how far the broker confirmed; a new relay resumes from there, so at worst
a batch is published twice (at-least-once): consumers skip what they applied, by position.
PostgreSQL inserts into the log under a table lock (eventsourcing-sqlalchemy), so ids commit
in order and reading "everything after P" never skips an id that commits later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg

from portal_es.adapters.broker import LOG, Broker, BrokerUnavailable, notification_data
from portal_es.adapters.pglocks import AdvisoryLock

log = logging.getLogger(__name__)

CAMPAIGN_INTERVAL = 0.5  # seconds between attempts to become the relay
POLL_INTERVAL = 1.0  # seconds: look at the log even without a NOTIFY
STEP_DOWN_AFTER = 5.0  # seconds the broker may refuse the active relay before it steps down
BATCH = 500  # events per message


class StepDown(Exception):
    """This relay cannot publish: let another node's relay try."""


class Relay:
    def __init__(
        self, dsn: str, cluster: str, broker: Broker, *, events_table: str = "portal_events",
        tracking_table: str = "portal_tracking", batch: int = BATCH,
    ) -> None:
        self.lock = AdvisoryLock(dsn, cluster, "relay")
        self.broker = broker
        self.events_table = events_table
        self.tracking_table = tracking_table
        self.tracking_name = f"relay {cluster}"[:32]  # no node name has a space in it
        self.batch = batch
        self.active = False
        self.position = 0  # last position the broker confirmed
        self.published = 0  # messages published by this process

    async def run(self) -> None:
        while True:
            try:
                await self._campaign_and_lead()
            except asyncio.CancelledError:
                raise
            except StepDown as e:
                log.warning("relay: stepping down: %s", e)
                await asyncio.sleep(STEP_DOWN_AFTER)  # give the other nodes their chance
            except (psycopg.Error, OSError) as e:
                log.warning("relay: store unavailable: %s", e)
                await asyncio.sleep(1)
            finally:
                if self.active:
                    log.info("relay: no longer active")
                self.active = False
                await self.lock.close()

    async def _campaign_and_lead(self) -> None:
        while not (self.broker.connected.is_set() and await self.lock.try_acquire()):
            await asyncio.sleep(CAMPAIGN_INTERVAL)
        conn = await self.lock.connect()
        await conn.execute(f"LISTEN {self.events_table}")  # eventsourcing NOTIFYs on insert
        # The relay's position is a hint (at-least-once): its updates need not wait for the
        # disk; after a crash of PostgreSQL a few batches are published again, and skipped.
        await conn.execute("SET synchronous_commit = off")
        self.position = await self._tracked(conn)
        self.active = True
        log.info("relay: active, publishing the log after position %d", self.position)
        while True:
            rows = await self._read(conn)
            if rows:
                await self._publish(rows)
                self.position = rows[-1][0]
                await self._record(conn)
                continue
            async for _ in conn.notifies(timeout=POLL_INTERVAL, stop_after=1):
                pass

    async def _tracked(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cursor = await conn.execute(
            f"SELECT notification_id FROM {self.tracking_table} WHERE application_name = %s",
            (self.tracking_name,))
        row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        cursor = await conn.execute(
            f"SELECT id, originator_id, originator_version, topic, state "
            f"FROM {self.events_table} WHERE id > %s ORDER BY id LIMIT %s",
            (self.position, self.batch))
        return await cursor.fetchall()

    async def _publish(self, rows: list[tuple[Any, ...]]) -> None:
        data = {"after": self.position,
                "events": [notification_data(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]}
        failing_since: float | None = None
        while True:
            try:
                await self.broker.publish(LOG, data)
                self.published += 1
                return
            except BrokerUnavailable as e:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > STEP_DOWN_AFTER:
                    raise StepDown(str(e)) from None
                await asyncio.sleep(0.1)  # a nack or a closing channel: not a busy loop
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.broker.connected.wait(), 0.5)

    async def _record(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            f"INSERT INTO {self.tracking_table} (application_name, notification_id) "
            f"VALUES (%s, %s) ON CONFLICT (application_name) "
            f"DO UPDATE SET notification_id = EXCLUDED.notification_id",
            (self.tracking_name, self.position))
