"""Tests for the E4 Connect simulator: the ZIP format against real E4 files, every endpoint,
every fault.

Everything runs over real HTTP on 127.0.0.1 with plain ``requests`` or ``http.client``; the ZIPs
are compared with the real recordings in shared/realdata. Nothing is mocked.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from e4sync.sources.e4connect.simulator import Faults, Simulator, zipgen

REALDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata"
NOW = 1_700_000_000
T = 1_551_453_301

# One pattern per line kind, checked against the real files first so that they describe E4.
LINE = {
    "ACC.csv": (r"\d+\.000000, \d+\.000000, \d+\.000000", r"32\.000000, 32\.000000, 32\.000000",
                r"-?\d{1,3},-?\d{1,3},-?\d{1,3}"),
    "BVP.csv": (r"\d+\.00", r"64\.000000", r"-?\d+\.\d\d"),
    "EDA.csv": (r"\d+\.000000", r"4\.000000", r"\d+\.\d{6}"),
    "TEMP.csv": (r"\d+\.000000", r"4\.000000", r"\d+\.\d\d"),
    "HR.csv": (r"\d+\.000000", r"1\.000000", r"\d+\.\d\d"),
    "IBI.csv": (r"\d+\.000000, IBI", None, r"\d+\.\d{6},\d\.\d{5,6}"),  # devicely: 0.62509
}  # fmt: skip


def check_csv(name: str, text: str) -> list[str]:
    """Assert ``text`` has the E4 layout of ``name``; return its data rows."""
    assert text.endswith("\n") and "\r" not in text
    lines = text.split("\n")[:-1]
    first, second, row = LINE[name]
    assert re.fullmatch(first, lines[0]), lines[0]
    if second:
        assert re.fullmatch(second, lines[1]), lines[1]
    rows = lines[2:] if second else lines[1:]
    bad = [x for x in rows if not re.fullmatch(row, x)]
    assert not bad, bad[:3]
    return rows


@pytest.fixture
def server():
    with Simulator(seed=3, sessions=6, now=NOW) as sim:
        yield sim


def login(sim: Simulator, user: str | None = None, password: str | None = None):
    s = requests.Session()
    r = s.post(f"{sim.base_url}/authenticate.php",
               {"username": user or sim.user, "password": password or sim.password})  # fmt: skip
    return s, r


def get(s: requests.Session, sim: Simulator, path: str, **kw) -> requests.Response:
    return s.get(f"{sim.base_url}/{path}", allow_redirects=False, timeout=10, **kw)


def members(data: bytes) -> dict[str, bytes]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.testzip() is None
    return {i.filename: zf.read(i) for i in zf.infolist()}


# --- the ZIP format -------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["devicely", "flirt"])
def test_line_patterns_describe_the_real_files(folder):
    for name in LINE:
        check_csv(name, (REALDATA / folder / name).read_text("ascii"))


def test_zip_has_the_e4_members_headers_and_rates():
    data = zipgen.zip_bytes(0, "578634", T, 600.5)
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert [i.filename for i in zf.infolist()] == list(zipgen.MEMBERS)
    assert all("/" not in i.filename for i in zf.infolist())  # flat
    files = members(data)
    assert files["info.txt"] == (REALDATA / "devicely" / "info.txt").read_bytes()
    assert len(files["info.txt"]) == 1544
    for info in zf.infolist():
        want = zipfile.ZIP_STORED if info.file_size == 0 else zipfile.ZIP_DEFLATED
        assert info.compress_type == want
    counts = {}
    for name in LINE:
        text = files[name].decode("ascii")
        counts[name] = len(check_csv(name, text))
        start = float(text.split("\n")[0].split(",")[0])
        assert start == (T + 10 if name == "HR.csv" else T)
    assert counts["ACC.csv"] == 600 * 32 + 16 and counts["BVP.csv"] == 600 * 64 + 32
    assert counts["EDA.csv"] == counts["TEMP.csv"] == 2402
    assert counts["HR.csv"] == 600 - 10
    assert files["ACC.csv"].startswith(
        b"1551453301.000000, 1551453301.000000, 1551453301.000000\n"
        b"32.000000, 32.000000, 32.000000\n"
    )
    assert files["BVP.csv"].startswith(b"1551453301.00\n64.000000\n")
    offsets = [float(r.split(",")[0]) for r in files["IBI.csv"].decode().split("\n")[1:-1]]
    assert offsets == sorted(offsets) and 0 < offsets[0] and offsets[-1] < 600.5
    for line in files["tags.csv"].decode().splitlines():
        assert re.fullmatch(r"\d+\.\d\d", line) and T <= float(line) <= T + 600.5


def test_values_are_plausible():
    files = members(zipgen.zip_bytes(0, "1", T, 1200))
    acc = [int(v) for r in check_csv("ACC.csv", files["ACC.csv"].decode()) for v in r.split(",")]
    assert all(-128 <= v <= 127 for v in acc)
    hr = [float(v) for v in check_csv("HR.csv", files["HR.csv"].decode())]
    assert all(40 <= v <= 190 for v in hr)
    temp = [float(v) for v in check_csv("TEMP.csv", files["TEMP.csv"].decode())]
    assert all(20 <= v <= 40 for v in temp)
    ibi = [float(r.split(",")[1]) for r in check_csv("IBI.csv", files["IBI.csv"].decode())]
    assert ibi and all(0.3 <= v <= 1.7 for v in ibi)


def test_zip_bytes_are_deterministic_per_seed_and_session():
    a = zipgen.zip_bytes(7, "100", T, 900)
    assert a == zipgen.zip_bytes(7, "100", T, 900)
    assert a != zipgen.zip_bytes(8, "100", T, 900)
    assert a != zipgen.zip_bytes(7, "101", T, 900)
    with (
        Simulator(seed=5, sessions=3, now=NOW) as one,
        Simulator(seed=5, sessions=3, now=NOW) as two,
    ):
        assert one.sessions() == two.sessions()
        for row in one.sessions():
            assert one.zip_bytes(row["id"]) == two.zip_bytes(row["id"])


def test_an_hour_zips_to_just_under_a_megabyte():
    data = zipgen.zip_bytes(0, "42", T, 3600)
    unzipped = sum(len(v) for v in members(data).values())
    assert 800_000 < len(data) < 1_000_000
    assert 2_500_000 < unzipped < 3_300_000
    assert abs(zipgen.estimate_size(0, 3600) - len(data)) < 0.05 * len(data)


def test_quirks_empty_tags_and_header_only_ibi():
    short = members(zipgen.zip_bytes(0, "9", T, 10))
    assert short["IBI.csv"] == f"{T}.000000, IBI\n".encode()
    assert short["HR.csv"] == f"{T + 10}.000000\n1.000000\n".encode()
    tags = [members(zipgen.zip_bytes(0, str(i), T, 120))["tags.csv"] for i in range(20)]
    assert b"" in tags and any(tags)
    empty = members(zipgen.zip_bytes(0, "0", T, 0))
    assert empty["ACC.csv"].count(b"\n") == 2 and empty["tags.csv"] == b""


def test_size_bytes_is_honoured_and_big_zips_stream_from_disk(server):
    row = server.add_session(size_bytes=20_000_000)
    began = time.perf_counter()
    path = server.zip_path(row["id"])
    elapsed = time.perf_counter() - began
    assert abs(path.stat().st_size - 20_000_000) < 0.02 * 20_000_000
    assert elapsed < 2.0  # ~130 MB/s here; the floor only catches a fall to per-row Python
    assert float(row["duration"]) > 20 * 3600
    zf = zipfile.ZipFile(path)
    assert zf.testzip() is None
    duration = float(row["duration"])
    with zf.open("EDA.csv") as f:
        assert sum(1 for _ in f) - 2 == int(duration * 4)
    s, _ = login(server)
    r = get(s, server, f"download.php?id={row['id']}", stream=True)
    got = b"".join(r.iter_content(1 << 20))
    assert len(got) == int(r.headers["Content-Length"]) == path.stat().st_size
    assert r.headers["ETag"] == f'"{server.zip_sha256(row["id"])}"'
    assert got == path.read_bytes()
    server.stop()
    assert not path.exists()  # the cache directory goes with the server


# --- login and pages ------------------------------------------------------------------------------


def test_login_sets_a_cookie_and_ends_on_the_dashboard(server):
    s, r = login(server)
    assert r.status_code == 200 and r.url.endswith("/connect/dashboard.php")
    first = r.history[0]
    assert first.status_code == 302 and first.headers["Location"] == "/connect/dashboard.php"
    assert re.fullmatch(r"PHPSESSID=[0-9a-f]{26}; [Pp]ath=/; HttpOnly", first.headers["Set-Cookie"])
    page = get(s, server, "sessions.php")
    assert page.status_code == 200
    assert f"var userId = {server.user_id()};" in page.text
    assert server.login_count() == 1


def test_wrong_password_looks_like_the_login_page_never_401(server):
    s, r = login(server, password="wrong")
    assert r.status_code == 200 and r.url.endswith("/connect/login.php")
    assert r.history[0].status_code == 302 and "Set-Cookie" not in r.history[0].headers
    for needle in ('name="username"', 'name="password"', 'id="login-button"'):
        assert needle in r.text
    assert "userId" not in get(s, server, "sessions.php").text
    assert server.login_count() == 0
    assert server.stats()["accounts"][server.user]["failed_logins"] == 1


@pytest.mark.parametrize(
    "path",
    ["sessions.php", "dashboard.php", "download.php?id=1", "connect.php/studies",
     "connect.php/users/1/sessions?from=0&to=999999999999", "connect.php/sessions/1",
     "connect.php/users/1/api/purchasedDevices"],
)  # fmt: skip
def test_without_a_cookie_everything_redirects_to_login(server, path):
    r = get(requests.Session(), server, path)
    assert r.status_code == 302 and r.headers["Location"] == "/connect/login.php"
    follow = requests.get(f"{server.base_url}/{path}", timeout=10)
    assert follow.status_code == 200 and 'id="login-button"' in follow.text


# --- the JSON API ---------------------------------------------------------------------------------


def test_session_list_rows_are_strings_filtered_inclusively_and_unsorted(server):
    s, _ = login(server)
    uid = server.user_id()
    r = get(s, server, f"connect.php/users/{uid}/sessions?from=0&to=999999999999")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    rows = r.json()
    assert sorted(rows, key=lambda x: int(x["id"])) == server.sessions()
    assert [x["id"] for x in rows] != sorted(x["id"] for x in rows)  # not sorted ...
    assert get(s, server, f"connect.php/users/{uid}/sessions").json() == rows  # ... but stable
    for row in rows:
        assert set(row) == {"id", "start_time", "duration", "device_id", "label", "device",
                            "status", "exit_code"}  # fmt: skip
        assert all(isinstance(v, str) for v in row.values())
        assert re.fullmatch(r"[0-9a-f]{6}", row["device_id"]) and row["label"].isdigit()
        assert row["device"] in ("E4 2.1", "E4 2.2", "E4 3.3")
        assert row["status"] == row["exit_code"] == "0"
        assert NOW - 22 * 86400 < int(row["start_time"]) < NOW
    starts = sorted(int(x["start_time"]) for x in rows)
    low, high = starts[1], starts[3]
    window = get(s, server, f"connect.php/users/{uid}/sessions?from={low}&to={high}").json()
    assert sorted(int(x["start_time"]) for x in window) == starts[1:4]


def test_other_users_id_is_forbidden(server):
    other = server.add_account("b@example.org", "pw-b", sessions=2)
    s, _ = login(server)
    assert get(s, server, f"connect.php/users/{other}/sessions").status_code == 403
    assert get(s, server, f"connect.php/users/{other}/api/purchasedDevices").status_code == 403
    b, _ = login(server, "b@example.org", "pw-b")
    rows = get(b, server, f"connect.php/users/{other}/sessions").json()
    assert {r["id"] for r in rows} == {r["id"] for r in server.sessions("b@example.org")}
    mine = server.sessions()[0]["id"]
    assert get(b, server, f"connect.php/sessions/{mine}").status_code == 404
    assert get(b, server, f"download.php?id={mine}").status_code == 404


def test_get_and_delete_one_session(server):
    s, _ = login(server)
    row = server.sessions()[2]
    assert get(s, server, f"connect.php/sessions/{row['id']}").json() == row
    assert get(s, server, "connect.php/sessions/1").status_code == 404
    r = s.delete(f"{server.base_url}/connect.php/sessions/{row['id']}", timeout=10)
    assert r.status_code == 200
    assert row["id"] not in {x["id"] for x in server.sessions()}
    assert server.deleted_ids() == {row["id"]}
    assert s.delete(f"{server.base_url}/connect.php/sessions/{row['id']}").status_code == 404
    assert get(s, server, f"download.php?id={row['id']}").status_code == 404
    assert server.zip_bytes(row["id"])[:4] == b"PK\x03\x04"  # kept for comparing archives


def test_devices_and_studies(server):
    s, _ = login(server)
    devices = get(s, server, f"connect.php/users/{server.user_id()}/api/purchasedDevices").json()
    assert devices == server.devices()
    for d in devices:
        assert set(d) == {"device_id", "label", "model", "hardware_code", "purchase_code",
                          "purchase_id"}  # fmt: skip
        assert all(isinstance(v, str) for v in d.values())
    assert {r["device_id"] for r in server.sessions()} <= {d["device_id"] for d in devices}
    assert get(s, server, "connect.php/studies").json() == []


def test_add_session_with_a_label_and_publish_late(server):
    before = max(int(r["id"]) for r in server.sessions())
    row = server.add_session(label=2588, duration=61.5, start_time=1541950248)
    assert row["label"] == "2588" and row["duration"] == "61.5"
    assert "2588" in {d["label"] for d in server.devices()}
    late = server.publish_late(days_ago=30)
    assert int(late["id"]) > int(row["id"]) > before
    assert abs(int(late["start_time"]) - (time.time() - 30 * 86400)) < 60
    s, _ = login(server)
    rows = get(s, server, f"connect.php/users/{server.user_id()}/sessions").json()
    assert {row["id"], late["id"]} <= {r["id"] for r in rows}
    r = get(s, server, f"download.php?id={row['id']}")
    assert r.headers["Content-Disposition"] == 'attachment; filename="1541950248_A00A1C.zip"'
    assert zipgen.device_serial("16810") == "A041AA"


def test_free_text_labels_download_without_a_serial(server):
    row = server.add_session(label="../x\x00y", duration=20, start_time=T)
    s, _ = login(server)
    r = get(s, server, f"download.php?id={row['id']}")
    assert r.status_code == 200 and r.content == server.zip_bytes(row["id"])
    assert r.headers["Content-Disposition"] == f'attachment; filename="{T}.zip"'
    huge = server.add_session(label="9" * 5000, duration=20, start_time=T)
    assert get(s, server, f"download.php?id={huge['id']}").status_code == 200
    assert server.stats()["internal_errors"] == 0


def test_download_headers_body_and_ranges(server):
    s, _ = login(server)
    row = server.sessions()[0]
    whole = server.zip_bytes(row["id"])
    r = get(s, server, f"download.php?id={row['id']}")
    assert r.status_code == 200 and r.content == whole
    assert server.zip_path(row["id"]).read_bytes() == whole
    assert r.headers["Content-Type"] == "application/zip"
    assert int(r.headers["Content-Length"]) == len(whole)
    serial = zipgen.device_serial(row["label"])
    assert r.headers["Content-Disposition"] == (
        f'attachment; filename="{row["start_time"]}_{serial}.zip"'
    )
    assert r.headers["Accept-Ranges"] == "bytes"
    etag = r.headers["ETag"]
    part = get(s, server, f"download.php?id={row['id']}", headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == whole[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(whole) - 1}/{len(whole)}"
    stale = get(s, server, f"download.php?id={row['id']}",
                headers={"Range": "bytes=1000-", "If-Range": '"old"'})  # fmt: skip
    assert stale.status_code == 200 and stale.content == whole
    fresh = get(s, server, f"download.php?id={row['id']}",
                headers={"Range": "bytes=10-19", "If-Range": etag})  # fmt: skip
    assert fresh.status_code == 206 and fresh.content == whole[10:20]
    beyond = get(
        s, server, f"download.php?id={row['id']}", headers={"Range": f"bytes={len(whole)}-"}
    )
    assert beyond.status_code == 416
    assert get(s, server, "download.php?id=999").status_code == 404


def test_one_login_per_account_and_the_switch(server):
    first, _ = login(server)
    second, _ = login(server)
    uid = server.user_id()
    assert get(first, server, f"connect.php/users/{uid}/sessions").status_code == 302
    assert get(second, server, f"connect.php/users/{uid}/sessions").status_code == 200
    assert server.stats()["accounts"][server.user]["max_valid_cookies"] == 1
    server.set_faults(Faults(one_login=False))
    third, _ = login(server)
    assert get(second, server, f"connect.php/users/{uid}/sessions").status_code == 200
    assert get(third, server, f"connect.php/users/{uid}/sessions").status_code == 200
    assert server.stats()["accounts"][server.user]["max_valid_cookies"] == 2
    assert server.login_count() == 3
    server.expire_cookies()
    assert get(third, server, f"connect.php/users/{uid}/sessions").status_code == 302


def test_stats_count_requests_per_endpoint(server):
    s, _ = login(server)
    get(s, server, f"connect.php/users/{server.user_id()}/sessions")
    get(s, server, f"download.php?id={server.sessions()[0]['id']}")
    st = server.stats()
    assert st["requests"]["authenticate"] == 1 and st["requests"]["sessions_list"] == 1
    assert st["requests"]["download"] == 1 and st["responses"]["200"] >= 3
    assert st["accounts"][server.user]["logins"] == 1
    assert "demo" not in json.dumps(st).replace("demo@example.org", "")  # no password


# --- faults ---------------------------------------------------------------------------------------


def faulty(**faults) -> Simulator:
    return Simulator(seed=11, sessions=2, now=NOW, faults=Faults(**faults))


def test_error_5xx_and_login_only_gets_5xx_or_latency():
    data_faults = {f: 1.0 for f in ("reset_mid_body", "truncate_body", "expire_cookie",
                                    "rate_429", "empty_body", "html_instead_of_zip")}  # fmt: skip
    with faulty(**data_faults) as sim:
        s, r = login(sim)
        assert r.status_code == 200 and "userId" in get(s, sim, "sessions.php").text
    with faulty(error_5xx=1.0) as sim:
        assert login(sim)[1].status_code in (500, 502, 503)
        s = requests.Session()
        assert get(s, sim, "connect.php/studies").status_code in (500, 502, 503)
        assert sim.stats()["faults"]["error_5xx"] == 2


def test_rates_are_per_request_seeded_and_retries_succeed():
    def statuses(seed):
        with Simulator(seed=seed, sessions=1, faults=Faults(error_5xx=0.5)) as sim:
            s = requests.Session()
            return [get(s, sim, "login.php").status_code for _ in range(40)]

    first = statuses(4)
    assert first == statuses(4) and first != statuses(5)
    assert 200 in first and {500, 502, 503} & set(first)


def test_rate_429_sends_retry_after():
    with faulty(rate_429=1.0, retry_after=2) as sim:
        s, _ = login(sim)
        r = get(s, sim, f"connect.php/users/{sim.user_id()}/sessions")
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"


def raw_download(sim: Simulator, s: requests.Session) -> tuple[int, int, bytes | Exception]:
    """(status, Content-Length, body or the error reading it) over a bare http.client."""
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    conn.request("GET", f"/connect/download.php?id={sim.sessions()[0]['id']}",
                 headers={"Cookie": cookie})  # fmt: skip
    resp = conn.getresponse()
    length = int(resp.headers["Content-Length"])
    got = b""
    try:
        while chunk := resp.fp.read1(65536):
            got += chunk
        result: bytes | Exception = got
    except OSError as e:
        result = e
    conn.close()
    return resp.status, length, result


def test_truncate_body_closes_short_of_content_length():
    with faulty(truncate_body=1.0) as sim:
        s, _ = login(sim)
        status, length, body = raw_download(sim, s)
        assert status == 200 and isinstance(body, bytes)
        assert (
            0 < len(body) < length and body == sim.zip_bytes(sim.sessions()[0]["id"])[: len(body)]
        )


def test_reset_mid_body_sends_headers_then_resets():
    with faulty(reset_mid_body=1.0) as sim:
        s, _ = login(sim)
        status, length, body = raw_download(sim, s)
        assert status == 200 and length > 0 and isinstance(body, ConnectionResetError)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            get(s, sim, f"download.php?id={sim.sessions()[0]['id']}")
        assert sim.stats()["faults"]["reset_mid_body"] == 2


def test_html_empty_and_missing_downloads():
    with faulty(html_instead_of_zip=1.0) as sim:
        s, _ = login(sim)
        r = get(s, sim, f"download.php?id={sim.sessions()[0]['id']}")
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert not r.content.startswith(b"PK") and b"<html>" in r.content
    with faulty(empty_body=1.0) as sim:
        s, _ = login(sim)
        r = get(s, sim, f"download.php?id={sim.sessions()[0]['id']}")
        assert r.status_code == 200 and r.headers["Content-Length"] == "0" and r.content == b""
    with faulty(missing_session=1.0) as sim:
        s, _ = login(sim)
        sid = sim.sessions()[0]["id"]
        assert get(s, sim, f"download.php?id={sid}").status_code == 404
        assert s.delete(f"{sim.base_url}/connect.php/sessions/{sid}").status_code == 404
        assert sid in {r["id"] for r in sim.sessions()}


def test_expire_cookie_kills_the_cookie_for_good():
    with faulty(expire_cookie=1.0) as sim:
        s, _ = login(sim)
        url = f"connect.php/users/{sim.user_id()}/sessions"
        r = get(s, sim, url)
        assert r.status_code == 302 and r.headers["Location"] == "/connect/login.php"
        sim.set_faults(Faults())
        assert get(s, sim, url).status_code == 302
        assert sim.stats()["accounts"][sim.user]["valid_cookies"] == 0
        assert get(login(sim)[0], sim, url).status_code == 200


def test_delete_lingers():
    with faulty(delete_lingers=1.0) as sim:
        s, _ = login(sim)
        sid = sim.sessions()[0]["id"]
        assert s.delete(f"{sim.base_url}/connect.php/sessions/{sid}").status_code == 200
        assert sid in {r["id"] for r in sim.sessions()} and not sim.deleted_ids()


def test_string_numbers():
    with faulty(string_numbers=True) as sim:
        s, _ = login(sim)
        rows = get(s, sim, f"connect.php/users/{sim.user_id()}/sessions").json()
        assert any(isinstance(r["id"], int) and isinstance(r["start_time"], int) for r in rows)
        assert any(isinstance(r["id"], str) for r in rows)


def test_latency_bandwidth_and_slow_first_byte():
    with faulty(latency=0.2) as sim:
        began = time.monotonic()
        requests.get(f"{sim.base_url}/login.php", timeout=10)
        assert time.monotonic() - began >= 0.2
    with faulty(bandwidth=1_000_000) as sim:
        s, _ = login(sim)
        began = time.monotonic()
        r = get(s, sim, f"download.php?id={sim.sessions()[0]['id']}")
        assert time.monotonic() - began >= len(r.content) / 1_000_000 * 0.9
        assert r.content == sim.zip_bytes(sim.sessions()[0]["id"])
    with faulty(slow_first_byte=30.0) as sim:
        s, _ = login(sim)
        with pytest.raises(requests.exceptions.ReadTimeout):
            s.get(f"{sim.base_url}/download.php?id={sim.sessions()[0]['id']}", timeout=(5, 0.3))
        began = time.monotonic()
        sim.stop()  # must not wait for the sleeping handler
        assert time.monotonic() - began < 5


def test_extra_member_sessions_serve_one_more_member_for_those_sessions_only():
    with Simulator(seed=11, sessions=3, now=NOW) as sim:
        a, b, _ = (r["id"] for r in sim.sessions())
        genuine = {sid: sim.zip_bytes(sid) for sid in (a, b)}
        sim.set_faults(Faults(extra_member_sessions=[int(a)]))  # numbers taken, kept as ids
        assert sim.faults.extra_member_sessions == (a,) and sim.faults.any_active()
        s, _ = login(sim)
        r = get(s, sim, f"download.php?id={a}")
        got = members(r.content)
        assert list(got) == [*zipgen.MEMBERS, zipgen.EXTRA_MEMBER]
        assert got[zipgen.EXTRA_MEMBER] == zipgen.EXTRA_MEMBER_TEXT
        del got[zipgen.EXTRA_MEMBER]
        assert got == members(genuine[a]), "the E4 members are the genuine ones"
        # The same bytes at every request: as served, with its ETag, and resumable.
        assert r.content == sim.zip_bytes(a) == sim.zip_path(a).read_bytes()
        assert r.headers["ETag"] == f'"{sim.zip_sha256(a)}"'
        part = get(s, sim, f"download.php?id={a}", headers={"Range": "bytes=100-"})
        assert part.status_code == 206 and part.content == r.content[100:]
        assert get(s, sim, f"download.php?id={b}").content == genuine[b]
        assert sim.stats()["faults"]["extra_member"] == 2
        big = sim.add_session(size_bytes=17_000_000)["id"]  # built on disk, not in memory
        sim.set_faults(Faults(extra_member_sessions=[a, big]))
        assert zipgen.EXTRA_MEMBER in zipfile.ZipFile(sim.zip_path(big)).namelist()
        sim.set_faults(Faults())  # off again: the genuine bytes, not a cached copy
        assert sim.zip_bytes(a) == genuine[a]
        assert zipgen.EXTRA_MEMBER not in zipfile.ZipFile(sim.zip_path(big)).namelist()
        r = requests.post(f"{sim.admin_url}/faults", json={"extra_member_sessions": [b]})
        assert r.json()["extra_member_sessions"] == [b]
        assert zipgen.EXTRA_MEMBER in members(sim.zip_bytes(b))
    for bad in ("123", [None], [True], 5):
        with pytest.raises(ValueError, match="extra_member_sessions"):
            Faults(extra_member_sessions=bad)


def test_faults_validate():
    with pytest.raises(ValueError):
        Faults(error_5xx=1.5)
    with pytest.raises(ValueError, match="unknown"):
        Faults.from_dict({"eror_5xx": 0.1})


# --- admin over HTTP and the command line ---------------------------------------------------------


def test_admin_http_hooks(server):
    admin = server.admin_url

    def post(path, body=None):
        r = requests.post(f"{admin}/{path}", json=body or {}, timeout=10)
        return r.status_code, r.json()

    status, body = post("accounts", {"user": "c@example.org", "password": "pw-c", "sessions": 2})
    assert status == 200 and body["user_id"] == server.user_id("c@example.org")
    status, body = post("sessions", {"user": "c@example.org", "count": 2, "duration": 30})
    assert (
        status == 200 and len(body["sessions"]) == 2 and len(server.sessions("c@example.org")) == 4
    )
    status, late = post("publish_late", {"days_ago": 10})
    assert late["id"] in {r["id"] for r in server.sessions()}
    assert post("faults", {"error_5xx": 0.25})[1]["error_5xx"] == 0.25
    assert server.faults.error_5xx == 0.25
    assert post("faults", {"bogus": 1})[0] == 400
    assert requests.put(f"{admin}/faults", json={}).json()["error_5xx"] == 0.0
    s, _ = login(server)
    assert post("expire_cookies")[1]["expired"] == 1
    state = requests.get(f"{admin}/state").json()
    assert state["accounts"]["c@example.org"]["sessions"] == 4
    zipped = requests.get(f"{admin}/zip/{late['id']}")
    assert zipped.content == server.zip_bytes(late["id"])
    assert zipped.headers["X-SHA256"] == server.zip_sha256(late["id"])
    rows = requests.get(f"{admin}/sessions", params={"user": "c@example.org"}).json()
    assert rows == server.sessions("c@example.org")
    assert requests.get(f"{admin}/sessions", params={"user": "nobody"}).status_code == 404


RUN = """
import argparse, sys
from e4sync.sources.e4connect.simulator import cli
parser = argparse.ArgumentParser()
cli.add_arguments(parser)
sys.exit(cli.run(parser.parse_args(sys.argv[1:])))
"""


def test_cli_prints_url_and_stops_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, "--sessions", "2", "--user", "u@x.org", "--password", "pw",
         "--error-5xx", "0.5", "--latency", "0.01", "--extra-member", "7",
         "--extra-member", "12"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()
        m = re.fullmatch(r"E4 Connect simulator at (http://127\.0\.0\.1:\d+/connect)\n", first)
        assert m, first
        assert proc.stdout.readline() == "user: u@x.org password: pw\n"
        admin = proc.stdout.readline().split()[-1]
        state = requests.get(f"{admin}/state", timeout=10).json()
        assert state["accounts"]["u@x.org"]["sessions"] == 2
        faults = requests.get(f"{admin}/faults", timeout=10).json()
        assert faults["error_5xx"] == 0.5 and faults["extra_member_sessions"] == ["7", "12"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_cli_refuses_a_non_loopback_host():
    proc = subprocess.run([sys.executable, "-c", RUN, "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "loopback" in proc.stderr
