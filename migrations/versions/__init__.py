"""e4sync.migrations.versions: one module per schema revision (Alembic loads them by file)."""
