"""e4sync.migrations.env: how Alembic reaches the state database.

Two callers. ``e4sync.state.db.upgrade()`` passes an open connection in
``config.attributes["connection"]`` (inside a transaction it owns, with SQLite foreign keys off
and, on PostgreSQL, under an advisory lock); that connection is used as is. The ``alembic``
command line of a developer passes none, and a short-lived engine is built from
``E4SYNC_ALEMBIC_URL`` or ``sqlalchemy.url``.

This file never calls ``logging.config.fileConfig``: when e4sync migrates at start there is no
ini file, and configuring logging here would replace the application's own setup. Imports
``e4sync.state.models`` and nothing else from e4sync.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from e4sync.state import models

config = context.config
target_metadata = models.Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # Batch mode lets later revisions ALTER tables on SQLite (move-and-copy); it changes
        # nothing on PostgreSQL.
        render_as_batch=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    url = os.environ.get("E4SYNC_ALEMBIC_URL") or config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller owns the transaction; begin_transaction() joins it.
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("E4SYNC_ALEMBIC_URL") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
