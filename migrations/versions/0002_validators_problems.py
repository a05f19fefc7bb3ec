"""validators and local problems: what proves the platform still holds the archived bytes,
and what is wrong with an archived copy on disk.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

- ``sessions.remote_etag``, ``sessions.remote_last_modified``: the validators the platform
  sent with the download (NULL when it sent none, and for rows archived before 0.2). Before a
  remote DELETE the platform's current size and validators must equal these.
- ``sessions.local_problem``: why the archived copy cannot be trusted (missing, changed,
  unreadable), set by the pass, ``verify`` or the scrub; NULL when the copy is whole.
- ``passes.paused``: why the pass paused an account's downloads (a full disk), if it did.

Additive columns only, so no batch mode is needed on SQLite. Imports alembic and sqlalchemy
only: a revision must keep working after the models change.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("remote_etag", sa.String(length=200), nullable=True))
    op.add_column(
        "sessions", sa.Column("remote_last_modified", sa.String(length=100), nullable=True)
    )
    op.add_column("sessions", sa.Column("local_problem", sa.Text(), nullable=True))
    op.add_column("passes", sa.Column("paused", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("passes") as batch:
        batch.drop_column("paused")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("local_problem")
        batch.drop_column("remote_last_modified")
        batch.drop_column("remote_etag")
