"""Event store: the log (portal_events), aggregate snapshots, projector tracking.

The columns are those eventsourcing-sqlalchemy's record classes map (its models.py), created
here rather than by the library at run time, so that schema changes are reviewed migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy_utils.types.uuid import UUIDType

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# BIGINT in PostgreSQL, INTEGER in SQLite (where only INTEGER PRIMARY KEY autoincrements).
Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "portal_events",
        sa.Column("id", Position, primary_key=True, autoincrement=True),
        sa.Column("originator_id", UUIDType(), nullable=False),
        sa.Column("originator_version", Position, nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
    )
    op.create_index(
        "portal_events_aggregate_idx",
        "portal_events",
        ["originator_id", "originator_version"],
        unique=True,
    )
    op.create_table(
        "portal_snapshots",
        sa.Column("originator_id", UUIDType(), primary_key=True),
        sa.Column("originator_version", Position, primary_key=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "portal_tracking",
        sa.Column("application_name", sa.String(length=32), primary_key=True),
        sa.Column("notification_id", Position),
    )


def downgrade() -> None:
    op.drop_table("portal_tracking")
    op.drop_table("portal_snapshots")
    op.drop_index("portal_events_aggregate_idx", table_name="portal_events")
    op.drop_table("portal_events")
