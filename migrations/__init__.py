"""Alembic migrations of the event store (applied by `portal-es migrate` and on `serve`)."""
