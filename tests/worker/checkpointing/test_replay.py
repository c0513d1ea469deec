"""The replay check's bookkeeping: logged losses in, one report out (unit tests, no torch).

The real-process tests (a SIGKILLed worker resumed, a changed dropout) are in
``test_run_identity_e2e.py``.
"""
from __future__ import annotations

import json

from worker.checkpointing.replay import ReplayCheck, event_publisher


def metrics_lines(losses: dict[int, float]) -> list[str]:
    return [json.dumps({"step": step, "loss": loss, "lr": 1e-3}) + "\n" for step, loss in losses.items()]


LOGGED = {step: 10.0 - step * 0.123456789 for step in range(13)}


def test_every_re_done_step_equal_reports_once_when_the_last_logged_step_is_re_done():
    reports = []
    check = ReplayCheck.from_logged(metrics_lines(LOGGED), resumed_step=8, on_report=reports.append)
    for step in (9, 10, 11):
        check.observe(step, LOGGED[step])
        assert reports == []
    check.observe(12, LOGGED[12])
    (report,) = reports
    assert report.equal and report.steps_compared == 4 and report.steps_logged == 4
    assert report.resumed_step == 8 and report.first_mismatch is None
    assert report.message.startswith("replay check: 4 re-done step(s) after the resume from step 8: every loss bitwise equal")
    check.observe(13, 1.0)
    check.finish()
    assert len(reports) == 1  # one report, whatever comes after


def test_the_smallest_float_difference_is_a_mismatch_naming_the_first_step_and_both_values():
    import math

    reports = []
    check = ReplayCheck.from_logged(metrics_lines(LOGGED), resumed_step=8, on_report=reports.append)
    check.observe(9, LOGGED[9])
    nudged = math.nextafter(LOGGED[10], math.inf)
    check.observe(10, nudged)
    check.observe(11, LOGGED[11] + 1)
    check.observe(12, LOGGED[12])
    (report,) = reports
    assert not report.equal and report.mismatches == 2
    assert report.first_mismatch.to_dict() == {"step": 10, "before": LOGGED[10], "after": nudged}
    assert report.message.startswith("WARNING: replay check: 2 of 4 re-done step(s)")
    assert f"first at step 10: {LOGGED[10]!r} before, {nudged!r} now" in report.message
    details = report.event_details()
    assert details["equal"] is False and details["steps_compared"] == 4 and details["source"] == "worker"
    assert details["first_mismatch"]["step"] == 10


def test_losses_survive_the_json_round_trip_bit_for_bit():
    import torch

    loss = torch.tensor(7.123456789, dtype=torch.float32).item()  # what the worker logs
    check = ReplayCheck.from_logged(metrics_lines({5: loss}), resumed_step=4)
    check.observe(5, loss)
    assert check.report().equal


def test_training_that_ends_before_every_logged_step_is_re_done_reports_what_it_compared():
    reports = []
    check = ReplayCheck.from_logged(metrics_lines(LOGGED), resumed_step=8, on_report=reports.append)
    check.observe(9, LOGGED[9])
    check.finish()
    (report,) = reports
    assert report.equal and report.steps_compared == 1 and report.steps_logged == 4
    assert "(of 4 logged before; training ended before the rest)" in report.message


def test_nothing_logged_after_the_checkpoint_means_no_report():
    reports = []
    check = ReplayCheck.from_logged(metrics_lines({s: LOGGED[s] for s in range(9)}), 8, on_report=reports.append)
    check.observe(9, 1.0)
    check.finish()
    assert reports == [] and check.report() is None


def test_a_half_written_last_line_and_junk_lines_are_skipped_and_the_latest_duplicate_wins():
    lines = metrics_lines({9: 1.5, 10: 2.5}) + ["not json\n", json.dumps({"step": 9, "loss": 1.25}) + "\n",
                                                 '{"step": 11, "loss": 3.']
    check = ReplayCheck.from_logged(lines, resumed_step=8)
    assert check.logged == {9: 1.25, 10: 2.5}


def test_from_metrics_file_reads_the_file_and_tolerates_its_absence(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert ReplayCheck.from_metrics_file(path, 3).report() is None
    path.write_text("".join(metrics_lines({3: 1.0, 4: 2.0})))
    assert ReplayCheck.from_metrics_file(path, 3).logged == {4: 2.0}


def test_the_publisher_prints_the_line_and_appends_one_replay_check_event(tmp_path):
    events = tmp_path / "events.jsonl"
    printed: list[str] = []
    check = ReplayCheck.from_logged(metrics_lines({9: 1.0}), 8, on_report=event_publisher(events, printed.append))
    check.observe(9, 2.0)
    (record,) = [json.loads(line) for line in events.read_text().splitlines()]
    assert record["event"] == "replay_check" and record["equal"] is False
    assert record["first_mismatch"] == {"step": 9, "before": 1.0, "after": 2.0}
    assert record["resumed_step"] == 8 and record["steps_compared"] == 1 and record["source"] == "worker"
    assert printed == [record["message"]] and printed[0].startswith("WARNING: replay check")


def test_a_resume_that_changes_the_math_is_not_compared_and_says_which_change_is_the_cause(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(metrics_lines(LOGGED)))
    said, reports = [], []
    change = "max_steps: 12 -> 20 (a longer run: allowed; the LR schedule now decays over 20 steps)"
    check = ReplayCheck.for_resume(metrics, 8, reports.append, [change], said.append)
    for step in (9, 10, 11, 12):
        check.observe(step, LOGGED[step] + 1.0)  # every re-done loss differs, as it must
    check.finish()
    assert reports == []  # no mismatch report, no event
    (line,) = said
    assert line.startswith("replay check: not compared: the 4 step(s) re-done after the resume from step 8")
    assert change in line and "hardware" not in line

    unchanged = ReplayCheck.for_resume(metrics, 8, reports.append, [], said.append)
    for step in (9, 10, 11, 12):
        unchanged.observe(step, LOGGED[step])
    assert len(said) == 1 and len(reports) == 1 and reports[0].equal  # the math unchanged: compared


def test_a_math_change_with_nothing_to_re_do_says_nothing(tmp_path):
    said = []
    check = ReplayCheck.for_resume(tmp_path / "absent.jsonl", 8, None, ["dropout: 0.1 -> 0.0"], said.append)
    assert said == [] and check.report() is None
