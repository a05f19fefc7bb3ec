"""The simulator's faithfulness check: the real ``e4client`` 1.12 package works against it.

Only e4client's URL class attributes are rewritten (``https://www.empatica.com/connect`` ->
``sim.base_url``); everything else is the installed package talking real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import io
import zipfile

import pytest
from e4client import E4Connect

from e4sync.sources.e4connect.simulator import Faults, Simulator

REAL_BASE = "https://www.empatica.com/connect"


@pytest.fixture
def sim():
    with Simulator(seed=2, sessions=4) as server:
        yield server


@pytest.fixture
def client_cls(sim, monkeypatch):
    urls = [name for name in vars(E4Connect) if name.startswith("_URL_")]
    assert len(urls) == 6  # e4client 1.12's six endpoints
    for name in urls:
        value = getattr(E4Connect, name)
        assert value.startswith(REAL_BASE)
        monkeypatch.setattr(E4Connect, name, value.replace(REAL_BASE, sim.base_url))
    return E4Connect


def test_auth_learns_the_user_id(sim, client_cls):
    client = client_cls(sim.user, sim.password)
    assert client.user_id == sim.user_id()  # e4client's attribute shadows its method
    assert sim.login_count() == 1


def test_wrong_password_fails_the_way_e4client_always_did(sim, client_cls):
    # No 401: the login page comes back, and e4client's regex finds no userId.
    with pytest.raises(AttributeError):
        client_cls(sim.user, "wrong")


def test_sessions_list_and_devices(sim, client_cls):
    client = client_cls(sim.user, sim.password)
    rows = client.sessions_list()
    assert sorted(rows, key=lambda r: int(r["id"])) == sim.sessions()
    assert set(rows[0]) == {"id", "device_id", "duration", "status", "start_time", "label",
                            "device", "exit_code"}  # fmt: skip
    devices = client.purchased_devices()
    assert devices == sim.devices()
    assert set(devices[0]) == {"device_id", "label", "model", "hardware_code", "purchase_code",
                               "purchase_id"}  # fmt: skip


def test_download_session_gives_the_served_zip(sim, client_cls, tmp_path):
    client = client_cls(sim.user, sim.password)
    for row in client.sessions_list()[:2]:
        client.download_session(row["id"], str(tmp_path))
        saved = (tmp_path / f"{row['id']}.zip").read_bytes()
        assert saved == sim.zip_bytes(row["id"])
        zf = zipfile.ZipFile(io.BytesIO(saved))
        assert zf.testzip() is None
        assert {"ACC.csv", "BVP.csv", "EDA.csv", "HR.csv", "IBI.csv", "TEMP.csv", "info.txt",
                "tags.csv"} == set(zf.namelist())  # fmt: skip
        acc = zf.read("ACC.csv").decode().split("\n")
        assert acc[0] == ", ".join([f"{int(row['start_time'])}.000000"] * 3)


def test_remove_session(sim, client_cls):
    client = client_cls(sim.user, sim.password)
    victim = client.sessions_list()[0]["id"]
    client.remove_session(victim)
    assert victim not in {r["id"] for r in client.sessions_list()}
    assert sim.deleted_ids() == {victim}


def test_a_second_login_kills_the_first_clients_cookie(sim, client_cls):
    first = client_cls(sim.user, sim.password)
    client_cls(sim.user, sim.password)
    # e4client cannot tell: it gets the login page where JSON was expected and fails to parse it.
    with pytest.raises(ValueError):
        first.sessions_list()


def test_e4client_saves_an_html_page_as_a_zip(sim, client_cls, tmp_path):
    # The failure e4sync exists to prevent: e4client writes whatever comes back.
    sim.set_faults(Faults(html_instead_of_zip=1.0))
    client = client_cls(sim.user, sim.password)
    sid = sim.sessions()[0]["id"]
    client.download_session(sid, str(tmp_path))
    assert not zipfile.is_zipfile(tmp_path / f"{sid}.zip")
