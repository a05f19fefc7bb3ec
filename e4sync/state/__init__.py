"""e4sync.state: the state database (models, engine, migrations, leases). Never imports client."""
