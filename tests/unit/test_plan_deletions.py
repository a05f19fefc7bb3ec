"""Every rule of SPEC section 6 for remote deletion, on the pure planner."""

from __future__ import annotations

import dataclasses

import pytest

from e4sync.deletion import Candidate, Rules, plan_deletions
from e4sync.state.models import FAILED, NEW, VERIFIED

DAY = 86400.0
NOW = 1_800_000_000.0
RULES = Rules(
    delete_after_verify=True, delete_min_age=7 * DAY, delete_grace=DAY, max_deletes_per_pass=50
)


def candidate(**kw) -> Candidate:
    base = dict(
        remote_id="1",
        state=VERIFIED,
        recorded_at=int(NOW - 30 * DAY),
        verified_at=NOW - 2 * DAY,
        local_path="lab/x.zip",
        sha256="ab" * 32,
        version="m1",
        downloaded_version="m1",
        listed=True,
    )
    base.update(kw)
    return Candidate(**base)


def decide(c: Candidate, rules: Rules = RULES, listing_ok: bool = True):
    (decision,) = plan_deletions([c], now=NOW, rules=rules, listing_ok=listing_ok)
    return decision


def test_a_session_meeting_every_rule_is_deleted():
    assert decide(candidate()).delete


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(recorded_at=int(NOW - 6 * DAY)), "delete_min_age"),
        (dict(recorded_at=0), "delete_min_age"),
        (dict(verified_at=NOW - 0.5 * DAY), "delete_grace"),
        (dict(verified_at=None), "no verified local copy"),
        (dict(local_path=None), "no verified local copy"),
        (dict(sha256=None), "no verified local copy"),
        (dict(downloaded_version="m0"), "metadata changed"),
        (dict(listed=False), "not in this pass's listing"),
    ],
)
def test_each_rule_alone_refuses(change, words):
    decision = decide(candidate(**change))
    assert not decision.delete
    assert words in decision.reason


def test_off_by_default_rule_refuses():
    decision = decide(candidate(), dataclasses.replace(RULES, delete_after_verify=False))
    assert not decision.delete and "delete_after_verify" in decision.reason


def test_no_deletion_after_a_failed_listing():
    decision = decide(candidate(), listing_ok=False)
    assert not decision.delete and "could not list" in decision.reason


def test_grace_counts_from_verification_not_recording():
    # Recorded long ago, but only just verified: it must wait out the grace period.
    old_recording_new_copy = candidate(recorded_at=int(NOW - 365 * DAY), verified_at=NOW - 60)
    assert not decide(old_recording_new_copy).delete


def test_only_verified_sessions_are_considered():
    decisions = plan_deletions(
        [candidate(remote_id="1", state=NEW), candidate(remote_id="2", state=FAILED)],
        now=NOW,
        rules=RULES,
        listing_ok=True,
    )
    assert decisions == []


def test_per_pass_cap_takes_the_oldest_and_reports_the_rest():
    sessions = [
        candidate(remote_id=str(i), recorded_at=int(NOW - (40 - i) * DAY)) for i in range(5)
    ]
    rules = dataclasses.replace(RULES, max_deletes_per_pass=2)
    decisions = plan_deletions(reversed(sessions), now=NOW, rules=rules, listing_ok=True)
    assert [d.remote_id for d in decisions if d.delete] == ["0", "1"]
    refused = [d for d in decisions if not d.delete]
    assert len(refused) == 3 and all("cap of 2" in d.reason for d in refused)


def test_a_cap_of_zero_deletes_nothing():
    rules = dataclasses.replace(RULES, max_deletes_per_pass=0)
    assert not decide(candidate(), rules).delete
