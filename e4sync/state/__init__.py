"""e4sync.state: the state database (models, engine, migrations, leases).

Must not import: e4sync.sources.e4connect.
"""
