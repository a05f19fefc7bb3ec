"""The source contract (SPEC section 7a): what the core relies on from every source, checked
against each real one.

Sources under test: ``E4Source`` over a real ``E4Connect`` client logged in to the real E4
Connect simulator on 127.0.0.1 (nothing mocked: every answer travels over HTTP),
``S3Source`` (EmbracePlus) over boto3 against moto's real S3 server on 127.0.0.1 behind a
counting proxy (tests/moto_s3.py), holding the real EmbracePlus recording, a biomarker
CSV and another file, and ``MemorySource`` (tests/fakes.py), both as a platform that
accepts deletions and as a read-only one. The kind of each is found the way the core finds it,
``e4sync.sources.kind(source.name)``; for ``memory`` that lookup answers through the
test-only registration in ``tests.fakes.register_memory_kind``.

Each test names the behaviour it checks; every assertion compares against what the platform
itself holds (the simulator's ZIP bytes, the MemorySource's bytes), so a source that wrote
other bytes, reported another size or hash, or changed the platform when it must not, fails.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e4sync.errors import E4SyncError, SessionNotFound, UsageError, VersionChanged
from e4sync.sources import DryRunSource, Item, Kind, Listing, Source, kind
from tests.fakes import MemorySource, register_memory_kind

USER = "contract@example.org"
PASSWORD = "contract-pa55"
S3_KEY = "v2/829/1/1/participant_data/2026-11-30/p-1-3YK/raw_data/v6/x_1701.avro"


@dataclass
class Platform:
    """One source under test and a read-only look at the platform behind it."""

    source: Source
    platform_bytes: Callable[[str], bytes]  # what the platform holds for an id now
    requests: Callable[[], dict[str, int]]  # what was asked of the platform so far


@pytest.fixture(scope="module")
def moto_server():
    from tests.moto_s3 import serve_moto

    yield from serve_moto()


@pytest.fixture(params=["e4connect", "embraceplus", "memory", "memory-read-only"])
def platform(request, monkeypatch, tmp_path) -> Iterator[Platform]:
    if request.param == "e4connect":
        from e4sync.sources.e4connect.adapter import E4Source
        from e4sync.sources.e4connect.client import E4Connect
        from e4sync.sources.e4connect.simulator import Simulator

        with Simulator(port=0, seed=11, sessions=3, user=USER, password=PASSWORD) as sim:
            client = E4Connect(
                USER,
                PASSWORD,
                sim.base_url,
                retries=2,
                backoff_factor=0.01,
                timeout=10.0,
                connect_timeout=2.0,
            )
            source = E4Source(client)
            try:
                yield Platform(source, sim.zip_bytes, lambda: dict(sim.stats()["requests"]))
            finally:
                source.close()
        return
    if request.param == "embraceplus":
        yield from embraceplus(request.getfixturevalue("moto_server"), monkeypatch, tmp_path)
        return
    register_memory_kind(monkeypatch)
    items = {
        S3_KEY: b"Obj\x01" + bytes(range(256)) * 40,  # several fetch chunks
        "with space/and ünïcødé/日本.csv": b"day,minute\n2026-11-30,1\n",
        "plain": b"x",
    }
    source = MemorySource(items, can_delete=request.param == "memory")

    def requests() -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in source.calls:
            counts[call[0]] = counts.get(call[0], 0) + 1
        return counts

    yield Platform(source, source.data, requests)


def embraceplus(moto_server, monkeypatch, tmp_path) -> Iterator[Platform]:
    from e4sync.sources.embraceplus.adapter import S3Source
    from tests.moto_s3 import (
        PREFIX,
        REAL_DAY,
        REAL_PARTICIPANT,
        REAL_SERIAL,
        REAL_START,
        csv_bytes,
        csv_key,
        fresh_bucket,
        raw_key,
        real_avro,
    )

    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    bucket = fresh_bucket(moto_server)
    s3 = next(bucket)
    s3.put(raw_key(REAL_DAY, REAL_PARTICIPANT, REAL_SERIAL, REAL_START), real_avro())
    s3.put(csv_key(REAL_DAY, REAL_PARTICIPANT, REAL_SERIAL), csv_bytes(REAL_DAY, 90))
    s3.put(PREFIX + "notes.txt", b"mirrored as it is\n", ChecksumAlgorithm="SHA256")
    source = S3Source(
        account="contract",
        bucket=s3.bucket,
        prefix=PREFIX,
        endpoint_url=s3.url,
        access_key_id="AKIACONTRACT",
        secret=lambda: "contract-secret",
        timeout=10.0,
        connect_timeout=2.0,
    )
    try:
        yield Platform(source, s3.get, s3.proxy.counts)
    finally:
        source.close()
        next(bucket, None)


def listed(platform: Platform) -> list[Item]:
    listing = platform.source.list_items()
    assert isinstance(listing, Listing)
    assert listing.items, "the platform holds items; the listing must show them"
    return listing.items


def fetch(platform: Platform, item: Item, tmp_path: Path):
    part = tmp_path / "fetched.part"
    got: list[int] = []
    fetched = platform.source.fetch(item, part, progress=got.append)
    return part, fetched, got


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- listing ---------------------------------------------------------------------------------


def test_a_listing_holds_items_with_unique_string_ids_a_version_and_a_suffix(platform):
    listing = platform.source.list_items()
    assert isinstance(listing, Listing) and isinstance(listing.complete, bool)
    ids = [i.id for i in listing.items]
    assert ids and all(isinstance(i, Item) for i in listing.items)
    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == len(ids), "an id is listed once"
    for item in listing.items:
        assert isinstance(item.version, str) and item.version, item.id
        assert isinstance(item.suffix, str) and item.suffix.startswith("."), item.id
        assert listing.covered(item.id), "a listing covers what it lists"
        # The state database and the sidecar keep the raw metadata as JSON.
        assert json.loads(json.dumps(dict(item.raw))) == dict(item.raw)
        assert item.size is None or item.size == len(platform.platform_bytes(item.id))


def test_the_same_platform_lists_the_same_versions_twice(platform):
    first = {i.id: i.version for i in listed(platform)}
    assert {i.id: i.version for i in listed(platform)} == first


def test_identity_is_text(platform):
    assert isinstance(platform.source.identity(), str)


# -- fetch and verify ---------------------------------------------------------------------


def test_fetch_writes_the_platforms_bytes_and_says_their_size_and_sha256(platform, tmp_path):
    for n, item in enumerate(listed(platform)):
        part = tmp_path / f"{n}.part"
        progress: list[int] = []
        fetched = platform.source.fetch(item, part, progress=progress.append)
        data = part.read_bytes()
        assert data == platform.platform_bytes(item.id), item.id
        assert Path(fetched.path) == part
        assert fetched.size == len(data) == part.stat().st_size
        assert fetched.sha256 == sha256(data)
        assert sum(progress) == fetched.size, "every byte is reported as it arrives"


def test_a_fetch_never_writes_through_a_part_that_is_a_second_name(platform, tmp_path):
    """A kill between linking a part to its final name (or to a copy kept aside) and
    removing it leaves the part as a second name of a kept file: a new fetch makes a new
    file there, never empties or rewrites that one."""
    item = listed(platform)[0]
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"a file e4sync keeps")
    part = tmp_path / "again.part"
    os.link(kept, part)
    platform.source.fetch(item, part)
    assert part.read_bytes() == platform.platform_bytes(item.id)
    assert kept.read_bytes() == b"a file e4sync keeps"


def test_a_fetched_file_verifies_online_and_offline(platform, tmp_path):
    item = listed(platform)[0]
    part, _, _ = fetch(platform, item, tmp_path)
    verdict = platform.source.verify(part, item)
    assert verdict.ok, verdict.problems
    # The kind's offline check (reindex, the scrub) agrees without a login.
    assert kind(platform.source.name).verify(part, item).ok


@pytest.mark.parametrize("garbage", ["noise", "truncated", "html"])
def test_garbage_does_not_verify(platform, tmp_path, garbage):
    item = listed(platform)[0]
    whole = platform.platform_bytes(item.id)
    path = tmp_path / "garbage.part"
    if garbage == "noise":
        path.write_bytes(hashlib.sha256(whole).digest() * 50)
    elif garbage == "truncated":
        path.write_bytes(whole[: max(1, len(whole) // 2)] if len(whole) > 1 else b"")
    else:
        path.write_bytes(b"<!DOCTYPE html><html><body>Please log in</body></html>")
    assert not platform.source.verify(path, item).ok
    assert not kind(platform.source.name).verify(path, item).ok


def test_remote_version_says_the_size_of_what_a_fetch_gets(platform, tmp_path):
    for item in listed(platform):
        now = platform.source.remote_version(item)
        if now.size is None:
            continue  # this source does not know it (and then nothing is ever deleted)
        assert now.size == len(platform.platform_bytes(item.id)), item.id
    item = listed(platform)[0]
    _, fetched, _ = fetch(platform, item, tmp_path)
    now = platform.source.remote_version(item)
    assert now.size in (None, fetched.size)
    if fetched.etag is not None:
        assert now.etag == fetched.etag, "the validators a fetch sent are the probe's"


# -- delete ----------------------------------------------------------------------------------


def test_a_delete_with_a_wrong_if_match_is_refused_and_changes_nothing(platform):
    item = listed(platform)[0]
    before = platform.platform_bytes(item.id)
    ids_before = {i.id for i in listed(platform)}
    with pytest.raises(VersionChanged if platform.source.capabilities.can_delete else E4SyncError):
        platform.source.delete(item, if_match='"not-the-version-that-was-archived"')
    assert {i.id for i in listed(platform)} == ids_before
    assert platform.platform_bytes(item.id) == before


def test_a_delete_removes_the_item_from_the_next_listing_where_the_source_can(platform):
    items = listed(platform)
    item, rest = items[0], {i.id for i in items[1:]}
    etag = platform.source.remote_version(item).etag
    if not platform.source.capabilities.can_delete:
        with pytest.raises(E4SyncError):
            platform.source.delete(item, if_match=etag)
        assert {i.id for i in listed(platform)} == rest | {item.id}, "a refusal changes nothing"
        return
    platform.source.delete(item, if_match=etag)
    after = {i.id for i in platform.source.list_items().items}
    assert item.id not in after
    assert after == rest, "only that item is gone"
    with pytest.raises(SessionNotFound):
        platform.source.remote_version(item)  # the deletion step counts on this


# -- the dry run ----------------------------------------------------------------------------


def test_a_dry_run_source_lists_but_never_fetches_or_deletes(platform, tmp_path):
    dry = DryRunSource(platform.source)
    assert dry.name == platform.source.name
    assert dry.capabilities == platform.source.capabilities
    items = dry.list_items().items
    assert [(i.id, i.version) for i in items] == [(i.id, i.version) for i in listed(platform)]
    item = items[0]
    asked = platform.requests()
    part = tmp_path / "dry.part"
    with pytest.raises(UsageError):
        dry.fetch(item, part)
    with pytest.raises(UsageError):
        dry.delete(item, if_match=None)
    assert not part.exists(), "nothing written"
    assert platform.requests() == asked, "nothing asked of the platform"
    assert item.id in {i.id for i in listed(platform)}


# -- the kind -------------------------------------------------------------------------------


def test_the_kind_rebuilds_an_item_from_its_raw_metadata(platform):
    found = kind(platform.source.name)
    assert isinstance(found, Kind) and found.name == platform.source.name
    for item in listed(platform):
        # As the state database and a sidecar keep it: JSON.
        raw = json.loads(json.dumps(dict(item.raw)))
        rebuilt = found.item_from_raw(raw)
        assert rebuilt is not None, item.id
        assert (rebuilt.id, rebuilt.version) == (item.id, item.version)
        assert (rebuilt.recorded_at, rebuilt.suffix) == (item.recorded_at, item.suffix)
        assert found.check_id(item.id) == item.id
    assert found.item_from_raw(None) is None
