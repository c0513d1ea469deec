"""``gpt2sup report`` end to end: a real supervised run is crashed, hung and given a damaged
checkpoint; the page written from its directory must show each of those, the curves' data, links
to the hang's stacks that resolve, and must render in a real headless browser.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.supervisor.helpers import (
    NO_TORCH_MAIN,
    REPO_ROOT,
    child_env,
    events_named,
    gpt2sup_argv,
    heartbeat,
    one_process_worker_args,
    start_supervisor,
    wait_exit,
    wait_for,
    wait_for_step,
)

MAX_KB = 100  # "tens of KB"
CURVE_BLUE = (0x1F, 0x77, 0xB4)  # the train-loss line


def report(log_dir: Path, *extra: str, main: list[str] | None = None) -> subprocess.CompletedProcess:
    argv = (main or gpt2sup_argv()) + ["report", "--log-dir", str(log_dir), *extra]
    return subprocess.run(argv, check=False, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=120)


def page_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="gpt2sup-report-data">(.*?)</script>', page, re.DOTALL)
    assert match, "the page embeds its data"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory) -> Path:
    """24 steps on one rank (what the page shows does not depend on the rank count): SIGKILL after
    step 5, SIGSTOP after step 10 (a hang), then the newest checkpoint cut in half while the rank
    is frozen, and the rank killed (a quarantine)."""
    log_dir = tmp_path_factory.mktemp("report") / "run"
    args = one_process_worker_args()
    args[args.index("--max_steps") + 1] = "24"
    args[args.index("--eval_interval") + 1] = "4"
    proc = start_supervisor(log_dir, nproc=1, worker_args=args)
    try:
        os.kill(wait_for_step(log_dir, 5, rank=0)["pid"], signal.SIGKILL)
        wait_for(lambda: events_named(log_dir, "restarted"), 180, "the restart after the crash")
        os.kill(wait_for_step(log_dir, 10, rank=0, after=time.time())["pid"], signal.SIGSTOP)
        wait_for(lambda: len(events_named(log_dir, "restarted")) >= 2, 180, "the restart after the hang")
        wait_for(lambda: (log_dir / "model_00016.pt").exists(), 180, "checkpoint 16")
        rank = heartbeat(log_dir, 0)["pid"]
        os.kill(rank, signal.SIGSTOP)
        newest = max(p for p in log_dir.glob("model_*.pt") if not p.is_symlink())
        with open(newest, "r+b") as handle:
            handle.truncate(newest.stat().st_size // 2)
        os.kill(rank, signal.SIGKILL)
        assert wait_exit(proc, log_dir) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events_named(log_dir, "quarantined"), "the damaged checkpoint was quarantined"
    return log_dir


@pytest.mark.slow
def test_the_report_shows_the_crash_the_hang_the_quarantine_and_the_curves(faulty_run, tmp_path):
    out = tmp_path / "elsewhere" / "night.html"
    out.parent.mkdir()
    done = report(faulty_run, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}") and "goodput" in done.stdout
    page = out.read_text()
    assert len(page.encode()) < MAX_KB * 1024, f"{len(page) / 1024:.0f} KB"
    text = html.unescape(page)
    # Every fault of the journal is on the page, with its own message.
    for kind in ("crashed", "hung", "quarantined", "restarted", "replay_check"):
        events = events_named(faulty_run, kind)
        assert events, kind
        for event in events:
            assert event["message"] in text, f"{kind}: {event['message']}"
    data = page_data(page)
    assert {"crashed", "hung", "quarantined", "restarted"} <= {f["kind"] for f in data["faults"]}
    # The hang's stacks are linked, relative to where the page is, and the links resolve.
    links = re.findall(r'href="([^"]+)"', page)
    incident_links = [link for link in links if "incidents/001" in link]
    assert any(link.endswith(("py-spy-rank0.txt", "faulthandler.log")) for link in incident_links)
    for link in incident_links:
        assert (out.parent / link).exists(), link
    # The curves' data is the run's metrics (fewer than the downsampling limit: every step).
    metrics = [json.loads(line) for line in (faulty_run / "metrics.jsonl").read_text().splitlines()]
    loss = data["curves"]["loss"]
    assert loss["step"] == [m["step"] for m in metrics] == list(range(24))
    assert loss["value"] == [float(f"{m['loss']:.5g}") for m in metrics]
    assert data["curves"]["val_loss"]["step"] == [m["step"] for m in metrics if "val_loss" in m]
    # Re-done steps are known and shaded: the quarantine of model_00016.pt sent the run back to step
    # 12 from the step the ranks were killed after (16, or later: an asynchronous save renames the
    # file while the next step trains).
    # The crash the quarantine followed, not simply the last one: a rank can still die after the
    # final save (a CI run saw gloo abort at exit, "terminate called without an active exception"),
    # which the supervisor handles as one more crash with nothing re-done.
    journal = [json.loads(line) for line in (faulty_run / "events.jsonl").read_text().splitlines()]
    quarantine = next(i for i, event in enumerate(journal) if event["event"] == "quarantined")
    crash_after_quarantine = next(e for e in reversed(journal[:quarantine]) if e["event"] == "crashed")["step"]
    assert crash_after_quarantine >= 16
    assert [13, crash_after_quarantine] in [r["redone_steps"] for r in data["recoveries"]]
    # Routine records (a restart's breakdown) are not faults.
    assert "restart_breakdown" not in {f["kind"] for f in data["faults"]}
    assert page.count("<svg") == 2 and "#d62728" in page
    # The summary's goodput is the one `gpt2sup status` shows.
    g = data["goodput"]
    assert 0 < g["ratio"] < 1 and g["failures"] >= 3 and g["lost_s"] > 0 and g["detection_s"] > 0
    status = subprocess.run(gpt2sup_argv("status", "--log-dir", str(faulty_run)), check=False, cwd=REPO_ROOT, env=child_env(),
                            capture_output=True, text=True, timeout=60)
    goodput_line = next(line for line in status.stdout.splitlines() if line.startswith("goodput: "))
    assert f"{g['ratio']:.0%}" in goodput_line and f"to {g['failures']} failures" in goodput_line
    # Self-contained: no script that runs, nothing fetched from a network.
    assert not re.search(r"<script(?! type=\"application/json\")", page)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


@pytest.mark.slow
def test_the_report_renders_in_a_headless_browser_with_the_curves_drawn(faulty_run, tmp_path):
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no headless browser here (Debian: apt-get install chromium)")
    out = tmp_path / "report.html"
    assert report(faulty_run, "--out", str(out)).returncode == 0
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", "--window-size=1100,1400", f"--screenshot={shot}", out.as_uri()],
        check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.exists(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    from matplotlib import image

    pixels = (image.imread(shot)[..., :3] * 255).round()
    blue = ((abs(pixels - CURVE_BLUE) <= 12).all(axis=-1)).sum()
    assert blue > 300, f"only {blue} pixels of the loss curve's colour in the screenshot"


@pytest.mark.slow  # a long synthetic run: seconds
def test_a_report_of_thousands_of_steps_and_many_faults_stays_small_and_keeps_every_fault(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    t0 = 1_800_000_000.0
    faults = 20  # each a crash, then a restart: 40 faults, all numbered on the curves
    metrics = [{"step": s, "time": t0 + s, "loss": 10 / (1 + s / 500), "lr": 6e-4, "dt": 0.9, "tokens_per_s": 5e5,
                **({"val_loss": 10 / (1 + s / 450)} if s % 250 == 0 else {}),
                **({"hellaswag": 0.25 + s / 1e5} if s % 500 == 0 else {})} for s in range(8000)]
    events = [{"time": t0, "event": "supervisor_started", "message": "start"}]
    for i in range(faults):
        when = t0 + 100 + i * 120
        events += [{"time": when, "event": "crashed", "step": 100 + i * 120, "last_beat_time": when - 1,
                    "message": f"fault number {i}: rank 1 crashed"},
                   {"time": when + 2, "event": "restarted", "message": f"restart {i + 1}/100 after crashed"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    out = tmp_path / "r.html"
    done = report(run, "--out", str(out))
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert len(page.encode()) < MAX_KB * 1024, f"{len(page) / 1024:.0f} KB for 8000 steps and {2 * faults} faults"
    for i in range(faults):
        assert f"fault number {i}: rank 1 crashed" in page
    data = page_data(page)
    assert len(data["faults"]) == 2 * faults
    assert 100 <= len(data["curves"]["loss"]["step"]) <= 200  # downsampled
    assert len(data["curves"]["val_loss"]["step"]) == 32  # few points: every one kept


def test_a_directory_without_a_run_is_one_line_and_exit_1(tmp_path):
    done = report(tmp_path / "missing")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr
    (tmp_path / "empty").mkdir()
    done = report(tmp_path / "empty")
    assert done.returncode == 1 and "holds no run" in done.stderr and "Traceback" not in done.stderr


def test_without_matplotlib_one_line_says_what_to_install(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0, "time": 1.0, "loss": 1.0, "dt": 0.5}\n')
    blocked = ["-c", ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['gpt2sup'] + sys.argv[1:]; "
                     "from supervisor.cli import main; main()")]
    done = report(tmp_path / "run", main=[sys.executable, *blocked])
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == "gpt2sup report: drawing the curves needs matplotlib: pip install 'gpt2sup[report]'"
    assert not (tmp_path / "run" / "report.html").exists()


def test_the_report_never_imports_torch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "time": 1.0, "loss": 1.0, "dt": 0.5}\n')
    done = report(run, main=[sys.executable, "-c", NO_TORCH_MAIN])
    assert done.returncode == 0, done.stderr
    assert (run / "report.html").exists()


def test_checkpoint_sizes_are_decimal_mb_as_status_and_verify_say():
    """Issue 19: the same checkpoint was 38.1 MB in the report and 40.0 MB in status / verify."""
    from supervisor.commands.verify_cmd import _megabytes
    from supervisor.views import report_html
    from supervisor.views.dashboard import format_bytes

    size = 40_000_000
    assert report_html._size(size) == format_bytes(size) == _megabytes(size) == "40.0 MB"


def test_fault_numbers_close_together_are_staggered_not_drawn_on_top_of_each_other():
    """Issue 19: the fault numbers above the curves printed on top of each other."""
    from supervisor.views.report_html import label_rows

    rows = label_rows([100, 101, 103, 500, 501, 900], span=1000)
    assert rows[0] != rows[1] != rows[2] and rows[0] != rows[2]  # three crashes within 3 steps
    assert rows[3] != rows[4] and rows[5] == 0  # far from the others: the first row
    assert label_rows([5.0, 5.0], span=0) == [0, 1]  # one x: still two rows
    positions = {(x, row) for x, row in zip([100, 101, 103, 500, 501, 900], rows, strict=True)}
    assert len(positions) == 6
