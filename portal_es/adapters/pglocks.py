"""PostgreSQL session advisory locks: cluster-wide mutual exclusion without a lock service.

A session lock lives exactly as long as its connection: when the holder's process dies, the
server sees the socket close and releases the lock at once, so a successor takes over within
its own polling interval. Each lock has its own connection (the relay also LISTENs on its
own, so that losing the session loses leadership and notifications together).
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

LOCK_CLASS = 0x50455331  # "PES1": the first key of every portal-es advisory lock


class LockTimeout(TimeoutError):
    pass


def conninfo(db_url: str) -> str:
    """The libpq URI for the store's SQLAlchemy URL (postgresql+psycopg://...)."""
    url = make_url(db_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def lock_key(cluster: str, purpose: str) -> int:
    """The second key: one per (cluster, purpose), as a signed 32-bit integer."""
    value = zlib.crc32(f"{purpose}:{cluster}".encode())
    return value - 2**32 if value >= 2**31 else value


class AdvisoryLock:
    def __init__(self, dsn: str, cluster: str, purpose: str) -> None:
        self.dsn = dsn
        self.purpose = purpose
        self.key = lock_key(cluster, purpose)
        self.connection: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self.held = False

    async def connect(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self.connection is None or self.connection.closed:
            self.held = False
            self.connection = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=5,
                application_name=f"portal-es {self.purpose}",
            )
        return self.connection

    async def try_acquire(self) -> bool:
        conn = await self.connect()
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, self.key))
        row = await cursor.fetchone()
        self.held = bool(row and row[0])
        return self.held

    async def acquire(self, timeout: float) -> None:
        """Wait in PostgreSQL's queue for the lock (first come, first served)."""
        conn = await self.connect()
        try:
            # One round trip: the timeout is set (for this session) before the lock is taken.
            await conn.execute(
                "SELECT set_config('lock_timeout', %s, false), pg_advisory_lock(%s, %s)",
                (f"{max(1, int(timeout * 1000))}ms", LOCK_CLASS, self.key))
        except pg_errors.LockNotAvailable:
            raise LockTimeout(f"{self.purpose} lock busy for {timeout:g} s") from None
        except psycopg.OperationalError:
            await self.close()  # a broken session: the next attempt opens a new one
            raise
        self.held = True

    async def release(self) -> None:
        if not self.held or self.connection is None:
            return
        self.held = False
        try:
            await self.connection.execute("SELECT pg_advisory_unlock(%s, %s)",
                                          (LOCK_CLASS, self.key))
        except psycopg.Error as e:  # the session is gone, and the lock with it
            log.warning("releasing the %s lock: %s", self.purpose, e)
            await self.close()

    @contextlib.asynccontextmanager
    async def hold(self, timeout: float) -> AsyncIterator[None]:
        await self.acquire(timeout)
        try:
            yield
        finally:
            await self.release()

    async def close(self) -> None:
        self.held = False
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
            self.connection = None
