"""e4sync.state.states: the session states and the schema revision, as plain constants.

Kept apart from ``models`` so that code reading the state database without SQLAlchemy
(``e4sync.status`` on SQLite) can name them. Imports nothing.
Must not import: e4sync, requests, urllib3, sqlalchemy, alembic, apscheduler, platformdirs, keyring.
"""

# Session states (SPEC section 6).
NEW = "new"
DOWNLOADING = "downloading"
VERIFIED = "verified"
REMOTE_DELETED = "remote_deleted"
FAILED = "failed"
REMOTE_GONE = "remote_gone"
STATES = (NEW, DOWNLOADING, VERIFIED, REMOTE_DELETED, FAILED, REMOTE_GONE)
# States whose session still has to be fetched.
DUE_STATES = (NEW, DOWNLOADING)
# States whose session has a verified copy in the archive.
ARCHIVED_STATES = (VERIFIED, REMOTE_DELETED, REMOTE_GONE)

# The newest shipped migration. A database already there is opened without importing
# Alembic (and, by `status` on SQLite, without SQLAlchemy). A test checks this equals
# Alembic's own head, so a new migration cannot be forgotten here.
SCHEMA_HEAD = "0003"
