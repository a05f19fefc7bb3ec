"""e4sync.errors: the whole error tree, and the exit code each error means.

Exit codes are decided here and nowhere else (sysexits, so systemd's
``RestartPreventExitStatus=`` and cron wrappers can tell them apart). ``cli.main``
turns an uncaught ``E4SyncError`` into ``exc.exit_code``.

Must not import: e4sync.
"""

from __future__ import annotations

EXIT_OK = 0
# 1 means "something needs a look" for every command that checks: a pass with failed
# sessions, `status` with an account NOT OK, `check` with a difference, `verify`/`reindex`
# with damage, `doctor` with a failed check.
EXIT_PROBLEMS = 1
EXIT_SESSIONS_FAILED = EXIT_PROBLEMS
EXIT_NOT_OK = EXIT_PROBLEMS
EXIT_DIFFERENCES = EXIT_PROBLEMS
EXIT_USAGE = 2
EXIT_NOT_OFFERED = 64  # sysexits EX_USAGE: the account's source does not offer the command
EXIT_DATAERR = 65
EXIT_CANTCREAT = 73  # sysexits EX_CANTCREAT: a folder, database or output file e4sync must write
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_CONFIG = 78
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

EXIT_CODES = {
    EXIT_OK: "all went well (including nothing to do)",
    EXIT_PROBLEMS: "something needs a look: sessions failed this pass (run-once), an account "
    "is NOT OK (status), the platform and the archive differ (check), damage found (verify, "
    "reindex), a check failed (doctor)",
    EXIT_USAGE: "bad usage (an unknown option, a bad id, an id the state database does not know)",
    EXIT_NOT_OFFERED: "the account's source does not offer this command (such as `devices` "
    "for a source with no device list)",
    EXIT_DATAERR: "the state database is damaged: move it aside, then `e4sync reindex` "
    "rebuilds it from the archive",
    EXIT_CANTCREAT: "a folder, database or file e4sync must write cannot be created or "
    "written (the message names it and the fix); `download` never overwrites a file",
    EXIT_TEMPFAIL: (
        "temporary: the platform could not be reached or sent an error object for a list,"
        " or another e4sync holds the lock"
    ),
    EXIT_NOPERM: "the platform refused the credentials",
    EXIT_CONFIG: "the configuration is wrong (the message names the file, the key and why)",
}


class E4SyncError(Exception):
    """Base of every error e4sync raises on purpose; its message is meant for a person."""

    exit_code = EXIT_SESSIONS_FAILED


class UsageError(E4SyncError):
    """The command line asks for something that cannot be done (a bad id, a bad URL)."""

    exit_code = EXIT_USAGE


class NotOffered(UsageError):
    """The account's source kind does not offer this command: ``devices`` of a platform
    that lists no devices, ``whoami`` of one with no user id. Says the command and the
    source in one line."""

    exit_code = EXIT_NOT_OFFERED


class CantCreate(E4SyncError):
    """A folder, database or output file e4sync must write cannot be created or written: a
    state folder that is a file, a read-only archive root, an existing file ``download``
    will not overwrite. ``path`` is what it names; the message says the fix."""

    exit_code = EXIT_CANTCREAT

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class ConfigError(E4SyncError):
    """The configuration is wrong. ``problems`` lists every problem found, each naming
    the file and the key, so a person can fix them all in one go."""

    exit_code = EXIT_CONFIG

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [message])
        super().__init__(message if problems is None else "\n".join([message, *self.problems]))


class AuthError(E4SyncError):
    """The platform refused the credentials, or no password could be found. Retrying
    will not help until a person acts."""

    exit_code = EXIT_NOPERM


class TransientError(E4SyncError):
    """The platform could not be reached, answered 5xx/429 after every retry, or sent a
    list in a shape no list has (an ``{"error": ...}`` object). Safe to try again later."""

    exit_code = EXIT_TEMPFAIL


class LockBusy(TransientError):
    """Another e4sync process holds the lock on this state directory."""


class StateDamaged(E4SyncError):
    """The state database file is damaged: not a database at all, truncated, or with a
    bad page. Retrying cannot help and nothing in it can be trusted; the archive's sidecars
    hold what is needed to rebuild it (``e4sync reindex``, once the file is moved aside).

    ``path`` is the file (None when it is not known), ``reason`` SQLite's own words,
    ``move_aside`` the exact shell command that moves it (and its -wal) aside, and
    ``reindex`` the command that rebuilds it; the message says all four on one line."""

    exit_code = EXIT_DATAERR

    def __init__(
        self,
        path: str | None,
        reason: str,
        move_aside: str = "",
        reindex: str = "e4sync reindex",
    ):
        self.path = path
        self.reason = reason
        self.move_aside = move_aside
        self.reindex = reindex
        where = f"the state database {path}" if path else "the state database"
        how = (
            f"move it aside with `{move_aside}`"
            if move_aside
            else "move the file aside (add .damaged to its name)"
        )
        super().__init__(
            f"{where} is damaged ({reason}); rebuild it from the archive: {how}, "
            f"then run `{reindex}`"
        )

    def with_reindex(self, reindex: str) -> StateDamaged:
        """The same error, naming ``reindex`` as the command that rebuilds the database
        (the CLI adds the ``--config`` it was given)."""
        return StateDamaged(self.path, self.reason, self.move_aside, reindex)


class RemoteError(E4SyncError):
    """The platform answered, but not with what was asked for (a 404, bad JSON)."""


class SessionNotFound(RemoteError):
    """The platform says this session does not exist (404/410)."""


class VersionChanged(RemoteError):
    """The platform's copy of an item is no longer the version that was archived (its size
    or validators differ, or it refused a conditional request): never delete it."""


class NotPermitted(RemoteError):
    """The platform refused an operation these credentials may not make (S3's
    AccessDenied on a DELETE with read-only keys): not retried, recorded once."""


class NotAZipError(RemoteError):
    """A download was not a whole, valid ZIP: an HTML page, an empty or short body,
    bad CRCs. Nothing was kept under the final name."""


class StorageError(E4SyncError):
    """The archive could not be written (disk full, read-only, file too large).
    The archive is left as it was and the session stays queued for retry. ``errno`` is
    the cause's, when an ``OSError`` was (a full disk pauses downloads, see sync)."""

    def __init__(self, message: str = "", errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class ArchiveUnwritable(StorageError):
    """The archive root cannot be made or written at all (a file in its place, a read-only
    filesystem, no permission): nothing can be archived until a person fixes it."""

    exit_code = EXIT_CANTCREAT


class VerificationError(E4SyncError):
    """A file on disk is not what the state database recorded."""


class Interrupted(E4SyncError):
    """A stop was asked for (SIGTERM/SIGINT) while work was under way."""

    exit_code = EXIT_SIGINT
