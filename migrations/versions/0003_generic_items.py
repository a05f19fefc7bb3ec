"""generic items: the state database knows items of any source, not E4 sessions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

- ``accounts.source``: the account's kind of platform (``e4connect`` for every account made
  before this revision); ``accounts.endpoint``: what the account pointed at when last
  served, for people reading the database (was ``username`` and ``base_url``, E4 Connect's).
- ``sessions.recorded_at`` (was ``start_time``), ``sessions.version`` (was
  ``metadata_hash``) and ``sessions.downloaded_version`` (was ``downloaded_metadata_hash``):
  renamed, values kept (an E4 item's version is the same digest of its listed metadata).
- ``sessions.kind``: what the source calls the item ("session"; S3: "raw", "biomarker").
- ``sessions.device_id``, ``label``, ``device``: dropped; they are E4 fields, and every one
  is still in ``sessions.remote_json``, the row exactly as listed.
- ``sessions.remote_id`` and ``deletions.remote_id`` widen to 1024 characters (an S3 key).
- ``sessions.content_json``: what the file's content says of itself, found when verified
  (an S3 raw file's streams, rates and sample counts); NULL when its kind says nothing.
- ``accounts.last_complete_listing_at``: when the account last got a complete listing (a
  source that lists recent folders each pass lists everything at most so often);
  ``accounts.deletions_refused``: why the platform refused a deletion as not permitted
  (read-only keys), so that no pass asks again until ``e4sync retry`` clears it.

Batch mode, so SQLite rebuilds the tables (copying every row); PostgreSQL alters in place.
Imports alembic and sqlalchemy only: a revision must keep working after the models change.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("source", sa.String(length=40), nullable=False, server_default="e4connect"),
    )
    op.add_column("accounts", sa.Column("endpoint", sa.Text(), nullable=False, server_default=""))
    op.add_column("accounts", sa.Column("last_complete_listing_at", sa.Float(), nullable=True))
    op.add_column("accounts", sa.Column("deletions_refused", sa.Text(), nullable=True))
    accounts = sa.table(
        "accounts",
        sa.column("username", sa.String),
        sa.column("base_url", sa.String),
        sa.column("endpoint", sa.Text),
    )
    op.execute(
        accounts.update().values(
            endpoint=sa.func.coalesce(accounts.c.username, "")
            + " at "
            + sa.func.coalesce(accounts.c.base_url, "")
        )
    )
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("username")
        batch.drop_column("base_url")
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column(
            "remote_id", type_=sa.String(length=1024), existing_type=sa.String(length=64)
        )
        batch.alter_column("start_time", new_column_name="recorded_at")
        batch.alter_column(
            "metadata_hash",
            new_column_name="version",
            type_=sa.String(length=200),
            existing_type=sa.String(length=64),
        )
        batch.alter_column(
            "downloaded_metadata_hash",
            new_column_name="downloaded_version",
            type_=sa.String(length=200),
            existing_type=sa.String(length=64),
        )
        batch.add_column(sa.Column("kind", sa.String(length=40), nullable=False, server_default=""))
        batch.add_column(sa.Column("content_json", sa.Text(), nullable=True))
        batch.drop_column("device_id")
        batch.drop_column("label")
        batch.drop_column("device")
    with op.batch_alter_table("deletions") as batch:
        batch.alter_column(
            "remote_id", type_=sa.String(length=1024), existing_type=sa.String(length=64)
        )


def downgrade() -> None:
    with op.batch_alter_table("deletions") as batch:
        batch.alter_column(
            "remote_id", type_=sa.String(length=64), existing_type=sa.String(length=1024)
        )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("device_id", sa.String(64), nullable=True, server_default=""))
        batch.add_column(sa.Column("label", sa.String(200), nullable=True, server_default=""))
        batch.add_column(sa.Column("device", sa.String(200), nullable=True, server_default=""))
        batch.drop_column("kind")
        batch.drop_column("content_json")
        batch.alter_column("downloaded_version", new_column_name="downloaded_metadata_hash")
        batch.alter_column("version", new_column_name="metadata_hash")
        batch.alter_column("recorded_at", new_column_name="start_time")
        batch.alter_column(
            "remote_id", type_=sa.String(length=64), existing_type=sa.String(length=1024)
        )
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("username", sa.String(320), nullable=True, server_default=""))
        batch.add_column(sa.Column("base_url", sa.String(2000), nullable=True, server_default=""))
        batch.drop_column("deletions_refused")
        batch.drop_column("last_complete_listing_at")
        batch.drop_column("endpoint")
        batch.drop_column("source")
