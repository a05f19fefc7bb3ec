"""e4sync.migrations: the Alembic environment and revisions of the state database.

Shipped inside the wheel as ``e4sync.migrations`` (pyproject maps this folder there), so an
installed e4sync can migrate its own database. Imports ``e4sync.state.models`` only.
"""
