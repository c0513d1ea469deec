"""supervisor.checkpoints.checkpoint_validation on real files and real probe child processes.

Each test writes a real torch.save checkpoint (tests/checkpoint_factory.py), breaks it one way,
and asserts the exact check that catches it and the verdict (valid / invalid / inconclusive).
The probe's fine-grained structure checks are tested in tests/worker/test_checkpoint_probe.py;
here: the file/size/CRC checks, the probe session (one child for many files, per-file timeouts,
a child that crashes or hangs), and what counts as evidence against a file.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from shared.checkpoint_crc import check_zip_crc
from shared.vocabulary import Verdict
from supervisor.checkpoints.checkpoint_validation import (
    AUTO_TIMEOUT_FLOOR_S,
    Check,
    ProbeSession,
    auto_probe_timeout,
    list_siblings,
    parse_probe_timeout,
    validate_checkpoint,
    validate_many,
)
from tests.checkpoint_factory import (
    TINY,
    flip_byte_in_tensor_data,
    make_checkpoint,
    make_checkpoint_dict,
    tensor_data_span,
    truncate_to_fraction,
    write_hostile_pickle,
)

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
# One real probe child serves the module's verdicts (tests/shared_probe_child.py); the tests about
# the child's own life build their ProbeSession themselves.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_probe_child_per_module")]

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def base_dict() -> dict:
    """One checkpoint dict reused (copied shallowly) by the structure tests."""
    return make_checkpoint_dict(100)


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "model_00100.pt", 100)


def names(result) -> list[str]:
    return [check.name for check in result.checks]


# --- end to end: real child process ---------------------------------------------------------------

def test_good_checkpoint_passes_every_check_in_order(good: Path) -> None:
    result = validate_checkpoint(good)
    assert result.ok, result.reason
    assert result.reason is None and result.step == 100
    assert result.size_bytes == good.stat().st_size
    assert names(result)[:4] == ["file", "size", "zip-crc", "load-probe"]
    assert {"keys", "step", "shapes", "size-floor", "restore"} <= set(names(result))
    assert result.verdict is Verdict.VALID
    assert all(isinstance(check, Check) and check.passed for check in result.checks)
    assert result.config["n_embd"] == TINY["n_embd"]
    assert result.to_dict()["checks"][2]["name"] == "zip-crc"


def test_deep_passes_on_a_good_checkpoint_and_reports_the_grouping(good: Path) -> None:
    result = validate_checkpoint(good, deep=True)
    assert result.ok, result.reason
    detail = {c.name: c.detail for c in result.checks}
    assert "nanogpt grouping" in detail["optimizer-shapes"]
    assert "finite" in detail["model-finite"]


def test_malicious_pickle_is_rejected_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_hostile_pickle(tmp_path / "model_00100.pt", marker)  # zip-valid: only the unpickler can refuse it
    result = validate_checkpoint(path)
    assert result.verdict is Verdict.INVALID
    assert "refused" in result.reason and "posix.system" in result.reason
    assert "weights_only" not in result.reason  # never advice to switch safe loading off
    assert not marker.exists(), "loading the checkpoint executed code from it"


def test_nan_in_model_passes_shallow_but_fails_deep(tmp_path: Path, base_dict: dict) -> None:
    checkpoint = dict(base_dict)
    model = {k: v.clone() for k, v in base_dict["model"].items()}
    model["lm_head.weight"] = model["transformer.wte.weight"]
    model["transformer.h.1.mlp.c_fc.weight"][3, 4] = float("nan")
    checkpoint["model"] = model
    path = tmp_path / "model_00100.pt"
    torch.save(checkpoint, path)
    assert validate_checkpoint(path).ok
    deep = validate_checkpoint(path, deep=True)
    assert not deep.ok
    assert "transformer.h.1.mlp.c_fc.weight" in deep.reason and "non-finite" in deep.reason


def test_symlink_is_followed_and_step_checked_against_its_target(good: Path) -> None:
    link = good.parent / "latest_checkpoint.pt"
    link.symlink_to(good.name)
    result = validate_checkpoint(link)
    assert result.ok, result.reason
    assert result.step == 100 and "symlink" in result.checks[0].detail


# --- cheap checks: no child process ---------------------------------------------------------------

def test_missing_dangling_directory_and_fifo_fail_at_the_file_check(tmp_path: Path) -> None:
    assert validate_checkpoint(tmp_path / "model_00001.pt").reason == "no such file"
    dangling = tmp_path / "latest_checkpoint.pt"
    dangling.symlink_to("model_00042.pt")
    assert "dangling symlink" in validate_checkpoint(dangling).reason
    assert "directory" in validate_checkpoint(tmp_path).reason
    fifo = tmp_path / "model_00002.pt"
    os.mkfifo(fifo)
    result = validate_checkpoint(fifo)  # must not block opening it
    assert "not a regular file" in result.reason
    assert names(result) == ["file"]


def test_empty_file_fails_size(tmp_path: Path) -> None:
    path = tmp_path / "model_00100.pt"
    path.touch()
    result = validate_checkpoint(path)
    assert not result.ok and names(result) == ["file", "size"]
    assert "empty" in result.reason


def test_truncated_file_fails_zip_structure_and_says_it_is_far_below_siblings(good: Path) -> None:
    make_checkpoint(good.parent / "model_00200.pt", 200)
    make_checkpoint(good.parent / "model_00300.pt", 300)
    truncate_to_fraction(good, 0.5)
    alone = validate_checkpoint(good)
    assert alone.verdict is Verdict.INVALID and alone.checks[-1].name == "zip-crc"
    assert "not a zip archive" in alone.reason and "median" not in alone.reason
    with_siblings = validate_many([good])[0]
    assert with_siblings.verdict is Verdict.INVALID and with_siblings.checks[-1].name == "zip-crc"
    assert "50% of the median size of its 2 sibling" in with_siblings.reason and "cut short" in with_siblings.reason


def test_a_smaller_valid_checkpoint_of_another_model_is_not_called_cut_short(tmp_path: Path) -> None:
    # Reproduced before the fix: "19,694,011 bytes is 49% of the median size of its 2 sibling
    # checkpoint(s) (39,930,811 bytes): probably cut short" for a perfectly good file.
    wider = {**TINY, "n_embd": 64}
    for step in (10, 20):
        make_checkpoint(tmp_path / f"model_{step:05d}.pt", step, wider)
    small = make_checkpoint(tmp_path / "model_00030.pt", 30)
    assert small.stat().st_size < 0.5 * (tmp_path / "model_00010.pt").stat().st_size
    result = validate_many([small])[0]
    assert result.ok, result.reason
    assert "same tensor layout" not in result.checks[1].detail
    same_model = validate_many([tmp_path / "model_00020.pt"])[0]
    assert same_model.ok and "same tensor layout as 1 sibling(s)" in same_model.checks[1].detail


def test_siblings_carry_their_tensor_layout_from_the_zip_directory(tmp_path: Path) -> None:
    a = make_checkpoint(tmp_path / "model_00010.pt", 10)
    make_checkpoint(tmp_path / "model_00020.pt", 20)
    make_checkpoint(tmp_path / "model_00030.pt", 30, {**TINY, "n_layer": 3})
    (tmp_path / "model_00040.pt").write_bytes(b"not a zip")
    layouts = {s.path.name: s.layout for s in list_siblings(a)}
    assert layouts["model_00020.pt"] is not None and layouts["model_00040.pt"] is None
    assert layouts["model_00030.pt"] != layouts["model_00020.pt"]
    assert "model_00010.pt" not in layouts


def test_random_bytes_fail_zip_structure(tmp_path: Path) -> None:
    path = tmp_path / "model_00100.pt"
    path.write_bytes(os.urandom(1 << 20))
    result = validate_checkpoint(path)
    assert not result.ok and result.checks[-1].name == "zip-crc"


def test_flipped_byte_in_tensor_data_is_caught_only_by_crc(good: Path) -> None:
    member = flip_byte_in_tensor_data(good)
    assert "/data/" in member
    # torch.load itself notices nothing: the damaged weight loads silently.
    loaded = torch.load(good, map_location="cpu", weights_only=True, mmap=True)
    assert loaded["step"] == 100
    result = validate_checkpoint(good)
    assert not result.ok and result.checks[-1].name == "zip-crc"
    assert "CRC-32 mismatch" in result.reason and member in result.reason
    assert "load-probe" not in names(result)


def test_crc_check_reads_every_member(good: Path) -> None:
    ok, detail = check_zip_crc(good)
    with zipfile.ZipFile(good) as archive:
        total = sum(info.file_size for info in archive.infolist())
        count = len(archive.infolist())
    assert ok and f"{count} members" in detail and f"{total:,} bytes" in detail


def test_zip_without_data_pkl_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model_00100.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "no data.pkl" in validate_checkpoint(path).reason


def test_validate_many_keeps_order_and_probes_in_one_child(tmp_path: Path) -> None:
    paths = [make_checkpoint(tmp_path / f"model_{s:05d}.pt", s) for s in (100, 200)]
    empty = tmp_path / "model_00300.pt"
    empty.touch()
    results = validate_many([paths[1], empty, paths[0]])
    assert [(r.ok, r.step) for r in results] == [(True, 200), (False, 300), (True, 100)]
    assert "paid once per call" in results[0].checks[3].detail


# --- timeouts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "-1", "1e308", "soon", ""])
def test_every_bad_timeout_is_refused_with_one_line(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_probe_timeout(text)
    assert "\n" not in str(raised.value) and "seconds" in str(raised.value)


def test_auto_timeout_scales_with_the_measured_import_and_the_file_size() -> None:
    assert parse_probe_timeout("auto") is None and parse_probe_timeout("2.5") == 2.5
    assert auto_probe_timeout(0.5, 0) == AUTO_TIMEOUT_FLOOR_S
    assert auto_probe_timeout(10.0, 0) == 100.0  # a slow machine gets a longer limit
    assert auto_probe_timeout(10.0, 2_000_000_000) == 200.0  # plus the file read at a slow disk's rate


# --- the probe session: one child, per-file timeouts, what is evidence -----------------------------

FAKE_PROBE = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    from worker.checkpoint_probe import _import_for_probing, probe
    print(json.dumps({"ready": True, "import_torch_seconds": _import_for_probing()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        name = Path(request["path"]).name
        if name.startswith("crash"):
            os.kill(os.getpid(), signal.SIGSEGV)
        if name.startswith("killed"):
            os.kill(os.getpid(), signal.SIGKILL)
        if name.startswith("hang"):
            time.sleep(600)
        if name.startswith("garbage"):
            print("hello {not json", flush=True)
            continue
        print(json.dumps(probe(Path(request["path"]), size_bytes=request["size_bytes"])), flush=True)
""")


def fake_session(timeout: float = 120.0) -> ProbeSession:
    """A real child speaking the --serve protocol that misbehaves on files named for it."""
    return ProbeSession(timeout, command=[sys.executable, "-c", FAKE_PROBE])


def test_one_child_serves_every_file_of_a_session(tmp_path: Path) -> None:
    paths = [make_checkpoint(tmp_path / f"model_{s:05d}.pt", s) for s in (1, 2, 3)]
    with ProbeSession() as session:
        outcomes = [session.probe(p, size_bytes=p.stat().st_size) for p in paths]
    assert [o.verdict["ok"] for o in outcomes] == [True, True, True]
    assert session.children_started == 1 and session.import_seconds > 0


def test_a_file_that_crashes_the_child_fails_alone_and_the_next_gets_a_fresh_child(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path / "model_00001.pt", 1)
    crash = tmp_path / "crash.pt"
    crash.write_bytes(b"x")
    with fake_session() as session:
        crashed = session.probe(crash, size_bytes=1)
        after = session.probe(good, size_bytes=good.stat().st_size)
    assert crashed.verdict is None and not crashed.inconclusive  # SIGSEGV in the loader: evidence
    assert "SIGSEGV" in crashed.error and "crashes on this file" in crashed.error
    assert after.verdict["ok"] and session.children_started == 2


def test_a_file_that_hangs_the_child_is_inconclusive_at_its_timeout_and_the_rest_continue(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path / "model_00001.pt", 1)
    hang = tmp_path / "hang.pt"
    hang.write_bytes(b"x")
    with fake_session(timeout=3.0) as session:
        hung = session.probe(hang, size_bytes=1)
        after = session.probe(good, size_bytes=good.stat().st_size)
    assert hung.verdict is None and hung.inconclusive  # doubt, not evidence: never quarantined
    assert "no verdict within 3s" in hung.error and hung.seconds < 30
    assert after.verdict["ok"] and session.children_started == 2


def test_sigkill_and_garbage_are_not_evidence_against_the_file(tmp_path: Path) -> None:
    killed, garbage = tmp_path / "killed.pt", tmp_path / "garbage.pt"
    for path in (killed, garbage):
        path.write_bytes(b"x")
    with fake_session() as session:
        by_sigkill = session.probe(killed, size_bytes=1)
        by_garbage = session.probe(garbage, size_bytes=1)
    assert by_sigkill.inconclusive and "SIGKILL" in by_sigkill.error
    assert by_garbage.inconclusive and "garbage" in by_garbage.error


def test_a_child_that_cannot_start_makes_every_file_inconclusive_and_is_started_once(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path / "model_00001.pt", 1)
    no_torch = [sys.executable, "-c", "import sys; sys.stderr.write('no torch here\\n'); sys.exit(3)"]
    with ProbeSession(command=no_torch) as session:
        outcomes = [session.probe(good, size_bytes=1) for _ in range(3)]
    assert all(o.inconclusive and "no torch here" in o.error for o in outcomes)
    assert session.children_started == 1


def test_an_invalid_timeout_never_reaches_a_child(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path / "model_00001.pt", 1)
    for bad in (float("nan"), float("inf"), -1.0):
        with ProbeSession(bad) as session:
            outcome = session.probe(good, size_bytes=1)
        assert outcome.inconclusive and "timeout" in outcome.error and session.children_started == 0


def test_a_too_short_real_timeout_is_inconclusive(good: Path) -> None:
    result = validate_checkpoint(good, probe_timeout=0.001)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.checks[-1].name == "load-probe" and "no verdict within 0.001s" in result.reason


def test_validation_modules_do_not_import_torch() -> None:
    code = ("import sys, supervisor.checkpoints.checkpoint_validation, supervisor.checkpoints.checkpoint_selection, "
            "shared.checkpoint_loading, worker.checkpoint_probe; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True, timeout=60)


def test_tensor_data_span_points_at_stored_bytes(good: Path) -> None:
    member, start, length = tensor_data_span(good)
    with zipfile.ZipFile(good) as archive:
        expected = archive.read(member)
    with open(good, "rb") as handle:
        handle.seek(start)
        assert handle.read(length) == expected
