"""e4sync.credentials: where an account's secret comes from, and reading it.

Generic over "a secret": a source kind's settings module declares ``SECRET``, a
``SecretKeys`` naming the account keys that say where its secret is (E4 Connect:
``password_file``, ``password_env``, ``password_command``, ``keyring``, the systemd
credential ``e4sync-password``), and this module reads any kind's secret with the same
code. The sources and their order (first hit wins), with E4 Connect's names:

1. ``$CREDENTIALS_DIRECTORY/e4sync-password-<account>``, then
   ``$CREDENTIALS_DIRECTORY/e4sync-password`` (systemd ``LoadCredential=``);
2. ``password_file`` (refused when group/others can read it, or owned by someone else);
3. ``password_command`` (no shell, with a timeout);
4. ``password_env`` (for the ``default`` account: the variable the kind's ``env_default`` names);
5. ``keyring = true`` (the optional ``keyring`` package; its user is ``username``);
6. an interactive prompt, only when stdin is a terminal.

Nothing found raises AuthError (exit 77) listing the options; a source that is set up
wrongly (an unsafe or missing secret file) raises ConfigError (exit 78). The secret
itself never appears in any message, repr or log, and never on a child's command line.
Exactly one final newline is removed; a secret refused by the platform that still has
leading or trailing whitespace gets a hint (``SecretProvider.whitespace_hint``: counts and
the source only), which the client adds to its AuthError.
The secret is re-read at every call of ``secret_provider()``'s function, so a rotated
secret is picked up at the next login without a restart. ``password_provider``,
``password_source``, ``resolve_password`` and ``PasswordProvider`` are the same functions
under the names the E4 Connect client and ``doctor`` use.

Also ``import_users_file``: turns an e4client-style ``email:password`` list into 0600
password files and ``[[account]]`` blocks.

Imports only the standard library, ``e4sync.errors``, ``e4sync.sources`` and
``e4sync.config`` (and ``keyring`` lazily).
Must not import: e4sync.sources.e4connect, e4sync.state, e4sync.sync, e4sync.cli.
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
from dataclasses import dataclass, field
from pathlib import Path

from e4sync.config import AccountConfig, SecretKeys
from e4sync.config.schema import kind_settings
from e4sync.errors import AuthError, CantCreate, ConfigError, TransientError
from e4sync.sources import DEFAULT_SOURCE

KEYRING_SERVICE = "e4sync"
# Long enough for `op read` or a vault login, short enough not to stall a pass.
PASSWORD_COMMAND_TIMEOUT = 30.0

KIND_CREDENTIALS = "credentials-directory"
KIND_FILE = "password-file"
KIND_COMMAND = "password-command"
KIND_ENV = "environment"
KIND_KEYRING = "keyring"
KIND_PROMPT = "prompt"

__all__ = [
    "KEYRING_SERVICE",
    "PasswordProvider",
    "PasswordSource",
    "SecretKeys",
    "SecretProvider",
    "SecretSource",
    "check_password_file_stat",
    "check_secret",
    "import_users_file",
    "password_provider",
    "password_source",
    "read_password_file",
    "read_secret_file",
    "resolve_password",
    "resolve_secret",
    "run_password_command",
    "run_secret_command",
    "secret_keys",
    "secret_provider",
    "secret_source",
    "whitespace_hint",
]


@dataclass(frozen=True)
class SecretSource:
    """Where a secret would be read from. ``detail`` names the file, program or
    variable; it never holds the secret. ``keys`` names the secret in messages."""

    kind: str
    detail: str
    keys: SecretKeys | None = field(default=None, compare=False, repr=False)


PasswordSource = SecretSource


def secret_keys(account: AccountConfig) -> SecretKeys:
    """The ``SECRET`` the kind of ``account`` declares; ConfigError if it has none."""
    try:
        keys = getattr(kind_settings(account.source), "SECRET", None)
    except ValueError as exc:
        raise ConfigError(f"account {account.name!r}: {exc}") from None
    if keys is None:
        raise ConfigError(f"account {account.name!r}: source {account.source!r} has no secret")
    return keys


def _default_keys() -> SecretKeys | None:
    """The default kind's secret: how the functions called without an account name it."""
    try:
        return getattr(kind_settings(DEFAULT_SOURCE), "SECRET", None)
    except ValueError:  # pragma: no cover - the default kind ships with e4sync
        return None


def _what(keys: SecretKeys | None) -> str:
    return keys.what if keys is not None else "secret"


def _options_text(account: AccountConfig, keys: SecretKeys) -> str:
    user = account.options.get(keys.keyring_user) if keys.keyring_user else None
    env_note = f" ({keys.env_note})" if keys.env_note else ""
    prompt = "; or run on a terminal to be asked" if keys.platform else ""
    return (
        f"no {keys.what} found for account {account.name!r}"
        + (f" ({user})" if user else "")
        + f". Give it one of: a systemd credential {keys.credential}-{account.name} or "
        f"{keys.credential} (LoadCredential=); {keys.file} = PATH (chmod 600); "
        f"{keys.command} = COMMAND; {keys.env} = VARIABLE{env_note}; {keys.keyring} = true "
        f"(pip install 'e4sync[keyring]'){prompt}"
    )


def _env_var(account: AccountConfig, keys: SecretKeys) -> str | None:
    named = account.options.get(keys.env)
    if named:
        return named
    if keys.env_default is not None and account.name == keys.env_default[0]:
        return keys.env_default[1]
    return None


def _is_interactive(interactive: bool | None) -> bool:
    if interactive is not None:
        return interactive
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed or detached stdin
        return False


def _candidates(
    account: AccountConfig, env: Mapping[str, str], interactive: bool | None
) -> list[SecretSource]:
    """The sources that apply to ``account`` now, in order. Presence only: nothing is
    read, so this is also what ``doctor`` shows."""
    keys = secret_keys(account)
    options = account.options
    found: list[SecretSource] = []
    creds_dir = env.get("CREDENTIALS_DIRECTORY")
    if creds_dir:
        for name in (f"{keys.credential}-{account.name}", keys.credential):
            path = Path(creds_dir) / name
            if path.is_file():
                found.append(SecretSource(KIND_CREDENTIALS, str(path), keys))
                break
    if options.get(keys.file) is not None:
        found.append(SecretSource(KIND_FILE, str(options[keys.file]), keys))
    if options.get(keys.command):
        found.append(SecretSource(KIND_COMMAND, _program(options[keys.command], keys), keys))
    var = _env_var(account, keys)
    if var and env.get(var):
        found.append(SecretSource(KIND_ENV, f"${var}", keys))
    if options.get(keys.keyring):
        user = options.get(keys.keyring_user)
        detail = f"service {KEYRING_SERVICE!r}, user {user!r}"
        found.append(SecretSource(KIND_KEYRING, detail, keys))
    if keys.platform and _is_interactive(interactive):
        found.append(SecretSource(KIND_PROMPT, "terminal", keys))
    return found


def secret_source(
    account: AccountConfig, env: Mapping[str, str] = os.environ, interactive: bool | None = None
) -> SecretSource | None:
    """Return the source ``resolve_secret`` would try first, or None if there is none.
    (A keyring with no entry falls through to the next source when resolving.)"""
    found = _candidates(account, env, interactive)
    return found[0] if found else None


def check_secret(account: AccountConfig, env: Mapping[str, str] = os.environ) -> SecretSource:
    """The source the account's secret would come from, checked as far as it can be without
    running anything: a secret file (``*_file``, a systemd credential) is read (the value is
    dropped at once), so one that is missing, unreadable, unsafe or empty is found now, not
    at the first login. A command, a keyring or a prompt is only named. Raise ConfigError
    (78) for a file that cannot be used, AuthError (77) when no source is set up."""
    source = secret_source(account, env, interactive=False)
    keys = secret_keys(account)
    if source is None:
        raise AuthError(_options_text(account, keys))
    if source.kind in (KIND_FILE, KIND_CREDENTIALS):
        if not _read(source, account, env, None):
            raise ConfigError(f"{source.detail}: the {keys.what} file is empty")
    return source


def resolve_secret(
    account: AccountConfig,
    env: Mapping[str, str] = os.environ,
    interactive: bool | None = None,
    *,
    command_timeout: float | None = None,
) -> str:
    """Return the account's secret from the first source that has one.

    Raise AuthError (77) if no source has one or a secret command fails, ConfigError
    (78) if a secret file is unsafe, missing or empty, or keyring is asked for but not
    installed. ``interactive=None`` prompts only when stdin is a terminal.
    """
    for source in _candidates(account, env, interactive):
        secret = _read(source, account, env, command_timeout)
        if secret:
            return secret
    raise AuthError(_options_text(account, secret_keys(account)))


class SecretProvider:
    """The secret, resolved afresh at each call (see :func:`secret_provider`), plus
    :meth:`whitespace_hint` for the client to add to a refused login's message."""

    def __init__(
        self, account: AccountConfig, env: Mapping[str, str], interactive: bool | None
    ) -> None:
        self._account = account
        self._env = env
        self._interactive = interactive
        self._typed: list[str] = []
        self._source: SecretSource | None = None  # where the last secret came from

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
        raise AuthError(_options_text(self._account, secret_keys(self._account)))

    def whitespace_hint(self, secret: str) -> str | None:
        """Why a refused ``secret`` (the last one this gave) may be wrong: leading or
        trailing whitespace, counted, with where it came from. None when it has none."""
        return whitespace_hint(secret, self._source)

    def __repr__(self) -> str:  # never the typed secret
        return f"{type(self).__name__}(account={self._account.name!r})"


PasswordProvider = SecretProvider  # the name the E4 Connect client knows


def secret_provider(
    account: AccountConfig, env: Mapping[str, str] = os.environ, interactive: bool | None = None
) -> SecretProvider:
    """Return a callable that resolves the secret afresh at each call, so a rotated
    secret file or credential is used at the next login. A secret typed at the
    prompt is kept for the life of the callable, so a re-login does not ask again."""
    return SecretProvider(account, env, interactive)


password_provider = secret_provider
password_source = secret_source
resolve_password = resolve_secret


def whitespace_hint(secret: str, source: SecretSource | None = None) -> str | None:
    """A sentence for a refused login whose secret starts or ends with whitespace
    (spaces, tabs, newlines beyond the one final newline that is removed): how many such
    characters, where the secret came from and what to check. It never holds the
    secret or any character of it, only counts. None when there is no such whitespace."""
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


def _where(source: SecretSource | None) -> tuple[str, str]:
    """How to name a secret's source in a hint, and what to check there."""
    keys = source.keys if source is not None and source.keys is not None else _default_keys()
    the = f"the {_what(keys)}"
    if source is None:
        return the, "check where it comes from"
    one_newline = "(only one final newline is removed)"
    command = keys.command if keys is not None else "the command"
    named = {
        KIND_FILE: (f"{the} from {source.detail}", f"check the file {one_newline}"),
        KIND_CREDENTIALS: (
            f"{the} from the systemd credential {source.detail}",
            f"check the file {one_newline}",
        ),
        KIND_COMMAND: (
            f"{the} printed by {command} {source.detail!r}",
            f"check what it prints {one_newline}",
        ),
        KIND_ENV: (f"{the} in {source.detail}", "check the variable"),
        KIND_KEYRING: (f"{the} from the keyring", "check the keyring entry"),
        KIND_PROMPT: (f"{the} typed", "type it again"),
    }
    return named.get(source.kind, (the, "check where it comes from"))


# ---------------------------------------------------------------------------- readers


def _read(
    source: SecretSource,
    account: AccountConfig,
    env: Mapping[str, str],
    command_timeout: float | None,
) -> str | None:
    keys = secret_keys(account)
    if source.kind == KIND_CREDENTIALS:
        # systemd made this file for us (0400, our user); no permission policing.
        return _strip_newline(_read_text(Path(source.detail), keys.what))
    if source.kind == KIND_FILE:
        return read_secret_file(account.options[keys.file], keys)
    if source.kind == KIND_COMMAND:
        return run_secret_command(account.options[keys.command], command_timeout, keys)
    if source.kind == KIND_ENV:
        var = _env_var(account, keys)
        return env.get(var) if var else None
    if source.kind == KIND_KEYRING:
        return _read_keyring(account, keys)
    if source.kind == KIND_PROMPT:
        return _prompt(account, keys)
    return None  # pragma: no cover - kinds are fixed above


def _strip_newline(text: str) -> str:
    # Exactly one: `echo pw > file` adds one, but a password may itself end in spaces.
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _read_text(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text") from None


def check_password_file_stat(
    path: Path, st: os.stat_result, euid: int | None = None, what: str = "password"
) -> None:
    """Raise ConfigError if a secret file with status ``st`` is unsafe to use: readable
    or writable by group or others, or (unless we are root) owned by another user, as
    ssh does with keys. ``euid`` defaults to the process's effective user id; ``what``
    names the secret ("password")."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: the {what} file is not a regular file")
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise ConfigError(
            f"{path}: the {what} file can be read by others (mode {mode:04o}); "
            f"run: chmod 600 {shlex.quote(str(path))}"
        )
    if euid is None:
        euid = os.geteuid() if hasattr(os, "geteuid") else None
    if euid is not None and euid != 0 and st.st_uid != euid:
        raise ConfigError(
            f"{path}: the {what} file belongs to user id {st.st_uid}, not to the user "
            f"running e4sync ({euid}); run: chown {euid} {shlex.quote(str(path))}"
        )


def read_secret_file(path: Path, keys: SecretKeys | None = None) -> str:
    """Return the secret in ``path`` without its one trailing newline. ``keys`` names it
    in messages (default: the default source's, "password" and ``password_file``).
    Raise ConfigError if the file is missing, unsafe (see check_password_file_stat) or
    empty."""
    keys = keys or _default_keys()
    what = _what(keys)
    key = keys.file if keys is not None else "file"
    try:
        # O_NONBLOCK: a FIFO must be refused by the check below, not hang the open.
        flags = os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError(f"{path}: the {what} file does not exist ({key})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the {what} file: {exc.strerror}") from None
    try:
        # fstat the open file, not the path, so the file checked is the file read.
        check_password_file_stat(path, os.fstat(fd), what=what)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(1 << 16)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} file: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        secret = _strip_newline(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} file is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{path}: the {what} file is empty")
    return secret


read_password_file = read_secret_file


def _program(command: str, keys: SecretKeys | None = None) -> str:
    """The program of a secret command: the only part of it ever shown (its
    arguments may carry a token)."""
    fallback = keys.command if keys is not None else "command"
    try:
        words = shlex.split(command)
    except ValueError:
        return fallback
    return words[0] if words else fallback


def run_secret_command(
    command: str, timeout: float | None = None, keys: SecretKeys | None = None
) -> str:
    """Run ``command`` (split with shlex, no shell) and return its stdout without one
    trailing newline. Raise AuthError naming only the program if it cannot start, exits
    non-zero, runs longer than ``timeout`` (default PASSWORD_COMMAND_TIMEOUT) or prints
    nothing. Its arguments, output and error output are never shown. ``keys`` names the
    key and the secret in messages (default: the default source's, ``password_command``)."""
    keys = keys or _default_keys()
    key = keys.command if keys is not None else "command"
    what = _what(keys)
    limit = PASSWORD_COMMAND_TIMEOUT if timeout is None else timeout
    try:
        argv = shlex.split(command)
    except ValueError:
        raise ConfigError(f"{key}: cannot be split into words") from None
    if not argv:
        raise ConfigError(f"{key}: is empty")
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
            f"{key}: cannot run {program!r}: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill(proc)
        # A vault not reachable yet (at boot, say) is temporary (75), not a refused login:
        # 77 would keep a systemd service down for good (RestartPreventExitStatus).
        raise TransientError(
            f"{key}: {program!r} did not finish within {limit:g} seconds"
        ) from None
    if proc.returncode != 0:
        raise AuthError(f"{key}: {program!r} failed with exit status {proc.returncode}")
    try:
        secret = _strip_newline(out.decode("utf-8"))
    except UnicodeDecodeError:
        raise AuthError(f"{key}: {program!r} printed something not UTF-8") from None
    if not secret:
        raise AuthError(f"{key}: {program!r} printed no {what}")
    return secret


def run_password_command(command: str, timeout: float | None = None) -> str:
    """``run_secret_command`` for the default source's secret (``password_command``)."""
    return run_secret_command(command, timeout)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - POSIX here
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.communicate()


def _read_keyring(account: AccountConfig, keys: SecretKeys) -> str | None:
    try:
        import keyring  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"account {account.name!r} has {keys.keyring} = true but the keyring package is "
            "not installed: pip install 'e4sync[keyring]'"
        ) from None
    try:
        secret = keyring.get_password(KEYRING_SERVICE, account.options.get(keys.keyring_user))
    except Exception as exc:  # backends raise their own types (NoKeyringError, DBus, …)
        # A keyring daemon not up yet is temporary, like an unreachable platform.
        raise TransientError(
            f"account {account.name!r}: the keyring could not be read ({type(exc).__name__})"
        ) from None
    return secret or None


def _prompt(account: AccountConfig, keys: SecretKeys) -> str | None:
    user = account.options.get(keys.keyring_user)
    whom = f"{user} ({account.name})" if user else account.name
    try:
        return getpass.getpass(f"{keys.platform} {keys.what} for {whom}: ")
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


def _write_private(path: Path, text: str, exclusive: bool = False) -> None:
    # O_CREAT's mode only applies to a new file; fchmod covers a file that already
    # existed with a wider mode. Neither depends on the umask. ``exclusive``: a file that
    # appeared since it was checked is not replaced either (O_EXCL).
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    if exclusive:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise CantCreate(f"refusing to overwrite the password file {path}", str(path)) from None
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
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, secret = line.partition(":")
        user = user.strip()
        if not sep or not user or not secret or not user.isprintable():
            problems.append(f"{source}: line {number}: expected email:password")
            continue
        # Two accounts with one login would log each other out (one live login each).
        seen = first_line.setdefault(user.lower(), number)
        if seen != number:
            problems.append(
                f"{source}: line {number}: the login {user!r} is already on line {seen}; "
                "keep one of them"
            )
            continue
        entries.append((user, secret))
    if problems:
        raise ConfigError(f"{source}: cannot import the users file", problems)
    if not entries:
        raise ConfigError(f"{source}: no email:password lines found")

    target = Path(out_dir)
    taken: set[str] = set()
    planned = [(user, secret, _account_name(user, taken)) for user, secret in entries]
    # Every file is checked before any is written: an import never replaces a password.
    existing = [
        str((target / f"{name}.password").absolute())
        for _, _, name in planned
        if os.path.lexists(target / f"{name}.password")
    ]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise CantCreate(
            f"refusing to overwrite the password file {existing[0]}{more}: an import never "
            "replaces a password; remove the old files or choose another --out",
            existing[0],
        )
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CantCreate(f"cannot create {target}: {exc.strerror or exc}", str(target)) from None
    blocks: list[str] = []
    for user, secret, name in planned:
        password_file = (target / f"{name}.password").absolute()
        _write_private(password_file, secret, exclusive=True)
        blocks.append(
            "[[account]]\n"
            f"name = {_toml_string(name)}\n"
            f"username = {_toml_string(user)}\n"
            f"password_file = {_toml_string(str(password_file))}\n"
        )
    return "\n".join(blocks)
