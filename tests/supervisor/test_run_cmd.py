"""``gpt2sup run``'s options: every bad value is one line and exit 2 before anything starts."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from shared.exit_codes import SupervisorExit
from supervisor.commands import run_cmd

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
