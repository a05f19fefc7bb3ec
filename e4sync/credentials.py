"""e4sync.credentials: where an account's password comes from, and reading it.

Owns the password sources and their order (first hit wins):

1. ``$CREDENTIALS_DIRECTORY/e4sync-password-<account>``, then
   ``$CREDENTIALS_DIRECTORY/e4sync-password`` (systemd ``LoadCredential=``);
2. ``password_file`` (refused when group/others can read it, or owned by someone else);
3. ``password_command`` (no shell, with a timeout);
4. ``password_env`` (``E4_PWD`` for the ``default`` account);
5. ``keyring = true`` (the optional ``keyring`` package);
6. an interactive prompt, only when stdin is a terminal.

Nothing found raises AuthError (exit 77) listing the options; a source that is set up
wrongly (an unsafe or missing password file) raises ConfigError (exit 78). The secret
itself never appears in any message, repr or log, and never on a child's command line.
Exactly one final newline is removed; a password refused by the platform that still has
leading or trailing whitespace gets a hint (``PasswordProvider.whitespace_hint``: counts and
the source only), which the client adds to its AuthError.
The password is re-read at every call of ``password_provider()``'s function, so a
rotated password is picked up at the next login without a restart.

Also ``import_users_file``: turns an e4client-style ``email:password`` list into 0600
password files and ``[[account]]`` blocks.

Imports only the standard library, ``e4sync.errors`` and ``e4sync.config`` (and
``keyring`` lazily).
Must not import: e4sync.sources.e4connect.client, e4sync.state, e4sync.sync, e4sync.cli.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from e4sync.config import DEFAULT_ACCOUNT_NAME, ENV_PASSWORD, AccountConfig
from e4sync.errors import AuthError, ConfigError, TransientError

CREDENTIAL_NAME = "e4sync-password"
KEYRING_SERVICE = "e4sync"
# Long enough for `op read` or a vault login, short enough not to stall a pass.
PASSWORD_COMMAND_TIMEOUT = 30.0

KIND_CREDENTIALS = "credentials-directory"
KIND_FILE = "password-file"
KIND_COMMAND = "password-command"
KIND_ENV = "environment"
KIND_KEYRING = "keyring"
KIND_PROMPT = "prompt"


@dataclass(frozen=True)
class PasswordSource:
    """Where a password would be read from. ``detail`` names the file, program or
    variable; it never holds the secret."""

    kind: str
    detail: str


def _options_text(account: AccountConfig) -> str:
    return (
        f"no password found for account {account.name!r} ({account.username}). Give it one "
        f"of: a systemd credential {CREDENTIAL_NAME}-{account.name} or {CREDENTIAL_NAME} "
        "(LoadCredential=); password_file = PATH (chmod 600); password_command = COMMAND; "
        "password_env = VARIABLE (E4_PWD for the E4_USER account); keyring = true "
        "(pip install 'e4sync[keyring]'); or run on a terminal to be asked"
    )


def _env_var(account: AccountConfig) -> str | None:
    if account.password_env:
        return account.password_env
    return ENV_PASSWORD if account.name == DEFAULT_ACCOUNT_NAME else None


def _is_interactive(interactive: bool | None) -> bool:
    if interactive is not None:
        return interactive
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


def _candidates(
    account: AccountConfig, env: Mapping[str, str], interactive: bool | None
) -> list[PasswordSource]:
    """The sources that apply to ``account`` now, in order. Presence only: nothing is
    read, so this is also what ``doctor`` shows."""
    found: list[PasswordSource] = []
    creds_dir = env.get("CREDENTIALS_DIRECTORY")
    if creds_dir:
        for name in (f"{CREDENTIAL_NAME}-{account.name}", CREDENTIAL_NAME):
            path = Path(creds_dir) / name
            if path.is_file():
                found.append(PasswordSource(KIND_CREDENTIALS, str(path)))
                break
    if account.password_file is not None:
        found.append(PasswordSource(KIND_FILE, str(account.password_file)))
    if account.password_command:
        found.append(PasswordSource(KIND_COMMAND, _program(account.password_command)))
    var = _env_var(account)
    if var and env.get(var):
        found.append(PasswordSource(KIND_ENV, f"${var}"))
    if account.keyring:
        found.append(
            PasswordSource(KIND_KEYRING, f"service {KEYRING_SERVICE!r}, user {account.username!r}")
        )
    if _is_interactive(interactive):
        found.append(PasswordSource(KIND_PROMPT, "terminal"))
    return found


def password_source(
    account: AccountConfig, env: Mapping[str, str] = os.environ, interactive: bool | None = None
) -> PasswordSource | None:
    """Return the source ``resolve_password`` would try first, or None if there is none.
    (A keyring with no entry falls through to the next source when resolving.)"""
    found = _candidates(account, env, interactive)
    return found[0] if found else None


def resolve_password(
    account: AccountConfig,
    env: Mapping[str, str] = os.environ,
    interactive: bool | None = None,
    *,
    command_timeout: float | None = None,
) -> str:
    """Return the account's password from the first source that has one.

    Raise AuthError (77) if no source has one or a password command fails, ConfigError
    (78) if a password file is unsafe, missing or empty, or keyring is asked for but not
    installed. ``interactive=None`` prompts only when stdin is a terminal.
    """
    for source in _candidates(account, env, interactive):
        secret = _read(source, account, env, command_timeout)
        if secret:
            return secret
    raise AuthError(_options_text(account))


class PasswordProvider:
    """The password, resolved afresh at each call (see :func:`password_provider`), plus
    :meth:`whitespace_hint` for the client to add to a refused login's message."""

    def __init__(
        self, account: AccountConfig, env: Mapping[str, str], interactive: bool | None
    ) -> None:
        self._account = account
        self._env = env
        self._interactive = interactive
        self._typed: list[str] = []
        self._source: PasswordSource | None = None  # where the last password came from

    def __call__(self) -> str:
        if self._typed:
            return self._typed[0]
        for source in _candidates(self._account, self._env, self._interactive):
            secret = _read(source, self._account, self._env, None)
            if secret:
                if source.kind == KIND_PROMPT:
                    self._typed.append(secret)
                self._source = source
                return secret
        raise AuthError(_options_text(self._account))

    def whitespace_hint(self, secret: str) -> str | None:
        """Why a refused ``secret`` (the last one this gave) may be wrong: leading or
        trailing whitespace, counted, with where it came from. None when it has none."""
        return whitespace_hint(secret, self._source)

    def __repr__(self) -> str:  # never the typed password
        return f"PasswordProvider(account={self._account.name!r})"


def password_provider(
    account: AccountConfig, env: Mapping[str, str] = os.environ, interactive: bool | None = None
) -> PasswordProvider:
    """Return a callable that resolves the password afresh at each call, so a rotated
    password file or credential is used at the next login. A password typed at the
    prompt is kept for the life of the callable, so a re-login does not ask again."""
    return PasswordProvider(account, env, interactive)


def whitespace_hint(secret: str, source: PasswordSource | None = None) -> str | None:
    """A sentence for a refused login whose password starts or ends with whitespace
    (spaces, tabs, newlines beyond the one final newline that is removed): how many such
    characters, where the password came from and what to check. It never holds the
    password or any character of it, only counts. None when there is no such whitespace."""
    leading = len(secret) - len(secret.lstrip())
    trailing = len(secret) - len(secret.rstrip())
    if leading == len(secret):  # all whitespace: count it once, as trailing
        leading = 0
    if not leading and not trailing:
        return None
    parts = [
        f"{side} whitespace ({n} character{'s' if n != 1 else ''})"
        for side, n in (("leading", leading), ("trailing", trailing))
        if n
    ]
    where, check = _where(source)
    return f"{where} has {' and '.join(parts)}; {check}"


def _where(source: PasswordSource | None) -> tuple[str, str]:
    """How to name a password's source in a hint, and what to check there."""
    if source is None:
        return "the password", "check where it comes from"
    one_newline = "(only one final newline is removed)"
    named = {
        KIND_FILE: (f"the password from {source.detail}", f"check the file {one_newline}"),
        KIND_CREDENTIALS: (
            f"the password from the systemd credential {source.detail}",
            f"check the file {one_newline}",
        ),
        KIND_COMMAND: (
            f"the password printed by password_command {source.detail!r}",
            f"check what it prints {one_newline}",
        ),
        KIND_ENV: (f"the password in {source.detail}", "check the variable"),
        KIND_KEYRING: ("the password from the keyring", "check the keyring entry"),
        KIND_PROMPT: ("the password typed", "type it again"),
    }
    return named.get(source.kind, ("the password", "check where it comes from"))


# ---------------------------------------------------------------------------- readers


def _read(
    source: PasswordSource,
    account: AccountConfig,
    env: Mapping[str, str],
    command_timeout: float | None,
) -> str | None:
    if source.kind == KIND_CREDENTIALS:
        # systemd made this file for us (0400, our user); no permission policing.
        return _strip_newline(_read_text(Path(source.detail)))
    if source.kind == KIND_FILE:
        assert account.password_file is not None
        return read_password_file(account.password_file)
    if source.kind == KIND_COMMAND:
        assert account.password_command is not None
        return run_password_command(account.password_command, timeout=command_timeout)
    if source.kind == KIND_ENV:
        var = _env_var(account)
        return env.get(var) if var else None
    if source.kind == KIND_KEYRING:
        return _read_keyring(account)
    if source.kind == KIND_PROMPT:
        return _prompt(account)
    return None  # pragma: no cover - kinds are fixed above


def _strip_newline(text: str) -> str:
    # Exactly one: `echo pw > file` adds one, but a password may itself end in spaces.
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the password: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the password is not UTF-8 text") from None


def check_password_file_stat(path: Path, st: os.stat_result, euid: int | None = None) -> None:
    """Raise ConfigError if a password file with status ``st`` is unsafe to use: readable
    or writable by group or others, or (unless we are root) owned by another user, as
    ssh does with keys. ``euid`` defaults to the process's effective user id."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: the password file is not a regular file")
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise ConfigError(
            f"{path}: the password file can be read by others (mode {mode:04o}); "
            f"run: chmod 600 {shlex.quote(str(path))}"
        )
    if euid is None:
        euid = os.geteuid() if hasattr(os, "geteuid") else None
    if euid is not None and euid != 0 and st.st_uid != euid:
        raise ConfigError(
            f"{path}: the password file belongs to user id {st.st_uid}, not to the user "
            f"running e4sync ({euid}); run: chown {euid} {shlex.quote(str(path))}"
        )


def read_password_file(path: Path) -> str:
    """Return the password in ``path`` without its one trailing newline.
    Raise ConfigError if the file is missing, unsafe (see check_password_file_stat) or
    empty."""
    try:
        # O_NONBLOCK: a FIFO must be refused by the check below, not hang the open.
        flags = os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError(f"{path}: the password file does not exist (password_file)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the password file: {exc.strerror}") from None
    try:
        # fstat the open file, not the path, so the file checked is the file read.
        check_password_file_stat(path, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(1 << 16)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the password file: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        secret = _strip_newline(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the password file is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{path}: the password file is empty")
    return secret


def _program(command: str) -> str:
    """The program of a password command: the only part of it ever shown (its
    arguments may carry a token)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return "password_command"
    return words[0] if words else "password_command"


def run_password_command(command: str, timeout: float | None = None) -> str:
    """Run ``command`` (split with shlex, no shell) and return its stdout without one
    trailing newline. Raise AuthError naming only the program if it cannot start, exits
    non-zero, runs longer than ``timeout`` (default PASSWORD_COMMAND_TIMEOUT) or prints
    nothing. Its arguments, output and error output are never shown."""
    limit = PASSWORD_COMMAND_TIMEOUT if timeout is None else timeout
    try:
        argv = shlex.split(command)
    except ValueError:
        raise ConfigError("password_command: cannot be split into words") from None
    if not argv:
        raise ConfigError("password_command: is empty")
    program = argv[0]
    try:
        # Its own session, so a timeout kills the whole process group (a shell script's
        # children too) and communicate() is not left waiting on an inherited pipe.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=os.name == "posix",
        )
    except OSError as exc:
        # The configuration names a program that is not there: fix the file (78).
        raise ConfigError(
            f"password_command: cannot run {program!r}: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill(proc)
        # A vault not reachable yet (at boot, say) is temporary (75), not a refused login:
        # 77 would keep a systemd service down for good (RestartPreventExitStatus).
        raise TransientError(
            f"password_command: {program!r} did not finish within {limit:g} seconds"
        ) from None
    if proc.returncode != 0:
        raise AuthError(f"password_command: {program!r} failed with exit status {proc.returncode}")
    try:
        secret = _strip_newline(out.decode("utf-8"))
    except UnicodeDecodeError:
        raise AuthError(f"password_command: {program!r} printed something not UTF-8") from None
    if not secret:
        raise AuthError(f"password_command: {program!r} printed no password")
    return secret


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - POSIX here
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.communicate()


def _read_keyring(account: AccountConfig) -> str | None:
    try:
        import keyring  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"account {account.name!r} has keyring = true but the keyring package is not "
            "installed: pip install 'e4sync[keyring]'"
        ) from None
    try:
        secret = keyring.get_password(KEYRING_SERVICE, account.username)
    except Exception as exc:  # backends raise their own types (NoKeyringError, DBus, …)
        # A keyring daemon not up yet is temporary, like an unreachable platform.
        raise TransientError(
            f"account {account.name!r}: the keyring could not be read ({type(exc).__name__})"
        ) from None
    return secret or None


def _prompt(account: AccountConfig) -> str | None:
    try:
        return getpass.getpass(f"E4 Connect password for {account.username} ({account.name}): ")
    except EOFError:
        return None


# ---------------------------------------------------------------------------- import

_LOCAL_PART_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def _account_name(username: str, taken: set[str]) -> str:
    base = _LOCAL_PART_RE.sub("_", username.split("@", 1)[0]).strip("._-")[:48] or "account"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _write_private(path: Path, text: str) -> None:
    # O_CREAT's mode only applies to a new file; fchmod covers a file that already
    # existed with a wider mode. Neither depends on the umask.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (text + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX for controls).
    return json.dumps(text, ensure_ascii=False)


def import_users_file(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> str:
    """Read an e4client-style users file (one ``email:password`` per line; blank lines
    and ``#`` comments skipped; the password is everything after the first colon), write
    each password to ``out_dir/<name>.password`` created 0600 (``out_dir`` is created
    0700), and return the ``[[account]]`` TOML blocks that use those files.

    Raise ConfigError naming the line number (never its content) for a malformed line.
    """
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{source}: cannot read the users file: {reason}") from None
    entries: list[tuple[str, str]] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, secret = line.partition(":")
        user = user.strip()
        if not sep or not user or not secret or not user.isprintable():
            problems.append(f"{source}: line {number}: expected email:password")
            continue
        entries.append((user, secret))
    if problems:
        raise ConfigError(f"{source}: cannot import the users file", problems)
    if not entries:
        raise ConfigError(f"{source}: no email:password lines found")

    target = Path(out_dir)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    taken: set[str] = set()
    blocks: list[str] = []
    for user, secret in entries:
        name = _account_name(user, taken)
        password_file = (target / f"{name}.password").absolute()
        _write_private(password_file, secret)
        blocks.append(
            "[[account]]\n"
            f"name = {_toml_string(name)}\n"
            f"username = {_toml_string(user)}\n"
            f"password_file = {_toml_string(str(password_file))}\n"
        )
    return "\n".join(blocks)
