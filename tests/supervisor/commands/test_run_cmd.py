"""``gpt2sup run``'s options: every bad value is one line and exit 2 before anything starts."""
from __future__ import annotations

import signal
import subprocess

import pytest
from click.testing import CliRunner

from shared.exit_codes import SupervisorExit
from supervisor import messages
from supervisor.commands import run_cmd
from tests.supervisor.helpers import (
    REPO_ROOT,
    child_env,
    console_text,
    events_named,
    gpt2sup_argv,
    start_supervisor,
    wait_exit,
    wait_for,
    wait_for_step,
)

NUMERIC_OPTIONS = {
    "--max-restarts": ["-1", "1.5", "many"],
    "--max-no-progress-restarts": ["-1", "x"],
    "--nproc-per-node": ["0", "-2", "two", "1.5"],
    "--hang-timeout": ["nan", "inf", "0", "-3", "soon"],
    "--startup-timeout": ["nan", "inf", "0", "-1", "1e400"],
    "--checkpoint-timeout": ["nan", "inf", "0", "-1"],
    "--eval-timeout": ["nan", "inf", "0"],
    "--monitor-interval": ["nan", "inf", "0", "-0.5"],
    "--backoff-initial": ["nan", "inf", "-1"],
    "--backoff-max": ["nan", "-1"],
    "--backoff-reset-after": ["nan", "-1"],
    "--kill-grace": ["nan", "inf", "-1"],
    "--stop-timeout": ["nan", "inf", "0"],
    "--probe-timeout": ["nan", "inf", "0", "-1"],
    "--min-free-disk": ["lots", "-5G", "nanM"],
    "--node-rank": ["-1"],
}


@pytest.mark.parametrize("option, value", [(o, v) for o, values in NUMERIC_OPTIONS.items() for v in values])
def test_every_bad_numeric_value_is_one_line_and_exit_2(tmp_path, option, value):
    result = CliRunner().invoke(run_cmd.run, ["--log-dir", str(tmp_path / "run"), f"{option}={value}"])
    assert result.exit_code == SupervisorExit.REFUSED, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and option in lines[0] and lines[0].startswith("gpt2sup run: "), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before touching the run directory


def test_good_values_build_the_run_config_by_keyword(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(run_cmd, "_supervise", lambda config: seen.setdefault("config", config) and 0)
    result = CliRunner().invoke(run_cmd.run, [
        "--log-dir", str(tmp_path), "--nproc-per-node", "2", "--hang-timeout", "12", "--checkpoint-timeout", "auto",
        "--monitor-interval", "0.5", "--backoff-initial", "0", "--min-free-disk", "2G", "--stop-timeout", "30",
        "--allow-config-change", "--", "--model", "tiny",
    ])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.nproc_per_node == 2 and config.monitor_interval == 0.5
    assert config.timeouts.hang_timeout == 12.0 and config.timeouts.checkpoint_timeout is None
    assert config.timeouts.eval_timeout is None and config.backoff.initial_s == 0.0
    assert config.min_free_disk == 2 * 1024**3 and config.stop_timeout == 30.0
    assert config.allow_config_change and config.worker_args == ["--model", "tiny"]


def test_defaults_come_from_the_run_config(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(run_cmd, "_supervise", lambda config: seen.setdefault("config", config) and 0)
    assert CliRunner().invoke(run_cmd.run, ["--log-dir", str(tmp_path), "--nproc-per-node", "1"]).exit_code == 0
    config, defaults = seen["config"], run_cmd.DEFAULTS
    assert config.timeouts == defaults.timeouts and config.backoff == defaults.backoff
    assert config.limits == defaults.limits and config.probe_timeout == defaults.probe_timeout
    assert config.min_free_disk is None and config.stop_timeout is None and config.probe_timeout is None


def test_the_help_example_names_a_real_model():
    text = CliRunner().invoke(run_cmd.run, ["--help"]).output
    assert "--model gpt2 " in text and "d12" not in text


# --- issue 19 §6: what a new user tripped over -----------------------------------------------------


def _capture_config(monkeypatch) -> dict:
    seen: dict = {}
    monkeypatch.setattr(run_cmd, "_supervise", lambda config: seen.setdefault("config", config) and 0)
    return seen


def test_relative_path_arguments_are_recorded_absolute(tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(run_cmd.run, [
        "--log-dir", "run", "--nproc-per-node", "1", "--", "--data_dir", "../my_corpus", "--model", "tiny",
        "--pretrained_checkpoint=base/model_00010.pt", "--hellaswag_path", "/abs/h.jsonl"])
    assert result.exit_code == 0, result.output
    assert seen["config"].worker_args == [
        "--data_dir", str((tmp_path / "../my_corpus").resolve()), "--model", "tiny",
        f"--pretrained_checkpoint={(tmp_path / 'base/model_00010.pt').resolve()}", "--hellaswag_path", "/abs/h.jsonl"]


def test_the_worker_module_is_reused_only_when_not_given(tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    assert CliRunner().invoke(run_cmd.run, ["--log-dir", str(tmp_path), "--nproc-per-node", "1"]).exit_code == 0
    assert not seen.pop("config").worker_module_given
    given = ["--log-dir", str(tmp_path), "--nproc-per-node", "1", "--worker", "worker.finetune_dolly"]
    assert CliRunner().invoke(run_cmd.run, given).exit_code == 0
    assert seen["config"].worker_module_given and seen["config"].worker_module == "worker.finetune_dolly"


def test_a_worker_flag_given_to_gpt2sup_run_says_to_put_it_after_the_double_dash(tmp_path):
    result = CliRunner().invoke(run_cmd.run, ["--log-dir", str(tmp_path / "run"), "--data_dir", "x", "--model=tiny"])
    assert result.exit_code == SupervisorExit.REFUSED, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "worker arguments go after `--`" in lines[0], lines[0]
    assert f"gpt2sup run --log-dir {tmp_path / 'run'} -- --data_dir x --model=tiny" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_unreadable_supervisor_json_refuses_a_plain_run_instead_of_using_defaults(tmp_path):
    log_dir = tmp_path / "run"
    log_dir.mkdir()
    (log_dir / "supervisor.json").write_text('{"state": "stopped", "run_config": {"worker_ar')
    proc = subprocess.run(gpt2sup_argv("run", "--log-dir", str(log_dir), "--nproc-per-node", "1"),
                          check=False, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == SupervisorExit.REFUSED, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unreadable" in lines[0] and "after `--`" in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (log_dir / "supervisor.json").read_text().endswith("worker_ar")  # left as it was, for a person
    assert not (log_dir / "attempts").exists() and not events_named(log_dir, "launched")


@pytest.mark.slow
def test_a_plain_run_reuses_the_last_accepted_arguments_and_worker_never_a_refused_attempts(tmp_path):
    log_dir = tmp_path / "run"
    args = ["--model", "tiny", "--max_steps", "100000", "--checkpoint_interval", "2", "--eval_interval", "0",
            "--hellaswag_interval", "0", "--generate_interval", "0", "--micro_batch_size", "2", "--seq_len", "32",
            "--total_batch_size", "64"]
    module = "tests.supervisor.passthrough_worker"
    first = start_supervisor(log_dir, "--worker", module, nproc=1, worker_args=args)
    wait_for_step(log_dir, 2)
    first.send_signal(signal.SIGTERM)
    assert wait_exit(first, log_dir) == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]

    # A refused attempt (another run's data, with the default module) must not become the record.
    refused = start_supervisor(log_dir, nproc=1, worker_args=[*args, "--data_dir", str(tmp_path / "my_corpus")])
    assert wait_exit(refused, log_dir) != SupervisorExit.FINISHED, console_text(log_dir)[-3000:]

    again = start_supervisor(log_dir, nproc=1, worker_args=[])
    launches = wait_for(lambda: events_named(log_dir, "launched")[2:], 120, "the third launch")
    again.send_signal(signal.SIGTERM)
    wait_exit(again, log_dir)
    argv = launches[0]["argv"]
    assert module in argv and "worker.train_gpt2" not in argv, argv
    assert argv[-len(args):] == args, argv
    assert "--data_dir" not in argv, argv
    reused = [e for e in events_named(log_dir, "config_change") if "reusing" in e["message"]][-1]
    assert module in reused["message"] and "--data_dir" not in reused["message"], reused


def test_the_run_command_names_the_log_dir_and_worker_only_where_needed(tmp_path):
    assert messages.run_command(tmp_path / "log", tmp_path) == "gpt2sup run"
    assert messages.run_command(tmp_path / "mine", tmp_path) == "gpt2sup run --log-dir mine"
    assert messages.run_command("ft", tmp_path, "worker.finetune_dolly") == (
        "gpt2sup run --log-dir ft --worker worker.finetune_dolly")
    assert messages.run_command(tmp_path / "log", tmp_path / "elsewhere", "worker.train_gpt2") == (
        f"gpt2sup run --log-dir {tmp_path / 'log'}")


@pytest.mark.slow
def test_ctrl_c_during_start_up_says_nothing_about_resuming(tmp_path):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, nproc=1, worker_args=["--model", "tiny", "--max_steps", "100000"])
    wait_for(lambda: events_named(log_dir, "launched"), 120, "the launch")
    proc.send_signal(signal.SIGINT)
    assert wait_exit(proc, log_dir) == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    (ending,) = events_named(log_dir, "stopped")
    if not list(log_dir.glob("model_*.pt")):
        assert "resumes" not in ending["message"] and "nothing to resume" in ending["message"], ending
    else:  # the loaded machine let it save first: then the hint names this directory
        assert f"`gpt2sup run --log-dir {log_dir}` resumes it" in ending["message"], ending


@pytest.mark.slow
def test_a_plain_run_on_a_finished_run_says_so_and_launches_nothing(tmp_path):
    log_dir = tmp_path / "run"
    args = ["--model", "tiny", "--max_steps", "3", "--checkpoint_interval", "2", "--eval_interval", "0",
            "--hellaswag_interval", "0", "--generate_interval", "0", "--micro_batch_size", "2", "--seq_len", "32",
            "--total_batch_size", "64"]
    first = start_supervisor(log_dir, nproc=1, worker_args=args)
    assert wait_exit(first, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    # A refused attempt in between (another run's learning rate) changes nothing about that.
    refused = start_supervisor(log_dir, nproc=1, worker_args=[*args, "--max_lr", "0.5"])
    assert wait_exit(refused, log_dir) == SupervisorExit.REFUSED, console_text(log_dir)[-3000:]
    for given in ([], args):  # nothing (the recorded arguments), or the same ones again
        again = start_supervisor(log_dir, nproc=1, worker_args=given)
        assert wait_exit(again, log_dir, timeout=120) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
        assert len(events_named(log_dir, "launched")) == 2, "torchrun was launched again"
        ending = events_named(log_dir, "finished")[-1]["message"]
        assert ending.startswith("already finished at step 2 (model_00002.pt)"), ending
    assert sorted(p.name for p in (log_dir / "attempts").iterdir()) == ["001.log", "002.log"]
    # A plain rerun naming a script's checkpoint glob: the run is the worker's, which names its own.
    glob = subprocess.run(gpt2sup_argv("run", "--log-dir", str(log_dir), "--checkpoint-glob", f"{log_dir}/step_*.pt"),
                          cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in glob.stderr.splitlines() if line.strip()]
    assert glob.returncode == SupervisorExit.REFUSED and len(lines) == 1, glob.stdout + glob.stderr
    assert "--checkpoint-glob is for a script" in lines[0] and "worker.train_gpt2" in lines[0], lines
    assert not (log_dir / "checkpoint_naming.json").exists() and len(events_named(log_dir, "launched")) == 2
