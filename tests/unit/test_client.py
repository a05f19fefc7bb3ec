"""Tests for e4sync.sources.e4connect.client against the real simulator over real HTTP on 127.0.0.1.

Nothing is mocked: every fault is injected by the simulator on the wire (5xx, 429 with
Retry-After, resets, short bodies, HTML pages, expired cookies, slow first bytes, latency,
bandwidth caps). Retries and backoff are kept tiny so the file runs in seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from e4sync.errors import (
    AuthError,
    Interrupted,
    NotAZipError,
    SessionNotFound,
    TransientError,
    UsageError,
)
from e4sync.sources.e4connect.checks import check_zip
from e4sync.sources.e4connect.client import (
    DEFAULT_BASE_URL,
    E4Connect,
    FetchResult,
    check_base_url,
    check_session_id,
)
from e4sync.sources.e4connect.simulator import Faults, Simulator

USER = "demo@example.org"
PASSWORD = "demo-s3cret-pa55"


@pytest.fixture
def sim():
    simulator = Simulator(port=0, seed=0, sessions=3, user=USER, password=PASSWORD).start()
    try:
        yield simulator
    finally:
        simulator.stop()


def connect(sim: Simulator, **kwargs) -> E4Connect:
    options = dict(retries=3, backoff_factor=0.01, timeout=5.0, connect_timeout=2.0)
    options.update(kwargs)
    user = options.pop("user", USER)
    pwd = options.pop("pwd", PASSWORD)
    return E4Connect(user, pwd, sim.base_url, **options)


@pytest.fixture
def client(sim):
    with connect(sim) as c:
        yield c


def requests_to(sim: Simulator, endpoint: str) -> int:
    return sim.stats()["requests"].get(endpoint, 0)


def small_session(sim: Simulator, duration: float = 60) -> str:
    return sim.add_session(duration=duration)["id"]


# -- login ---------------------------------------------------------------------------


def test_login_and_user_id(sim, client):
    assert client.user_id() == sim.user_id()
    assert sim.login_count() == 1
    assert client.base_url == sim.base_url
    assert PASSWORD not in repr(client)


def test_wrong_password_is_a_readable_auth_error_without_the_password(sim):
    with pytest.raises(AuthError) as caught:
        connect(sim, pwd="Wr0ng-Pa55word")
    message = str(caught.value)
    assert message == f"E4 Connect refused the login for {USER}: wrong username or password"
    assert "Wr0ng-Pa55word" not in message and "Wr0ng-Pa55word" not in repr(caught.value)
    assert caught.value.exit_code == 77
    assert sim.login_count() == 0


def test_no_credentials_means_no_login_until_auth(sim):
    c = E4Connect(base_url=sim.base_url, backoff_factor=0.01)
    assert requests_to(sim, "authenticate") == 0
    with pytest.raises(AuthError):
        c.sessions_list()
    c.auth(USER, PASSWORD)  # e4client's two-step style
    assert c.user_id() == sim.user_id()
    c.close()


def test_login_post_is_never_retried_on_5xx(sim):
    sim.set_faults(Faults(error_5xx=1.0))
    with pytest.raises(TransientError) as caught:
        connect(sim, retries=3)
    assert "authenticate.php" in str(caught.value)
    assert requests_to(sim, "authenticate") == 1


def test_unreachable_platform_is_transient(sim):
    url = sim.base_url
    sim.stop()
    with pytest.raises(TransientError) as caught:
        E4Connect(USER, PASSWORD, url, retries=1, backoff_factor=0.01, connect_timeout=1)
    assert "authenticate.php" in str(caught.value) and PASSWORD not in str(caught.value)


def test_password_provider_is_asked_at_each_login(sim):
    calls = []

    def provider() -> str:
        calls.append(1)
        return PASSWORD

    with E4Connect(USER, base_url=sim.base_url, password_provider=provider) as c:
        assert len(calls) == 1
        sim.expire_cookies()
        c.sessions_list()
        assert len(calls) == 2
        assert sim.login_count() == 2


def test_secrets_never_reach_the_logs(sim, caplog):
    caplog.set_level(logging.DEBUG)
    with connect(sim) as c:
        sim.expire_cookies()
        c.sessions_list()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "logged in to E4 Connect" in text
    assert PASSWORD not in text
    assert "PHPSESSID" not in text


# -- listing --------------------------------------------------------------------------


def test_sessions_list_and_from_to_filtering(sim, client):
    old = sim.add_session(start_time=1_500_000_000, duration=30)
    mid = sim.add_session(start_time=1_600_000_000, duration=30)
    rows = client.sessions_list()
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in sim.sessions())
    assert {r["id"]: r for r in rows}[mid["id"]] == mid
    assert [r["id"] for r in client.sessions_list(1_550_000_000, 1_650_000_000)] == [mid["id"]]
    # both ends inclusive
    assert [r["id"] for r in client.sessions_list(1_500_000_000, 1_500_000_000)] == [old["id"]]
    assert client.sessions_list(end=1_400_000_000) == []
    with pytest.raises(UsageError):
        client.sessions_list(start="yesterday")


def test_string_numbers_are_returned_raw(sim, client):
    sim.set_faults(Faults(string_numbers=True))
    rows = client.sessions_list()
    assert any(isinstance(r["id"], int) for r in rows)
    assert any(isinstance(r["id"], str) for r in rows)
    assert sorted(str(r["id"]) for r in rows) == sorted(r["id"] for r in sim.sessions())


def test_session_and_devices(sim, client):
    row = sim.sessions()[0]
    assert client.session(row["id"]) == row
    assert client.session(int(row["id"])) == row
    assert client.purchased_devices() == sim.devices()
    with pytest.raises(SessionNotFound):
        client.session(1)


# -- downloads ------------------------------------------------------------------------


def test_fetch_equals_the_served_zip(sim, client, tmp_path):
    sid = sim.sessions()[0]["id"]
    expected = sim.zip_bytes(sid)
    seen = []
    result = client.fetch(sid, tmp_path / "s.zip.part", progress=seen.append)
    assert isinstance(result, FetchResult)
    assert result.path.read_bytes() == expected
    assert result.size == result.content_length == len(expected) == sum(seen)
    assert result.sha256 == hashlib.sha256(expected).hexdigest()
    row = sim.sessions()[0]
    assert result.filename is not None and result.filename.startswith(row["start_time"] + "_")
    assert check_zip(result.path, start_time=int(row["start_time"])).ok


def test_download_session_like_e4client(sim, client, tmp_path):
    row = sim.sessions()[1]
    # Into a folder: <id>.zip, the name e4client gave, so its scripts find the file.
    path = Path(client.download_session(row["id"], str(tmp_path)))
    assert path == tmp_path / f"{row['id']}.zip"
    assert path.read_bytes() == sim.zip_bytes(row["id"])
    named = Path(client.download_session(row["id"], tmp_path, platform_name=True))
    assert named.parent == tmp_path and named.name.startswith(row["start_time"] + "_")
    assert named.read_bytes() == sim.zip_bytes(row["id"])
    target = tmp_path / "named.zip"
    assert client.download_session(row["id"], target) == str(target)
    assert target.read_bytes() == sim.zip_bytes(row["id"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, named.name, "named.zip"]
    )


def test_5xx_is_retried_then_transient(sim, tmp_path):
    sid = small_session(sim)
    with connect(sim, retries=6) as c:
        sim.set_faults(Faults(error_5xx=0.4))
        assert c.fetch(sid, tmp_path / "a.part").path.read_bytes() == sim.zip_bytes(sid)
        assert c.sessions_list()
        assert sim.stats()["faults"]["error_5xx"] >= 1
        sim.set_faults(Faults(error_5xx=1.0))
        before = requests_to(sim, "sessions_list")
        with pytest.raises(TransientError) as caught:
            c.sessions_list()
    assert requests_to(sim, "sessions_list") - before == 7  # 1 + retries
    assert "/connect/connect.php/users/" in str(caught.value)


def test_429_honours_retry_after(sim):
    with connect(sim, retries=1) as c:
        sim.set_faults(Faults(rate_429=1.0, retry_after=1))
        began = time.monotonic()
        with pytest.raises(TransientError) as caught:
            c.sessions_list()
        gap = time.monotonic() - began
    assert "429" in str(caught.value)
    assert requests_to(sim, "sessions_list") == 2
    # The client waited Retry-After between its two requests, not its tiny backoff.
    assert gap >= 1.0


def test_reset_mid_body_is_resumed_inside_fetch(sim, tmp_path):
    sid = small_session(sim, duration=600)
    expected = sim.zip_bytes(sid)
    part = tmp_path / "r.part"
    with connect(sim, retries=3) as c:
        c.user_id()
        sent_before = sim.stats()["bytes_sent"]
        sim.set_faults(Faults(reset_mid_body=1.0))  # every answer is cut, 206s included
        log_before = len(sim.request_log())
        with pytest.raises(TransientError):
            c.fetch(sid, part)
        stats = sim.stats()
        assert stats["faults"]["reset_mid_body"] == 4  # the first try and 3 retries
        kept = part.read_bytes()
        assert expected.startswith(kept) and 0 < len(kept) <= stats["bytes_sent"] - sent_before
        # Each retry asks to resume where the part ended, never from the start again. (How
        # far it got is timing: a reset discards whatever the client had not read yet, so
        # the test asserts the order of the resume points, not how many bytes each kept.)
        downloads = [e for e in sim.request_log()[log_before:] if e["endpoint"] == "download"]
        assert len(downloads) == 4 and downloads[0]["range"] is None
        starts = [int(e["range"][len("bytes=") : -1]) for e in downloads[1:] if e["range"]]
        assert starts == sorted(starts) and starts[-1] <= len(kept)
        assert all(e["status"] == 206 for e in downloads[1:] if e["range"])
        sim.set_faults(Faults())
        seen: list[int] = []
        result = c.fetch(sid, part, progress=seen.append)
    assert result.path.read_bytes() == expected
    assert result.sha256 == hashlib.sha256(expected).hexdigest()
    assert seen[0] == len(kept) and sum(seen) == len(expected)


def test_truncated_body_is_transient_and_keeps_the_part(sim, tmp_path):
    sid = small_session(sim, duration=600)
    part = tmp_path / "t.part"
    with connect(sim, retries=1) as c:
        sim.set_faults(Faults(truncate_body=1.0))
        with pytest.raises(TransientError) as caught:
            c.fetch(sid, part)
        assert "cut short" in str(caught.value)
        kept = part.read_bytes()
        assert 0 < len(kept) < len(sim.zip_bytes(sid))
        assert sim.zip_bytes(sid).startswith(kept)
        sim.set_faults(Faults(truncate_body=0.5))
        assert c.fetch(sid, part).path.read_bytes() == sim.zip_bytes(sid)


def test_resume_with_range_after_a_cut(sim, tmp_path, caplog):
    sid = small_session(sim, duration=600)
    expected = sim.zip_bytes(sid)
    part = tmp_path / "x.zip.part"
    with connect(sim, retries=0) as c:
        sim.set_faults(Faults(reset_mid_body=1.0))
        with pytest.raises(TransientError):
            c.fetch(sid, part)
        have = part.stat().st_size
        assert 0 < have < len(expected)
        sim.set_faults(Faults())
        caplog.set_level(logging.INFO, logger="e4sync.sources.e4connect.client")
        sent_before = sim.stats()["bytes_sent"]
        result = c.fetch(sid, part)
    assert result.path.read_bytes() == expected
    assert result.sha256 == hashlib.sha256(expected).hexdigest()
    assert result.size == result.content_length == len(expected)
    assert sim.stats()["responses"].get("206") == 1
    assert sim.stats()["bytes_sent"] - sent_before == len(expected) - have
    assert f"resuming the download at byte {have}" in caplog.text


def test_resume_when_the_server_sends_everything_again(sim, client, tmp_path):
    # A .part from elsewhere (no Accept-Ranges seen by this client): restart from zero.
    sid = small_session(sim)
    part = tmp_path / "y.part"
    part.write_bytes(b"PK\x03\x04garbage")
    assert client.fetch(sid, part).path.read_bytes() == sim.zip_bytes(sid)


def test_a_fresh_fetch_never_writes_through_a_second_name(sim, client, tmp_path):
    # A kill between link(part, final) and unlink(part) leaves the part as a second name of
    # an archived ZIP: starting over must make a new file, not empty the archived one.
    sid = small_session(sim)
    final = tmp_path / "archived.zip"
    final.write_bytes(b"PK\x03\x04 the archived copy")
    part = tmp_path / "archived.zip.part"
    os.link(final, part)
    assert client.fetch(sid, part).path.read_bytes() == sim.zip_bytes(sid)
    assert final.read_bytes() == b"PK\x03\x04 the archived copy"


def test_html_instead_of_zip(sim, client, tmp_path):
    sid = small_session(sim)
    sim.set_faults(Faults(html_instead_of_zip=1.0))
    part = tmp_path / "h.part"
    with pytest.raises(NotAZipError) as caught:
        client.fetch(sid, part)
    assert "HTML page" in str(caught.value)
    assert not part.exists()
    assert sim.login_count() == 1  # a maintenance page is not mistaken for the login page
    with pytest.raises(NotAZipError):
        client.download_session(sid, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_empty_body(sim, client, tmp_path):
    sid = small_session(sim)
    sim.set_faults(Faults(empty_body=1.0))
    with pytest.raises(NotAZipError) as caught:
        client.fetch(sid, tmp_path / "e.part")
    assert "empty body" in str(caught.value)
    assert not (tmp_path / "e.part").exists()


def test_expired_cookie_means_transparent_relogin(sim, client, tmp_path):
    sid = small_session(sim)
    assert sim.expire_cookies() == 1
    assert client.fetch(sid, tmp_path / "c.part").path.read_bytes() == sim.zip_bytes(sid)
    assert sim.login_count() == 2
    sim.expire_cookies()
    assert client.sessions_list()
    sim.expire_cookies()
    client.remove_session(sid)
    assert sid in sim.deleted_ids()
    assert sim.login_count() == 4


def test_another_login_kills_the_cookie_and_the_client_logs_in_again(sim, client):
    assert client.sessions_list()
    with connect(sim) as other:  # one live login per account: this kills client's cookie
        assert other.sessions_list()
    assert sim.login_count() == 2
    assert client.sessions_list()
    assert sim.login_count() == 3


def test_login_page_right_after_a_fresh_login_is_temporary_not_a_bad_password(sim, client):
    # The fresh login proved the password (sessions.php showed the user id), so a cookie that
    # keeps dying is someone else logging in: temporary (75), never 77, which systemd treats
    # as permanent.
    sim.set_faults(Faults(expire_cookie=1.0))
    with pytest.raises(TransientError) as caught:
        client.sessions_list()
    assert not isinstance(caught.value, AuthError)
    assert "login page right after a fresh login" in str(caught.value)
    assert sim.login_count() == 2  # exactly one re-login, not a loop


def test_missing_session_is_session_not_found(sim, client, tmp_path):
    sid = small_session(sim)
    sim.set_faults(Faults(missing_session=1.0))
    with pytest.raises(SessionNotFound) as caught:
        client.fetch(sid, tmp_path / "m.part")
    assert sid in str(caught.value)
    sim.set_faults(Faults())
    with pytest.raises(SessionNotFound):
        client.fetch(999_999_999, tmp_path / "m.part")


def test_slow_first_byte_beyond_the_timeout_is_transient(sim, tmp_path):
    sid = small_session(sim)
    with connect(sim, retries=1, timeout=0.3) as c:
        sim.set_faults(Faults(slow_first_byte=3.0))
        began = time.monotonic()
        with pytest.raises(TransientError):
            c.fetch(sid, tmp_path / "s.part")
        assert time.monotonic() - began < 2.5  # gave up on the timeout, did not wait it out
        sim.set_faults(Faults(slow_first_byte=0.1))
        assert c.fetch(sid, tmp_path / "s.part").path.read_bytes() == sim.zip_bytes(sid)


def test_latency(sim, client):
    sim.set_faults(Faults(latency=0.2))
    began = time.monotonic()
    assert client.sessions_list()
    assert time.monotonic() - began >= 0.2


def test_bandwidth_cap(sim, client, tmp_path):
    sid = small_session(sim, duration=120)
    size = len(sim.zip_bytes(sid))
    sim.set_faults(Faults(bandwidth=size * 3))  # about a third of a second
    began = time.monotonic()
    result = client.fetch(sid, tmp_path / "b.part")
    assert time.monotonic() - began >= 0.25
    assert result.path.read_bytes() == sim.zip_bytes(sid)


def test_cancel_leaves_the_part(sim, client, tmp_path):
    sid = small_session(sim, duration=600)
    size = len(sim.zip_bytes(sid))
    sim.set_faults(Faults(bandwidth=size * 4))
    cancel = threading.Event()
    part = tmp_path / "k.part"
    with pytest.raises(Interrupted):
        client.fetch(sid, part, cancel=cancel, progress=lambda n: cancel.set())
    assert 0 < part.stat().st_size < size
    assert sim.zip_bytes(sid).startswith(part.read_bytes())


# -- remove ---------------------------------------------------------------------------


def test_remove_session(sim, client):
    sid = sim.sessions()[0]["id"]
    client.remove_session(sid)
    assert sid not in [r["id"] for r in client.sessions_list()]
    assert sid in sim.deleted_ids()
    client.remove_session(sid)  # already gone: not an error
    with pytest.raises(SessionNotFound):
        client.session(sid)


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.org/connect",
        "ftp://127.0.0.1/connect",
        "https://user:pw@www.empatica.com/connect",
        "http://10.0.0.1/connect",
        "not a url",
        "",
        "https:///connect",
        "http://127.0.0.1:99999/connect",
    ],
)
def test_bad_base_urls_are_usage_errors(url):
    with pytest.raises(UsageError) as caught:
        E4Connect(base_url=url)
    assert "\n" not in str(caught.value)
    assert "pw" not in str(caught.value).replace("http", "")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/connect/",
        "http://127.9.9.9/connect",
        "http://[::1]:8080/connect",
        "http://localhost/connect",
        DEFAULT_BASE_URL,
        "https://e4.empatica.com/connect",
    ],
)
def test_good_base_urls(url):
    assert check_base_url(url) == url.rstrip("/")
    assert E4Connect(base_url=url).base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "bad", ["1; rm -rf /", "../1", "", "12a", "١٢٣", "1 2", True, 1.5, None, "-4", "1" * 21]
)
def test_bad_session_ids_never_reach_the_network(sim, client, tmp_path, bad):
    before = sim.stats()["requests"]
    for call in (
        lambda: client.fetch(bad, tmp_path / "p"),
        lambda: client.download_session(bad, tmp_path),
        lambda: client.remove_session(bad),
        lambda: client.session(bad),
    ):
        with pytest.raises(UsageError) as caught:
            call()
        assert str(caught.value).startswith("session id must be a number")
    assert sim.stats()["requests"] == before


def test_good_session_ids():
    assert check_session_id(578634) == "578634"
    assert check_session_id(" 578634 ") == "578634"


# -- concurrency ----------------------------------------------------------------------


def test_four_threads_download_with_one_login(sim, client, tmp_path):
    ids = [small_session(sim, duration=300) for _ in range(4)]
    sim.set_faults(Faults(latency=0.2))  # keeps the four downloads in flight together

    def fetch(sid: str) -> bytes:
        return client.fetch(sid, tmp_path / f"{sid}.part").path.read_bytes()

    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(fetch, ids))
    assert bodies == [sim.zip_bytes(sid) for sid in ids]
    assert sim.login_count() == 1
    assert sim.stats()["max_in_flight"]["download"] >= 2


def test_no_login_storm_when_four_threads_see_an_expired_cookie(sim, client, caplog):
    caplog.set_level(logging.DEBUG, logger="e4sync.sources.e4connect.client")
    assert sim.login_count() == 1
    # Latency keeps all four requests in flight with the old cookie, so all four see it die.
    sim.set_faults(Faults(latency=0.2))
    sim.expire_cookies()
    barrier = threading.Barrier(4)

    def work() -> int:
        barrier.wait()
        return len(client.sessions_list())

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _: work(), range(4)))
    assert counts == [len(sim.sessions())] * 4
    assert sim.login_count() == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("logging in again" in m for m in messages) == 1
    # At least three threads saw the dead cookie (normally all four), yet one logged in.
    assert sum("renewed by another thread" in m for m in messages) >= 2


def test_a_failure_urllib3_already_retried_is_not_retried_again(sim):
    """The platform goes away after the login: the listing is tried as urllib3's retries
    allow, not that many times over again by the client's own loop for cut bodies."""
    import socket

    c = connect(sim, retries=3, backoff_factor=0.001)
    c.user_id()
    port = sim.port
    sim.stop()
    # On the same port now: a server that accepts each connection and closes it unanswered.
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(TransientError, match="could not be reached"):
            c.sessions_list()
    finally:
        server.close()
        c.close()
    # urllib3's read retries (at most 2) plus the first try; the old loop made 4 x 3 = 12.
    assert 1 <= len(accepted) <= 3


# -- a stop ends every wait ------------------------------------------------------------


def stop_after(seconds: float) -> threading.Event:
    """An event set ``seconds`` from now, as a signal handler would set it."""
    event = threading.Event()
    timer = threading.Timer(seconds, event.set)
    timer.daemon = True
    timer.start()
    return event


@pytest.mark.parametrize("operation", ["list", "fetch", "delete"])
def test_a_stop_ends_a_retry_after_300_wait_within_a_second(sim, tmp_path, operation):
    sid = small_session(sim)
    with connect(sim, retries=3, cancel=stop_after(0.5)) as c:
        c.user_id()
        sim.set_faults(Faults(rate_429=1.0, retry_after=300))
        calls = {
            "list": c.sessions_list,
            "fetch": lambda: c.fetch(sid, tmp_path / "s.part"),
            "delete": lambda: c.remove_session(sid),
        }
        began = time.monotonic()
        with pytest.raises(Interrupted):
            calls[operation]()
        waited = time.monotonic() - began
    assert waited < 1.5, f"the Retry-After wait outlasted the stop by {waited - 0.5:.1f} s"
    assert sum(sim.stats()["faults"].values()) == 1, "stopped, not asked again"
    assert sid in {s["id"] for s in sim.sessions()}


@pytest.mark.parametrize(
    ("fault", "tries"),
    # 5xx: urllib3's backoff (0 s, then 120 s); a cut body: the client's own loop (60 s).
    [("error_5xx", 2), ("reset_mid_body", 1)],
)
def test_a_stop_ends_urllib3s_backoff_and_the_clients_own(sim, fault, tries):
    with connect(sim, retries=3, backoff_factor=60, cancel=stop_after(0.5)) as c:
        sim.set_faults(Faults(**{fault: 1.0}))
        began = time.monotonic()
        with pytest.raises(Interrupted):
            c.sessions_list()
        assert time.monotonic() - began < 1.5
    assert sim.stats()["faults"][fault] == tries


def test_retry_after_is_still_waited_out_when_no_stop_comes(sim):
    with connect(sim, retries=1, cancel=threading.Event()) as c:
        c.user_id()
        sim.set_faults(Faults(rate_429=1.0, retry_after=1))
        began = time.monotonic()
        with pytest.raises(TransientError, match="429"):
            c.sessions_list()
        gap = time.monotonic() - began
    assert requests_to(sim, "sessions_list") == 2
    assert gap >= 1.0
