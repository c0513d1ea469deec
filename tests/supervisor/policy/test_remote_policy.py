"""The pure decisions of the checkpoint store wiring (``supervisor.policy.remote``)."""
from __future__ import annotations

from supervisor.policy import remote as rp


def test_next_upload_is_the_newest_local_checkpoint_newer_than_the_store():
    assert rp.next_upload([3, 7], None, set()) == rp.UploadPlan(7, [3])
    assert rp.next_upload([3], None, set()) == rp.UploadPlan(3, [])
    assert rp.next_upload([3, 7, 11], 7, set()) == rp.UploadPlan(11, [])


def test_next_upload_never_goes_back_and_has_nothing_to_do_when_up_to_date():
    assert rp.next_upload([3, 7], 7, set()) == rp.UploadPlan(None)
    assert rp.next_upload([3], 7, set()) == rp.UploadPlan(None)  # an older local file (quarantine, prune)
    assert rp.next_upload([], None, set()) == rp.UploadPlan(None)


def test_a_backlog_is_bounded_and_each_skip_said_once():
    plan = rp.next_upload([3, 7, 11, 15, 19], 3, set())
    assert plan == rp.UploadPlan(19, [7, 11, 15])
    assert rp.next_upload([3, 7, 11, 15, 19, 23], 3, {7, 11, 15}) == rp.UploadPlan(23, [19])


def test_retry_backoff_doubles_up_to_its_cap():
    delays = [None]
    for _ in range(8):
        delays.append(rp.next_retry_delay(delays[-1]))
    assert delays[1:4] == [1.0, 2.0, 4.0]
    assert max(d for d in delays if d is not None) == rp.UPLOAD_RETRY_MAX_S


def test_upload_lag_and_whether_an_ending_may_claim_the_upload():
    assert rp.upload_lag(None, None) is None
    assert rp.upload_lag(11, None) == 12
    assert rp.upload_lag(11, 7) == 4
    assert rp.upload_lag(11, 11) == 0
    assert rp.is_uploaded(None, None)  # nothing local: nothing to claim
    assert not rp.is_uploaded(11, None) and not rp.is_uploaded(11, 7)
    assert rp.is_uploaded(11, 11)


def test_remote_to_try_only_newer_than_the_chosen_local_one_and_never_twice():
    assert rp.remote_to_try([11, 7, 3], None, set()) == 11
    assert rp.remote_to_try([11, 7, 3], 7, set()) == 11
    assert rp.remote_to_try([11, 7, 3], 11, set()) is None
    assert rp.remote_to_try([11, 7, 3], None, {11}) == 7
    assert rp.remote_to_try([11, 7, 3], 3, {11, 7}) is None
    assert rp.remote_to_try([], None, set()) is None


def test_keep_last_n_comes_from_the_workers_flag():
    assert rp.keep_last_from_worker_args(["--model", "tiny"]) is None
    assert rp.keep_last_from_worker_args(["--keep_last_n_checkpoints", "2"]) == 2
    assert rp.keep_last_from_worker_args(["--keep_last_n_checkpoints=3"]) == 3
    assert rp.keep_last_from_worker_args(["--keep_last_n_checkpoints", "-1"]) is None
    assert rp.keep_last_from_worker_args(["--keep_last_n_checkpoints", "x"]) is None
