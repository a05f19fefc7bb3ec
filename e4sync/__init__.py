"""e4sync: a local, verified, dated archive of every Empatica E4 session on E4 Connect.

This package imports nothing at import time beyond the standard library, so that
`e4sync --help` stays fast; each command imports what it needs when it runs.
Must not import: e4sync, requests, urllib3, sqlalchemy, alembic, apscheduler, platformdirs, keyring.
"""

__version__ = "0.1.0"
