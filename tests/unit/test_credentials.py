"""Tests for e4sync.credentials: every password source, in order, with real files and
real child processes. Mocked only where the real thing cannot exist here: the keyring
package is not installed (a tiny stand-in module on sys.path plays it) and there is no
terminal (getpass is replaced for the prompt tests)."""

from __future__ import annotations

import dataclasses
import getpass
import os
import shlex
import stat
import sys
import time
import tomllib
from pathlib import Path

import pytest

from e4sync import credentials as K
from e4sync.config import RemoteConfig, load_config
from e4sync.errors import AuthError, ConfigError, TransientError

SECRET = "s3cr3t-Pa55"


def account(name: str = "lab", **options: object) -> K.AccountConfig:
    """An E4 Connect account; ``options`` change its source's keys."""
    values = {
        "username": "lab@example.org",
        "base_url": "https://www.empatica.com/connect",
        "password_file": None,
        "password_env": None,
        "password_command": None,
        "keyring": False,
    }
    return K.AccountConfig(
        name=name,
        source="e4connect",
        options={**values, **options},
        layout="{session_id}.zip",
        remote=RemoteConfig(False, 0.0, 0.0, 50),
    )


def replaced(acct: K.AccountConfig, **options: object) -> K.AccountConfig:
    return dataclasses.replace(acct, options={**acct.options, **options})


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def py_command(code: str) -> str:
    return shlex.join([sys.executable, "-c", code])


@pytest.fixture
def fake_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # keyring is an optional extra and not installed here: a real module on sys.path
    # with the same get_password() stands in for it.
    folder = tmp_path / "fake_site"
    folder.mkdir()
    (folder / "keyring.py").write_text(
        "STORE = {}\n"
        "def get_password(service, username):\n"
        "    if username == 'broken@example.org':\n"
        "        raise RuntimeError('no backend ' + service)\n"
        "    return STORE.get((service, username))\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "keyring", raising=False)
    return folder


# ---------------------------------------------------------------- order


def test_sources_in_order(
    tmp_path: Path, fake_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    per_account = private_file(creds / "e4sync-password-lab", "from-creds-lab\n")
    shared = private_file(creds / "e4sync-password", "from-creds-shared\n")
    pw_file = private_file(tmp_path / "lab.pw", "from-file\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "LAB_PW": "from-env"}
    acct = account(
        password_file=pw_file,
        password_command=py_command("print('from-command')"),
        password_env="LAB_PW",
        keyring=True,
    )
    import keyring  # the stand-in

    keyring.STORE[("e4sync", "lab@example.org")] = "from-keyring"
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "from-prompt")

    expected = [
        ("credentials-directory", str(per_account), "from-creds-lab"),
        ("credentials-directory", str(shared), "from-creds-shared"),
        ("password-file", str(pw_file), "from-file"),
        ("password-command", sys.executable, "from-command"),
        ("environment", "$LAB_PW", "from-env"),
        ("keyring", "service 'e4sync', user 'lab@example.org'", "from-keyring"),
        ("prompt", "terminal", "from-prompt"),
    ]
    for kind, detail, secret in expected:
        assert K.password_source(acct, env, interactive=True) == K.PasswordSource(kind, detail)
        assert K.resolve_password(acct, env, interactive=True) == secret
        # remove this source so the next one is reached
        if kind == "credentials-directory":
            Path(detail).unlink()
        elif kind == "password-file":
            acct = replaced(acct, password_file=None)
        elif kind == "password-command":
            acct = replaced(acct, password_command=None)
        elif kind == "environment":
            env.pop("LAB_PW")
        elif kind == "keyring":
            keyring.STORE.clear()  # an empty keyring falls through to the prompt
            assert K.resolve_password(acct, env, interactive=True) == "from-prompt"
            acct = replaced(acct, keyring=False)
    assert K.password_source(acct, env, interactive=False) is None


def test_credentials_directory_belongs_to_the_right_account(tmp_path: Path) -> None:
    private_file(tmp_path / "e4sync-password-other", "not-mine")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert K.password_source(account(), env, interactive=False) is None
    private_file(tmp_path / "e4sync-password", "shared\r\n", mode=0o644)  # systemd's own file
    assert K.resolve_password(account(), env, interactive=False) == "shared"


def test_default_account_reads_e4_pwd() -> None:
    acct = account(name="default")
    assert K.resolve_password(acct, {"E4_PWD": SECRET}, interactive=False) == SECRET
    with pytest.raises(AuthError):
        K.resolve_password(account(), {"E4_PWD": SECRET}, interactive=False)


def test_nothing_found_is_auth_error_listing_the_options() -> None:
    with pytest.raises(AuthError) as info:
        K.resolve_password(account(password_env="UNSET_VAR"), {}, interactive=False)
    assert info.value.exit_code == 77
    text = str(info.value)
    for option in ("e4sync-password-lab", "password_file", "password_command", "password_env"):
        assert option in text
    assert "keyring" in text and "terminal" in text


# ---------------------------------------------------------------- password_file


def test_password_file_strips_one_newline(tmp_path: Path) -> None:
    for content, expected in [("pw\n", "pw"), ("pw\n\n", "pw\n"), ("pw \r\n", "pw "), ("pw", "pw")]:
        path = private_file(tmp_path / "pw", content)
        assert K.resolve_password(account(password_file=path), {}, interactive=False) == expected


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_password_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = private_file(tmp_path / "lab.pw", SECRET, mode=mode)
    with pytest.raises(ConfigError) as info:
        K.resolve_password(account(password_file=path), {}, interactive=False)
    assert info.value.exit_code == 78
    assert f"chmod 600 {path}" in str(info.value) and str(path) in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_password_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    # The tests run as root, whom the check exempts, so the owner rule is checked with
    # an explicit effective uid.
    path = private_file(tmp_path / "lab.pw", SECRET)
    st = os.stat(path)
    K.check_password_file_stat(path, st, euid=st.st_uid)
    K.check_password_file_stat(path, st, euid=0)
    with pytest.raises(ConfigError, match="belongs to user id"):
        K.check_password_file_stat(path, st, euid=st.st_uid + 4242)


def test_password_file_missing_empty_or_not_a_file(tmp_path: Path) -> None:
    for path, needle in [
        (tmp_path / "missing.pw", "does not exist"),
        (private_file(tmp_path / "empty.pw", "\n"), "is empty"),
        (tmp_path, "not a regular file"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            K.resolve_password(account(password_file=path), {}, interactive=False)
    fifo = tmp_path / "fifo.pw"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):  # and does not hang
        K.resolve_password(account(password_file=fifo), {}, interactive=False)


# ---------------------------------------------------------------- password_command


def test_password_command_output_is_the_password() -> None:
    acct = account(password_command=py_command(f"print({SECRET!r})"))
    assert K.resolve_password(acct, {}, interactive=False) == SECRET


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        (f"import sys; print({SECRET!r}); sys.exit(3)", "failed with exit status 3"),
        ("pass", "printed no password"),
        (f"import sys; sys.stderr.write({SECRET!r}); sys.exit(1)", "exit status 1"),
    ],
)
def test_password_command_failures_name_only_the_program(code: str, needle: str) -> None:
    acct = account(password_command=py_command(code) + " --token=t0k3n")
    with pytest.raises(AuthError) as info:
        K.resolve_password(acct, {}, interactive=False)
    text = str(info.value) + repr(info.value)
    assert needle in text and sys.executable in text
    for leak in (SECRET, "t0k3n", "sys.exit", "import"):
        assert leak not in text


def test_password_command_that_hangs_is_killed(tmp_path: Path) -> None:
    # A grandchild holding stdout open must not keep us waiting past the timeout.
    marker = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    acct = account(password_command=py_command(code))
    started = time.monotonic()
    # Temporary (75), not a refused login (77), which would keep a service down for good.
    with pytest.raises(TransientError, match="did not finish within 1.5 seconds"):
        K.resolve_password(acct, {}, interactive=False, command_timeout=1.5)
    assert time.monotonic() - started < 10
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # reaped by init; poll its disappearance
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the password command's grandchild was left running")


def test_password_command_not_found() -> None:
    acct = account(password_command="/nonexistent/e4-pass --token=t0k3n")
    with pytest.raises(ConfigError, match="cannot run '/nonexistent/e4-pass'") as info:
        K.resolve_password(acct, {}, interactive=False)
    assert "t0k3n" not in str(info.value)


# ---------------------------------------------------------------- keyring and prompt


def test_keyring_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keyring", None)  # import keyring -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'e4sync\[keyring\]'"):
        K.resolve_password(account(keyring=True), {}, interactive=False)


def test_keyring_backend_failure_is_temporary(fake_keyring: Path) -> None:
    acct = account(keyring=True, username="broken@example.org")
    with pytest.raises(TransientError, match=r"keyring could not be read \(RuntimeError\)"):
        K.resolve_password(acct, {}, interactive=False)


def test_prompt_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": asked.append(prompt) or SECRET)
    with pytest.raises(AuthError):
        K.resolve_password(account(), {}, interactive=False)
    assert asked == []
    assert K.resolve_password(account(), {}, interactive=True) == SECRET
    assert "lab@example.org" in asked[0]
    # Detection: pytest's stdin is not a terminal.
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115
    assert K.password_source(account(), {}) is None


# ---------------------------------------------------------------- provider


def test_provider_rereads_rotated_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = private_file(tmp_path / "lab.pw", "one\n")
    provide = K.password_provider(account(password_file=path), {}, interactive=False)
    assert provide() == "one"
    private_file(path, "two\n")
    assert provide() == "two"

    typed = iter(["first", "second"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(typed))
    provide = K.password_provider(account(), {}, interactive=True)
    assert provide() == provide() == "first"  # a re-login does not ask again


def test_whitespace_hint_counts_and_names_the_source_never_the_secret(tmp_path: Path) -> None:
    path = private_file(tmp_path / "lab.pw", f"{SECRET} \n\n")
    provide = K.password_provider(account(password_file=path), {}, interactive=False)
    secret = provide()
    assert secret == f"{SECRET} \n"  # exactly one trailing newline removed, as before
    hint = provide.whitespace_hint(secret)
    assert hint == (
        f"the password from {path} has trailing whitespace (2 characters); check the file"
        " (only one final newline is removed)"
    )
    assert SECRET not in repr(provide)
    provide = K.password_provider(
        account(name="default"), {"E4_PWD": f"\t{SECRET}"}, interactive=False
    )
    hint = provide.whitespace_hint(provide())
    assert hint == (
        "the password in $E4_PWD has leading whitespace (1 character); check the variable"
    )
    cmd = account(password_command=py_command(f"print(' {SECRET}  ')"))
    provide = K.password_provider(cmd, {}, interactive=False)
    hint = provide.whitespace_hint(provide())
    assert hint is not None and "leading whitespace (1 character)" in hint
    assert "trailing whitespace (2 characters)" in hint and "password_command" in hint
    # The program only, not its arguments (" -c ": a checkout path may hold "-c").
    assert SECRET not in hint and " -c " not in hint and "print(" not in hint
    assert K.whitespace_hint(SECRET) is None
    assert K.whitespace_hint("\u00a0" + SECRET) is not None  # a pasted no-break space
    assert K.whitespace_hint("   ") == (
        "the password has trailing whitespace (3 characters); check where it comes from"
    )


def test_secret_never_in_reprs(tmp_path: Path) -> None:
    acct = account(password_command=py_command(f"print({SECRET!r})") + " --token=t0k3n")
    assert "t0k3n" not in repr(acct)
    source = K.password_source(acct, {}, interactive=False)
    assert source is not None and SECRET not in repr(source) and "t0k3n" not in repr(source)


# ---------------------------------------------------------------- import


def test_import_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text(
        "# lab accounts\n\nalice@lab.org:pa:ss:word\nbob.smith@lab.org:b0b\nalice@other.org:x\n"
    )
    out = tmp_path / "secrets"
    old = os.umask(0)  # a permissive umask must not widen the files
    try:
        snippet = K.import_users_file(users, out)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    blocks = tomllib.loads(snippet)["account"]
    assert [(b["name"], b["username"]) for b in blocks] == [
        ("alice", "alice@lab.org"),
        ("bob.smith", "bob.smith@lab.org"),
        ("alice-2", "alice@other.org"),
    ]
    for block in blocks:
        assert stat.S_IMODE(Path(block["password_file"]).stat().st_mode) == 0o600
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(snippet)
    cfg = load_config(cfg_file, env={})
    secrets = [K.resolve_password(a, {}, interactive=False) for a in cfg.accounts]
    assert secrets == ["pa:ss:word", "b0b", "x"]


def test_import_users_file_bad_line_names_line_not_content(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"ok@lab.org:pw\n{SECRET}\n")
    with pytest.raises(ConfigError, match="line 2: expected email:password") as info:
        K.import_users_file(users, tmp_path / "out")
    assert SECRET not in str(info.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- any kind's secret


def test_another_kind_declares_its_secret_keys_and_the_same_code_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_keyring: Path
) -> None:
    from tests.unit import fake_kinds

    fake_kinds.install(monkeypatch)

    def s3(**options: object) -> K.AccountConfig:
        values = {"bucket": "b", "access_key_id": "AKIA1", **options}
        return K.AccountConfig(
            name="study",
            source="fakes3",
            options=values,
            layout="",
            remote=RemoteConfig(False, 0.0, 0.0, 50),
        )

    assert K.secret_keys(s3()).file == "secret_access_key_file"
    creds = tmp_path / "creds"
    creds.mkdir()
    private_file(creds / "e4sync-s3-secret-study", "from-creds\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "S3_SECRET": "from-env"}
    assert K.resolve_secret(s3(), env, interactive=False) == "from-creds"
    key_file = private_file(tmp_path / "study.secret", "from-file\n")
    assert K.resolve_secret(s3(secret_access_key_file=key_file), {}, interactive=False) == (
        "from-file"
    )
    command = s3(secret_access_key_command=py_command("print('from-command')"))
    assert K.resolve_secret(command, {}, interactive=False) == "from-command"
    env.pop("CREDENTIALS_DIRECTORY")
    assert K.resolve_secret(s3(secret_access_key_env="S3_SECRET"), env, False) == "from-env"
    import keyring  # the stand-in

    keyring.STORE[("e4sync", "AKIA1")] = "from-keyring"
    assert K.resolve_secret(s3(keyring=True), {}, interactive=False) == "from-keyring"

    # Its messages name its own keys and its secret, never E4 Connect's.
    with pytest.raises(AuthError) as info:
        K.resolve_secret(s3(), {"E4_PWD": "not-for-s3"}, interactive=True)
    text = str(info.value)
    assert text.startswith("no secret access key found for account 'study' (AKIA1)")
    for option in (
        "e4sync-s3-secret-study",
        "secret_access_key_file = PATH",
        "secret_access_key_command",
        "secret_access_key_env",
        "keyring = true",
    ):
        assert option in text
    assert "password" not in text and "E4_PWD" not in text and "terminal" not in text
    private_file(key_file, "from-file", mode=0o644)
    with pytest.raises(ConfigError, match="the secret access key file can be read by others"):
        K.resolve_secret(s3(secret_access_key_file=key_file), {}, interactive=False)
    empty = s3(secret_access_key_command=py_command("pass"))
    with pytest.raises(AuthError, match="secret_access_key_command: .* printed no secret access"):
        K.resolve_secret(empty, {}, interactive=False)
    spaced = s3(secret_access_key_command=py_command("print(' x')"))
    provide = K.secret_provider(spaced, {}, interactive=False)
    hint = provide.whitespace_hint(provide())
    assert hint is not None and hint.startswith(
        "the secret access key printed by secret_access_key_command"
    )
