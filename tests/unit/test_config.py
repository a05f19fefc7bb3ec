"""Tests for e4sync.config: lookup, defaults, validation, env overrides, show, docs sync.

Real TOML files in tmp_path; the platformdirs directories are pointed into tmp_path
through the XDG variables so the user's own configuration is never read.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from e4sync import config as C
from e4sync.config.example import render_example
from e4sync.errors import ConfigError
from e4sync.sources import settings
from tests.unit import fake_kinds

E4 = settings("e4connect")

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = '[[account]]\nname = "lab"\nusername = "lab@example.org"\n'


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "xdg" / var.lower()))


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> C.Config:
    return C.load_config(write(tmp_path, text), env=env or {})


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    assert info.value.exit_code == 78
    return info.value.problems


# ---------------------------------------------------------------- defaults and lookup


def test_e4_user_alone_gives_default_account_and_defaults(tmp_path: Path) -> None:
    cfg = C.load_config(None, env={"E4_USER": "me@example.org", "E4_PWD": "pw"})
    assert cfg.path is None
    (acct,) = cfg.accounts
    assert (acct.name, acct.source) == ("default", "e4connect")
    assert (acct.options["username"], acct.options["password_env"]) == ("me@example.org", "E4_PWD")
    assert acct.options["base_url"] == "https://www.empatica.com/connect"
    assert acct.layout == E4.DEFAULT_LAYOUT and acct.remote == cfg.remote
    assert cfg.archive == C.ArchiveConfig(
        root=tmp_path / "xdg" / "xdg_data_home" / "e4sync" / "archive",
        layout="",  # each account's source's default
        timezone="UTC",
        scrub_interval=None,
    )
    assert cfg.schedule == C.ScheduleConfig(interval=900.0, jitter=60.0)
    assert cfg.download == C.DownloadConfig(4, 120.0, 10.0, 10, 60.0, 43200.0)
    assert cfg.remote == C.RemoteConfig(False, 7 * 86400.0, 86400.0, 50)
    state_dir = tmp_path / "xdg" / "xdg_state_home" / "e4sync"
    assert cfg.state == C.StateConfig(
        f"sqlite:///{state_dir.as_posix()}/state.db", state_dir, 300.0
    )
    assert cfg.monitor == C.MonitorConfig("", None)


def test_no_file_and_no_e4_user_says_how_to_configure() -> None:
    with pytest.raises(ConfigError) as info:
        C.load_config(None, env={})
    text = str(info.value)
    assert "E4_USER" in text and "--config" in text and "E4SYNC_CONFIG" in text


def test_file_without_accounts_uses_e4_user(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[download]\nconcurrency = 2\n", {"E4_USER": "u@x", "E4_PWD": "p"})
    assert [a.name for a in cfg.accounts] == ["default"] and cfg.download.concurrency == 2
    assert any("no [[account]]" in p for p in problems(tmp_path, "[download]\n"))
    assert any("no [[account]]" in p for p in problems(tmp_path, "account = []\n"))


def test_state_directory_from_systemd(tmp_path: Path) -> None:
    env = {"E4_USER": "u@x", "STATE_DIRECTORY": "/var/lib/e4sync:/var/lib/other"}
    cfg = C.load_config(None, env=env)
    assert cfg.state.dir == Path("/var/lib/e4sync")
    assert cfg.state.url == "sqlite:////var/lib/e4sync/state.db"


def test_named_file_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file.*--config"):
        C.load_config(tmp_path / "nope.toml", env={"E4_USER": "u@x"})
    with pytest.raises(ConfigError, match="no such file.*E4SYNC_CONFIG"):
        C.load_config(None, env={"E4SYNC_CONFIG": str(tmp_path / "nope.toml")})


def test_lookup_order(tmp_path: Path) -> None:
    flag = write(tmp_path, ACCOUNT, "flag.toml")
    named = write(tmp_path, ACCOUNT, "named.toml")
    user_cfg = tmp_path / "xdg" / "xdg_config_home" / "e4sync" / "config.toml"
    systemd_dir = tmp_path / "etc-e4sync"
    assert C.config_search_path(None, {}) is None
    user_cfg.parent.mkdir(parents=True)
    user_cfg.write_text(ACCOUNT)
    assert C.config_search_path(None, {}) == user_cfg
    systemd_dir.mkdir()
    env = {"CONFIGURATION_DIRECTORY": str(systemd_dir)}
    assert C.config_search_path(None, env) == user_cfg  # no config.toml there yet
    (systemd_dir / "config.toml").write_text(ACCOUNT)
    assert C.config_search_path(None, env) == systemd_dir / "config.toml"
    env["E4SYNC_CONFIG"] = str(named)
    assert C.config_search_path(None, env) == named
    assert C.config_search_path(flag, env) == flag
    assert C.load_config(flag, env).path == flag
    assert C.load_config(None, {}).path == user_cfg


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    text = '[archive]\nroot = "data"\n[state]\ndir = "~/st"\n' + ACCOUNT
    text += 'password_file = "secret/lab.pw"\n'
    cfg = load(tmp_path, text)
    assert cfg.archive.root == tmp_path / "data"
    assert cfg.state.dir == Path("~/st").expanduser()
    assert cfg.accounts[0].options["password_file"] == tmp_path / "secret" / "lab.pw"


# ---------------------------------------------------------------- problems


def test_unknown_key_names_file_and_key_with_suggestion(tmp_path: Path) -> None:
    found = problems(tmp_path, "[download]\nconcurency = 8\n" + ACCOUNT)
    path = tmp_path / "config.toml"
    assert found == [f"{path}: [download] concurency: unknown key (did you mean 'concurrency'?)"]
    found = problems(tmp_path, "[archve]\nroot = 'x'\n" + ACCOUNT + "usernme = 'a'\n")
    assert f"{path}: [archve]: unknown section (did you mean 'archive'?)" in found
    assert f"{path}: [account \"lab\"] usernme: unknown key (did you mean 'username'?)" in found


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = (
        '[schedule]\ninterval = "5.5.x"\njitter = -1\n'
        '[download]\nconcurrency = 0\ntimeout = "fast"\nbogus = 1\n'
        '[archive]\ntimezone = "Mars/Olympus"\n'
        '[[account]]\nname = "bad name"\n'
    )
    env = {"E4SYNC_DOWNLOAD__MAX_ATTEMPTS": "lots", "E4SYNC_DOWNLAOD__TIMEOUT": "1s"}
    found = problems(tmp_path, text, env)
    joined = "\n".join(found)
    for needle in (
        'interval: expected a duration like "15m"',
        'got "5.5.x"',
        "jitter: expected a duration of zero or more",
        "concurrency: must be between 1 and 64, got 0",
        "timeout: expected a duration",
        "bogus: unknown key",
        "timezone:",
        'name: "bad name" is not a valid account name',
        "username: required key is missing",
        'E4SYNC_DOWNLOAD__MAX_ATTEMPTS: expected an integer, got "lots"',
        "E4SYNC_DOWNLAOD__TIMEOUT: unknown section 'downlaod' (did you mean 'download'?)",
    ):
        assert needle in joined
    assert len(found) == 10  # the first two needles are one problem


def _bad_value(kind: str) -> object:
    return {
        "int": "four",
        "bool": "yes",
        "duration": "5.5.x",
        "duration_off": [1],
        "hours": "twenty",
    }.get(kind, 42)


SECTION_KEYS = [(s, k) for s, table in C.SCHEMA.items() for k in table]


@pytest.mark.parametrize(("section", "key"), SECTION_KEYS)
def test_each_key_rejects_a_wrong_type(tmp_path: Path, section: str, key: str) -> None:
    value = _bad_value(C.SCHEMA[section][key].kind)
    literal = repr(value).replace("'", '"')
    found = problems(tmp_path, f"[{section}]\n{key} = {literal}\n" + ACCOUNT)
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'config.toml'}: [{section}] {key}: expected")


@pytest.mark.parametrize("key", list(C.account_schema("e4connect")))
def test_each_account_key_rejects_a_wrong_type(tmp_path: Path, key: str) -> None:
    fields = {"name": '"lab"', "username": '"lab@example.org"'}
    fields[key] = '"maybe"' if C.account_schema("e4connect")[key].kind == "bool" else "7"
    text = "[[account]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())
    found = problems(tmp_path, text)
    assert any(f" {key}: expected" in p for p in found), found


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("7d", 604800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("1.5h", 5400),
        ("90", 90),
        (90, 90),
        (2.5, 2.5),
        (" 15m ", 900),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert C.parse_duration(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["", "m", "5.5.x", "30m1h", "1h1h", "-5s", "1e3", "15 m", "1w", True, None, -1, 1e12]
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        C.parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_parse_duration_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        C.parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (90, "1m30s"), (900, "15m"), (5400, "1h30m"), (604800, "7d"), (90.5, "1m30.5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert C.format_duration(seconds) == text
    assert C.parse_duration(text) == seconds


def test_timezone(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[archive]\ntimezone = "Europe/Rome"\n' + ACCOUNT)
    assert cfg.archive.timezone == "Europe/Rome"
    for bad in ("Mars/Olympus", "../etc/passwd", "/etc/localtime", ""):
        (found,) = problems(tmp_path, f'[archive]\ntimezone = "{bad}"\n' + ACCOUNT)
        assert "timezone:" in found and "IANA" in found


@pytest.mark.parametrize(
    "text",
    [
        'password = "hunter2"\n' + ACCOUNT,
        '[download]\npassword = "hunter2"\n' + ACCOUNT,
        ACCOUNT + 'password = "hunter2"\n',
        ACCOUNT + '[account.remote]\npassword = "hunter2"\n',
    ],
)
def test_password_key_is_refused_everywhere(tmp_path: Path, text: str) -> None:
    (found,) = problems(tmp_path, text)
    assert "password: passwords never go in the configuration file" in found
    assert "password_file" in found and "password_command" in found and "keyring" in found
    assert "hunter2" not in found


def test_per_account_remote_is_merged_over_global(tmp_path: Path) -> None:
    text = (
        '[remote]\ndelete_after_verify = true\ndelete_grace = "2d"\n'
        + ACCOUNT
        + '[account.remote]\ndelete_grace = "3d"\nmax_deletes_per_pass = 5\n'
        + '[[account]]\nname = "other"\nusername = "other@example.org"\n'
    )
    cfg = load(tmp_path, text)
    lab, other = cfg.accounts
    assert lab.remote == C.RemoteConfig(True, 604800.0, 3 * 86400.0, 5)
    assert other.remote == cfg.remote == C.RemoteConfig(True, 604800.0, 2 * 86400.0, 50)


def test_accounts_checked(tmp_path: Path) -> None:
    text = (
        ACCOUNT
        + ACCOUNT
        + '[[account]]\nname = "b"\nusername = "LAB@example.org"\n'
        + '[[account]]\nname = ".."\nusername = "c@x"\n'
        + '[[account]]\nname = "d"\nusername = "d@x"\nbase_url = "http://e4.example.org"\n'
        + '[[account]]\nname = "e"\nusername = "e@x"\nbase_url = "https://u:s3cret@h.org/c"\n'
        + '[[account]]\nname = "f"\nusername = "f@x"\npassword_command = "op \'read"\n'
    )
    joined = "\n".join(problems(tmp_path, text))
    assert "name: duplicate" in joined and "same login as account 'lab'" in joined
    assert "not a valid account name" in joined
    assert "plain http:// is only allowed for loopback" in joined
    assert "must not contain a user name or password" in joined and "s3cret" not in joined
    assert "password_command: cannot be split" in joined and "'read" not in joined


def test_loopback_http_allowed_and_trailing_slash_dropped(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:8080/connect/", "http://localhost:1", "http://[::1]:9/"):
        cfg = load(tmp_path, ACCOUNT + f'base_url = "{url}"\n')
        assert cfg.accounts[0].options["base_url"] == url.rstrip("/")


def test_array_shapes(tmp_path: Path) -> None:
    assert "write [[account]]" in problems(tmp_path, '[account]\nname = "x"\n')[0]
    assert "expected a table" in "\n".join(problems(tmp_path, "archive = 5\n" + ACCOUNT))
    assert "expected a table" in "\n".join(problems(tmp_path, "account = [1]\n"))


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "[download]\nconcurrency = 4\ntimeout = \n")
    assert found.startswith(f"{tmp_path / 'config.toml'}: line 3, column 11: TOML syntax error")
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        C.load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        C.load_config(tmp_path, env={})


def test_metrics_and_healthcheck(tmp_path: Path) -> None:
    text = '[monitor]\nhealthcheck_url = "https://hc-ping.com/abc-123"\n'
    cfg = load(tmp_path, text + 'metrics_textfile = "m/e4sync.prom"\n' + ACCOUNT)
    assert cfg.monitor == C.MonitorConfig("https://hc-ping.com/abc-123", tmp_path / "m/e4sync.prom")
    (found,) = problems(tmp_path, '[monitor]\nmetrics_textfile = "e4.txt"\n' + ACCOUNT)
    assert "must end in .prom" in found
    (found,) = problems(tmp_path, '[monitor]\nhealthcheck_url = "ftp://x/y"\n' + ACCOUNT)
    assert "must start with https://" in found


def test_backoff_not_above_max_backoff(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, '[download]\nbackoff = "2h"\nmax_backoff = "1h"\n' + ACCOUNT)
    assert "max_backoff: must not be less than backoff" in found


def test_layout_is_validated_by_archive(tmp_path: Path) -> None:
    found = problems(tmp_path, '[archive]\nlayout = "{nonsense_placeholder}/{"\n' + ACCOUNT)
    assert len(found) == 1 and "[archive] layout:" in found[0]


# ---------------------------------------------------------------- source kinds


def test_source_defaults_to_e4connect_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    (acct,) = load(tmp_path, ACCOUNT).accounts
    assert acct.source == "e4connect"
    assert load(tmp_path, ACCOUNT + 'source = "e4connect"\n').accounts == (acct,)
    where = f'{tmp_path / "config.toml"}: [account "lab"]'
    # Only the source is named: the other keys cannot be judged without it.
    assert problems(tmp_path, ACCOUNT + 'source = "e4conect"\nbogus = 1\n') == [
        f"{where} source: unknown source 'e4conect' (known: e4connect, embraceplus)"
    ]
    assert problems(tmp_path, ACCOUNT + "source = 7\n") == [
        f"{where} source: expected a string, got 7 (an integer)"
    ]
    # A known source judges the keys by its own: E4 Connect's username is not one of them.
    assert problems(tmp_path, ACCOUNT + 'source = "embraceplus"\n') == [
        f"{where} username: a key of source 'e4connect' accounts; this account's source is "
        "'embraceplus'",
        f"{where} bucket: required key is missing",
        f"{where} prefix: required key is missing",
    ]


def test_an_account_takes_the_keys_of_its_source(tmp_path: Path, monkeypatch) -> None:
    fake_kinds.install(monkeypatch)
    s3 = (
        '[[account]]\nname = "study"\nsource = "fakes3"\nbucket = "b"\naccess_key_id = "AK1"\n'
        'secret_access_key_command = "vault read -token=t0k3n s3"\n'
    )
    cfg = load(tmp_path, s3)
    (acct,) = cfg.accounts
    assert (acct.name, acct.source, acct.layout) == ("study", "fakes3", "{account}/{key}")
    assert dict(acct.options) == {
        "bucket": "b",
        "access_key_id": "AK1",
        "secret_access_key_file": None,
        "secret_access_key_env": None,
        "secret_access_key_command": "vault read -token=t0k3n s3",
        "keyring": False,
    }
    shown = C.render_toml(C.effective_config(cfg))
    assert "t0k3n" not in repr(acct) and "t0k3n" not in shown
    assert 'secret_access_key_command = "***"' in shown and 'bucket = "b"' in shown

    # A key of another kind is named as such, both ways.
    path = tmp_path / "config.toml"
    found = problems(tmp_path, s3 + 'username = "lab@example.org"\n' + ACCOUNT + 'bucket = "b"\n')
    assert found == [
        f"{path}: [account \"study\"] username: a key of source 'e4connect' accounts; this "
        "account's source is 'fakes3'",
        # Named after the first kind that has the key: EmbracePlus has a bucket too.
        f"{path}: [account \"lab\"] bucket: a key of source 'embraceplus' accounts; this "
        "account's source is 'e4connect'",
    ]
    assert problems(tmp_path, '[[account]]\nname = "s"\nsource = "fakes3"\nbucket = "b"\n') == [
        f'{path}: [account "s"] access_key_id: required key is missing'
    ]
    (found,) = problems(tmp_path, s3 + 'secret_access_key = "abc123"\n')
    assert "secret_access_key: secret access keys never go in the configuration file" in found
    assert "secret_access_key_file = PATH" in found and "e4sync-s3-secret" in found
    assert "abc123" not in found


EMBRACEPLUS = (
    '[[account]]\nname = "study-829"\nsource = "embraceplus"\n'
    'bucket = "empatica-us-east-1-prod-data"\nprefix = "v2/829/1/1/"\n'
)


def test_a_minimal_embraceplus_account_takes_the_defaults_of_section_9(tmp_path: Path) -> None:
    (acct,) = load(tmp_path, EMBRACEPLUS).accounts
    assert (acct.name, acct.source, acct.layout) == ("study-829", "embraceplus", "{account}/{key}")
    assert dict(acct.options) == {
        "bucket": "empatica-us-east-1-prod-data",
        "prefix": "v2/829/1/1/",
        "region": "us-east-1",
        "access_key_id": "",
        "secret_access_key_file": None,
        "secret_access_key_env": None,
        "secret_access_key_command": None,
        "keyring": False,
        "profile": "",
        "endpoint_url": "",
        "lookback": 14 * 86400,
        "full_listing": 86400,
    }
    # Every key of section 9's example, an S3-compatible store on loopback over http.
    secret = write(tmp_path, "s3cr3t\n", "study.secret")
    secret.chmod(0o600)
    full = EMBRACEPLUS + (
        f'region = "eu-west-1"\naccess_key_id = "AKIAEXAMPLE"\n'
        f'secret_access_key_file = "{secret}"\n'
        'endpoint_url = "http://127.0.0.1:9000/"\nlookback = "3d"\nfull_listing = "6h"\n'
        'layout = "{account}/{participant}/{date:%Y}/{date}/{kind}/{file}"\n'
    )
    (acct,) = load(tmp_path, full).accounts
    assert acct.options["endpoint_url"] == "http://127.0.0.1:9000"
    assert (acct.options["lookback"], acct.options["full_listing"]) == (3 * 86400, 6 * 3600)
    assert acct.options["secret_access_key_file"] == secret


def test_embraceplus_keys_are_checked_and_named(tmp_path: Path) -> None:
    where = f'{tmp_path / "config.toml"}: [account "study-829"]'
    assert problems(tmp_path, EMBRACEPLUS + 'username = "lab@example.org"\n') == [
        f"{where} username: a key of source 'e4connect' accounts; this account's source is "
        "'embraceplus'"
    ]
    cases = {
        'prefix = "v2/829/1/1"': 'prefix: "v2/829/1/1" must be a folder of the bucket, ending in',
        'prefix = "/v2/829/"': "prefix: ",
        'prefix = "v2//1/"': "must not hold '//', '.' or '..' folders",
        'prefix = "v2/../1/"': "must not hold '//', '.' or '..' folders",
        'bucket = "a/b"': 'bucket: "a/b" is not a bucket name',
        'region = "US East"': 'region: "US East" is not a region name',
        'endpoint_url = "http://s3.example.org"': "endpoint_url: plain http:// is only allowed",
        'endpoint_url = "ftp://127.0.0.1"': "endpoint_url: must start with https://",
        'access_key_id = "AKIA EXAMPLE"': "access_key_id: must be printable ASCII",
        'lookback = "two weeks"': "lookback: expected a duration",
        'profile = "lab\\u0007"': "profile: must not contain control characters",
    }
    for line, expected in cases.items():
        text = (
            EMBRACEPLUS.replace('prefix = "v2/829/1/1/"\n', "") if "prefix" in line else EMBRACEPLUS
        )
        text = (
            text.replace('bucket = "empatica-us-east-1-prod-data"\n', "")
            if "bucket" in line
            else text
        )
        (found,) = problems(tmp_path, text + line + "\n")
        assert found.startswith(where) and expected in found, (line, found)
    # A secret needs the key id it belongs to; a profile and a key id exclude each other.
    assert problems(tmp_path, EMBRACEPLUS + 'secret_access_key_env = "S3_SECRET"\n') == [
        f"{where} access_key_id: required with secret_access_key_env: the secret access key "
        "belongs to a key id"
    ]
    (found,) = problems(tmp_path, EMBRACEPLUS + 'access_key_id = "AKIA1"\nprofile = "lab"\n')
    assert found.startswith(f"{where} profile: give either a profile or access_key_id")
    # The secret itself is refused, never echoed, with where it goes instead.
    (found,) = problems(tmp_path, EMBRACEPLUS + 'secret_access_key = "wJalrXUtnFEMI"\n')
    assert found.startswith(f"{where} secret_access_key: secret access keys never go in")
    assert "e4sync-s3-secret" in found and "wJalrXUtnFEMI" not in found
    # Two accounts mirroring one prefix would archive each object twice.
    twice = EMBRACEPLUS + EMBRACEPLUS.replace('"study-829"', '"again"')
    (found,) = problems(tmp_path, twice)
    assert "[account \"again\"] prefix: same login as account 'study-829'" in found
    # Layouts: the placeholders of section 9; {key} keeps its folders and takes no spec.
    (found,) = problems(tmp_path, EMBRACEPLUS + 'layout = "{account}/{session_id}.zip"\n')
    assert "unknown placeholder {session_id} for source 'embraceplus'" in found
    assert found.endswith("Known: account, key, participant, serial, date, kind, metric, file")
    (found,) = problems(tmp_path, EMBRACEPLUS + 'layout = "{account}/{key:>9}"\n')
    assert "{key:>9}: bad format spec" in found


def test_an_embraceplus_secret_command_is_masked(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        EMBRACEPLUS + 'access_key_id = "AKIA1"\nsecret_access_key_command = "vault -t=t0k3n"\n',
    )
    (acct,) = cfg.accounts
    shown = C.render_toml(C.effective_config(cfg))
    assert "t0k3n" not in repr(acct) and "t0k3n" not in shown
    assert 'secret_access_key_command = "***"' in shown and 'access_key_id = "AKIA1"' in shown


def test_layouts_use_the_placeholders_and_the_default_of_the_source(
    tmp_path: Path, monkeypatch
) -> None:
    fake_kinds.install(monkeypatch)
    s3 = '[[account]]\nname = "study"\nsource = "fakes3"\nbucket = "b"\naccess_key_id = "A"\n'
    cfg = load(tmp_path, ACCOUNT + s3)
    assert [a.layout for a in cfg.accounts] == [E4.DEFAULT_LAYOUT, "{account}/{key}"]
    path = tmp_path / "config.toml"
    (found,) = problems(tmp_path, s3 + 'layout = "{account}/{device_serial}.zip"\n')
    assert found.startswith(
        f'{path}: [account "study"] layout: unknown placeholder {{device_serial}} for source '
        "'fakes3'"
    )
    assert found.endswith("Known: account, key")
    (found,) = problems(tmp_path, ACCOUNT + 'layout = "{metric}/{session_id}.zip"\n')
    assert "unknown placeholder {metric} for source 'e4connect'" in found
    # The archive's layout is used by every account that sets none: its kind must fill it.
    archive = '[archive]\nlayout = "{account}/{session_id}.zip"\n'
    (found,) = problems(tmp_path, archive + ACCOUNT + s3)
    assert found.startswith(f"{path}: [archive] layout: unknown placeholder {{session_id}}")
    assert found.endswith("(used by account 'study')")
    cfg = load(tmp_path, archive + ACCOUNT + s3 + 'layout = "{account}/all.zip"\n')
    assert cfg.archive.layout == "{account}/{session_id}.zip"
    assert [a.layout for a in cfg.accounts] == [cfg.archive.layout, "{account}/all.zip"]


def test_account_options_are_read_only_and_their_secrets_masked(tmp_path: Path) -> None:
    cfg = load(tmp_path, ACCOUNT + 'password_command = "op read op://vault/t0k3n"\n')
    (acct,) = cfg.accounts
    assert acct.options["username"] == "lab@example.org" and acct.options["keyring"] is False
    with pytest.raises(TypeError):
        acct.options["username"] = "other"  # type: ignore[index]
    assert "t0k3n" not in repr(acct) and "'password_command': '***'" in repr(acct)
    assert hash(acct) == hash(dataclasses.replace(acct)) and acct == dataclasses.replace(acct)
    # Built by hand from a plain mapping, an account still masks what its kind calls secret,
    # and everything when its kind is unknown.
    for source, key in (("e4connect", "password_command"), ("nosuch", "anything")):
        hand = C.AccountConfig(
            name="x", source=source, options={key: "t0k3n"}, layout="", remote=cfg.remote
        )
        assert "t0k3n" not in repr(hand) and hand.options[key] == "t0k3n"


def test_the_environment_account_comes_from_the_default_source() -> None:
    with pytest.raises(ConfigError) as info:
        C.load_config(None, env={"E4_USER": "me\x01@example.org"})
    assert info.value.problems == ["E4_USER: must not contain control characters"]
    cfg = C.load_config(None, env={"E4_USER": "me@example.org"})
    assert cfg.accounts[0].options["password_env"] == E4.ENV_PASSWORD


# ---------------------------------------------------------------- env overrides


def test_env_overrides_are_coerced(tmp_path: Path) -> None:
    env = {
        "E4SYNC_DOWNLOAD__CONCURRENCY": "8",
        "E4SYNC_REMOTE__DELETE_AFTER_VERIFY": "yes",
        "E4SYNC_SCHEDULE__INTERVAL": "1h30m",
        "E4SYNC_ARCHIVE__SCRUB_INTERVAL": "7d",
        "E4SYNC_STATE__URL": "postgresql+psycopg://e4@db/e4",
        "E4SYNC_CONFIG_UNRELATED": "ignored: no double underscore",
    }
    cfg = load(tmp_path, "[download]\nconcurrency = 2\n" + ACCOUNT, env)
    assert cfg.download.concurrency == 8
    assert cfg.remote.delete_after_verify is True and cfg.accounts[0].remote.delete_after_verify
    assert cfg.schedule.interval == 5400 and cfg.archive.scrub_interval == 7 * 86400
    assert cfg.state.url == "postgresql+psycopg://e4@db/e4"


def test_env_override_problems(tmp_path: Path) -> None:
    env = {
        "E4SYNC_DOWNLOAD__CONCURENCY": "8",
        "E4SYNC_REMOTE__DELETE_AFTER_VERIFY": "perhaps",
        "E4SYNC_ACCOUNT__NAME": "x",
    }
    found = problems(tmp_path, ACCOUNT, env)
    assert (
        "E4SYNC_DOWNLOAD__CONCURENCY: unknown key 'concurency' in [download] "
        "(did you mean 'concurrency'?)"
    ) in found
    assert 'E4SYNC_REMOTE__DELETE_AFTER_VERIFY: expected true or false, got "perhaps"' in "\n".join(
        found
    )
    assert "E4SYNC_ACCOUNT__NAME: accounts cannot be set from the environment" in found
    assert len(found) == 3


# ---------------------------------------------------------------- show


def test_effective_config_masks_secrets_and_round_trips(tmp_path: Path) -> None:
    text = (
        '[state]\nurl = "postgresql+psycopg://e4:dbs3cret@db/e4"\n'
        '[monitor]\nhealthcheck_url = "https://hc-ping.com/tok3n-uuid"\n'
        + ACCOUNT
        + 'password_command = "vault read -token=t0ken e4"\npassword_file = "/etc/pw"\n'
        + '[[account]]\nname = "env"\nusername = "e@x"\npassword_env = "LAB_PW"\n'
    )
    cfg = load(tmp_path, text)
    shown = C.effective_config(cfg)
    rendered = C.render_toml(shown)
    for secret in ("dbs3cret", "t0ken", "tok3n-uuid"):
        assert secret not in rendered and secret not in repr(cfg)
    assert shown["account"][0]["password_command"] == "***"
    assert shown["account"][0]["password_file"] == "/etc/pw"
    assert shown["account"][1]["password_env"] == "LAB_PW"
    assert shown["state"]["url"] == "postgresql+psycopg://e4:***@db/e4"
    assert shown["download"]["timeout"] == "2m" and shown["schedule"]["interval"] == "15m"
    assert set(shown) - {"path"} == {s for s in C.config_keys() if s != "account.remote"}

    # Without masked values, what `config show` prints reads back as the same config.
    plain = load(tmp_path, ACCOUNT + '[account.remote]\ndelete_grace = "36h"\n')
    again = C.load_config(write(tmp_path, C.render_toml(C.effective_config(plain))), env={})
    assert again.accounts == plain.accounts and again.download == plain.download
    assert again.archive == plain.archive and again.state == plain.state


# ---------------------------------------------------------------- docs stay in sync


def _doc_keys(text: str) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    section = None
    for line in text.splitlines():
        heading = re.match(r"#+ `\[{1,2}([a-z.]+)\]{1,2}`", line)
        if heading:
            section = heading[1]
            continue
        row = re.match(r"\| `([a-z_]+)` \|", line)
        if row and section:
            keys.setdefault(section, set()).add(row[1])
    return keys


def test_example_docs_and_schema_list_the_same_keys() -> None:
    expected = {section: set(keys) for section, keys in C.config_keys().items()}
    example = tomllib.loads((REPO / "config.example.toml").read_text(encoding="utf-8"))
    from_example = {s: set(example[s]) for s in C.SCHEMA}
    from_example["account"] = set(example["account"][0]) - {"remote"}
    from_example["account.remote"] = set(example["account"][0]["remote"])
    assert from_example == expected
    assert _doc_keys((REPO / "docs" / "configuration.md").read_text(encoding="utf-8")) == expected


def test_example_loads_as_the_defaults(tmp_path: Path) -> None:
    cfg = C.load_config(REPO / "config.example.toml", env={})
    defaults = C.load_config(None, env={"E4_USER": "u@x"})
    for section in ("archive", "schedule", "download", "remote", "state", "monitor"):
        assert getattr(cfg, section) == getattr(defaults, section), section
    (acct,) = cfg.accounts
    assert acct.name == "lab" and acct.options["password_file"] == Path("/etc/e4sync/lab.password")
    assert acct.remote == cfg.remote and acct.layout == E4.DEFAULT_LAYOUT


def test_the_example_is_what_the_schema_generates() -> None:
    # Regenerate with: python -m e4sync.config.example > config.example.toml
    committed = (REPO / "config.example.toml").read_text(encoding="utf-8")
    assert committed == render_example(), "config.example.toml is stale: regenerate it"


def test_the_example_documents_every_key_with_its_default() -> None:
    tables: dict[str, list[str]] = {}
    for block in render_example().split("\n\n"):
        for header in [x for x in block.splitlines() if x.startswith("[")][:1]:
            tables[header.split("]")[0].strip("[")] = block.splitlines()
    schemas = {**C.SCHEMA, "account": C.account_schema("e4connect")}
    assert list(tables) == [*schemas, "account.remote"]
    for section, schema in schemas.items():
        for key, spec in schema.items():
            (line,) = [x for x in tables[section] if x.startswith(f"{key} = ")]
            assert "# " + spec.doc in line, (section, key)
            if spec.default is None:
                assert line.endswith("(required)"), (section, key)
            elif spec.example is None:
                assert line.startswith(f"{key} = {C._toml_value(spec.default)} "), (section, key)
            else:
                assert f"(default {C._toml_value(spec.default)})" in line, (section, key)
