"""Fuzzing e4sync.config with hypothesis: whatever the TOML text, the values or the
environment, load_config gives a Config or a ConfigError, never another exception; and
durations round-trip through format_duration/parse_duration."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e4sync import config as C
from e4sync.errors import ConfigError

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

KEYS = [(s, k) for s, table in C.SCHEMA.items() for k in table]
ACCOUNT_KEYS = [*C.account_schema("e4connect"), "remote", "password", "bogus"]


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))


def _load(data: bytes, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_bytes(data)
        try:
            cfg = C.load_config(path, env=env)
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
            return
        # Whatever loads must also be showable.
        C.render_toml(C.effective_config(cfg))


def _toml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return C._toml_value(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(repr, value)) + "]"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(value)


scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=2),
    st.sampled_from(["15m", "1h30m", "0", "7d", "", "UTC", "Europe/Rome", "http://127.0.0.1:1"]),
    st.sampled_from(["e4connect", "embraceplus", "E4connect", "../x"]),  # for source
)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    _load(data, {})


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("[]{}=.\"'#\n ,abrnot_0123456789-:+")), max_size=200))
def test_toml_looking_text_never_crash(text: str) -> None:
    _load(text.encode(), {"E4_USER": "u@x"})


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(KEYS), scalars), max_size=6),
    st.lists(
        st.dictionaries(st.sampled_from(ACCOUNT_KEYS), scalars, max_size=5),
        max_size=3,
    ),
)
def test_random_values_never_crash(
    values: list[tuple[tuple[str, str], object]], accounts: list[dict[str, object]]
) -> None:
    by_section: dict[str, dict[str, object]] = {}
    for (section, key), value in values:
        by_section.setdefault(section, {})[key] = value
    lines = []
    for section, table in by_section.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_scalar(v)}" for key, v in table.items()]
    for acct in accounts:
        lines.append("[[account]]")
        lines += [f"{k} = {_toml_scalar(v)}" for k, v in acct.items()]
    _load("\n".join(lines).encode(), {})


@FUZZ
@given(
    st.dictionaries(
        st.one_of(
            st.sampled_from([f"E4SYNC_{s.upper()}__{k.upper()}" for s, k in KEYS]),
            st.from_regex(r"E4SYNC_[A-Z_]{0,8}__[A-Z_.]{0,8}", fullmatch=True),
            st.sampled_from(["E4_USER", "E4_PWD", "STATE_DIRECTORY", "E4SYNC_CONFIG"]),
        ),
        st.text(
            alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
            max_size=20,
        ),
        max_size=5,
    )
)
def test_random_environment_never_crash(env: dict[str, str]) -> None:
    env.pop("E4SYNC_CONFIG", None)  # pointing at random names is covered elsewhere
    try:
        C.load_config(None, env=env)
    except ConfigError:
        pass


@FUZZ
@given(st.integers(min_value=0, max_value=int(C.MAX_DURATION)))
def test_whole_durations_round_trip(seconds: int) -> None:
    assert C.parse_duration(C.format_duration(seconds)) == seconds


@FUZZ
@given(st.floats(min_value=0, max_value=C.MAX_DURATION - 1))
def test_fractional_durations_round_trip(seconds: float) -> None:
    assert C.parse_duration(C.format_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


@FUZZ
@given(st.one_of(st.text(max_size=20), scalars))
def test_parse_duration_only_raises_value_error(value: object) -> None:
    try:
        result = C.parse_duration(value)  # type: ignore[arg-type]
    except ValueError:
        return
    assert 0 <= result <= C.MAX_DURATION
