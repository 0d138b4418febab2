"""The event store: where the log lives (SQLite file or PostgreSQL) and how it is opened."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from eventsourcing.cryptography import AESCipher
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

import migrations
from portal_es.service.app import CERT_KEY_CIPHER

log = logging.getLogger(__name__)

SQLITE_FILE = "portal-es.db"
CIPHER_KEY_FILE = "cert-key-cipher.key"
MIGRATION_LOCK = 0x504553_4D4947  # PostgreSQL advisory lock key of migrations ("PESMIG")


class StoreConfigError(ValueError):
    """A db-connection string or key that cannot be used."""


def database_url(db_connection: str, work_dir: Path) -> str:
    """SQLAlchemy URL for Portal's db-connection value ("" -> SQLite file in the work dir)."""
    if not db_connection:
        return f"sqlite:///{work_dir / SQLITE_FILE}"
    if db_connection.startswith(("postgres://", "postgresql://")):
        db_connection = "postgresql+psycopg://" + db_connection.split("://", 1)[1]
    try:
        url = make_url(db_connection)
    except ArgumentError:
        raise StoreConfigError(f"invalid db-connection '{db_connection}'") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreConfigError(
            f"unsupported db-connection '{url.get_backend_name()}': use sqlite or postgresql"
        )
    return db_connection


def load_or_create_cipher_key(work_dir: Path, configured: str = "") -> str:
    """The AES key for cert private keys: configured, else kept in the work dir (0600)."""
    if configured:
        return configured
    path = work_dir / CIPHER_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    key = AESCipher.create_key(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.info("generated the cert key cipher key in %s", path)
    return key


def application_env(db_url: str, cipher_key: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "eventsourcing_sqlalchemy",
        "SQLALCHEMY_URL": db_url,
        "CREATE_TABLE": "n",  # tables come from migrations/
        "AGGREGATE_CACHE_MAXSIZE": "4",
        CERT_KEY_CIPHER: cipher_key,
    }


def migrate(db_url: str) -> None:
    """Apply every migration not yet applied (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    engine = create_engine(db_url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Cluster nodes start together: one migrates, the others wait, then find
                # nothing to do (held until this transaction ends).
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": MIGRATION_LOCK})
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
