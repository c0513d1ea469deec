"""SLURM: host lists, the variables, and ``gpt2sup run``'s torchrun command line under ``srun``.

The variables are set by hand; the CLI tests stop at the ``RunConfig`` and build torchrun's argv
from it, so nothing is launched.
"""
from __future__ import annotations

import os
import signal

import pytest
from click.testing import CliRunner

from shared.exit_codes import SupervisorExit
from supervisor.attempts.torchrun import build_command
from supervisor.commands import run_cmd
from supervisor.multinode.slurm import (
    DEFAULT_PORT,
    Rendezvous,
    SlurmError,
    expand_host,
    fill_from_slurm,
    first_host,
    split_hostlist,
)
from tests.supervisor.helpers import (
    WORKER_ARGS,
    console_text,
    heartbeat,
    start_supervisor,
    supervisor_json,
    wait_exit,
    wait_for_step,
)


def expand_hostlist(text: str) -> list[str]:
    """Every host of a SLURM host list (the supervisor only ever needs the first)."""
    return [host for pattern in split_hostlist(text) for host in expand_host(pattern, text)]


@pytest.mark.parametrize("text, hosts", [
    ("node01", ["node01"]),
    ("node[01-03]", ["node01", "node02", "node03"]),
    ("node[01-03,07],gpu-a5,rack1-n[1-2]",
     ["node01", "node02", "node03", "node07", "gpu-a5", "rack1-n1", "rack1-n2"]),
    ("n[8-10]", ["n8", "n9", "n10"]),  # no padding unless the low bound has it
    ("n[08-10]", ["n08", "n09", "n10"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("r[1-2]-n[08-09]", ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]),  # several bracket groups, SLURM's order
    ("a,b,c.example.org", ["a", "b", "c.example.org"]),
    ("[3-4]x", ["3x", "4x"]),
    ("gpu[7]", ["gpu7"]),
    (" node[1-2] ", ["node1", "node2"]),
])
def test_host_lists_expand_in_slurms_order(text, hosts):
    assert expand_hostlist(text) == hosts
    assert first_host(text) == hosts[0]


def test_commas_split_only_outside_brackets():
    assert split_hostlist("a[1,3-4],b[2],c") == ["a[1,3-4]", "b[2]", "c"]


def test_the_first_host_of_a_huge_range_is_found_without_expanding_it():
    assert first_host("node[000000-999999999],other[1-99999999999]") == "node000000"


@pytest.mark.parametrize("text", [
    "", "node[1-", "node]", "a,,b", ",a", "node[]", "node[3-1]", "node[a-b]", "node[1-2-3]", "no de",
    "n[[1]]", "a,b[1-x]", "x[1]]", "node[1,]", "node$1",
])
def test_malformed_host_lists_are_one_line_errors(text):
    with pytest.raises(SlurmError) as caught:
        first_host(text)
    assert "\n" not in str(caught.value) and repr(text) in str(caught.value)


SLURM_4 = {"SLURM_JOB_ID": "81234", "SLURM_NNODES": "4", "SLURM_NODEID": "2",
           "SLURM_JOB_NODELIST": "gpu-[07-09,11]", "SLURM_JOB_NUM_NODES": "4"}


def test_every_missing_value_comes_from_slurm():
    filled = fill_from_slurm(Rendezvous(), SLURM_4)
    assert filled is not None
    assert filled.rendezvous == Rendezvous(nnodes="4", node_rank=2, endpoint=f"gpu-07:{DEFAULT_PORT}", rdzv_id="81234")
    assert filled.describe() == f"from SLURM: --nnodes 4 --node-rank 2 --rdzv-endpoint gpu-07:{DEFAULT_PORT} --rdzv-id 81234"


def test_explicit_values_win_and_the_line_names_only_what_slurm_gave():
    given = Rendezvous(nnodes="2", node_rank=None, endpoint="head:1234", rdzv_id=None)
    # A variable the user overrides may be malformed: it is never read.
    filled = fill_from_slurm(given, {**SLURM_4, "SLURM_JOB_NODELIST": "broken[", "GPT2SUP_RDZV_PORT": "x"})
    assert filled.rendezvous == Rendezvous(nnodes="2", node_rank=2, endpoint="head:1234", rdzv_id="81234")
    assert filled.filled == ("node_rank", "rdzv_id")
    everything = Rendezvous(nnodes="4", node_rank=0, endpoint="h:1", rdzv_id="mine")
    assert fill_from_slurm(everything, SLURM_4) is None


def test_the_step_variables_come_before_the_jobs_and_the_port_from_the_environment():
    env = {**SLURM_4, "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NODELIST": "gpu-[09,11]", "SLURM_NODEID": "1",
           "GPT2SUP_RDZV_PORT": "31000"}
    filled = fill_from_slurm(Rendezvous(), env)
    assert filled.rendezvous == Rendezvous(nnodes="2", node_rank=1, endpoint="gpu-09:31000", rdzv_id="81234")
    only_old_names = {"SLURM_NNODES": "2", "SLURM_NODELIST": "a,b", "SLURM_NODEID": "0", "SLURM_JOB_ID": "5"}
    assert fill_from_slurm(Rendezvous(), only_old_names).rendezvous.endpoint == f"a:{DEFAULT_PORT}"


@pytest.mark.parametrize("env", [{}, {"SLURM_JOB_ID": "5"}, {**SLURM_4, "SLURM_NNODES": "1", "SLURM_STEP_NUM_NODES": "1"}])
def test_outside_slurm_or_on_one_node_nothing_is_filled(env):
    assert fill_from_slurm(Rendezvous(), env) is None


@pytest.mark.parametrize("changes, words", [
    ({"SLURM_NNODES": "four"}, "SLURM_NNODES"),
    ({"SLURM_NNODES": "0"}, "SLURM_NNODES"),
    ({"SLURM_NODEID": "-1"}, "SLURM_NODEID"),
    ({"SLURM_NODEID": "4"}, "below the node count"),
    ({"SLURM_NODEID": None}, "--node-rank"),
    ({"SLURM_JOB_NODELIST": "gpu-[07-"}, "SLURM_JOB_NODELIST"),
    ({"SLURM_JOB_NODELIST": None}, "--rdzv-endpoint"),
    ({"GPT2SUP_RDZV_PORT": "70000"}, "GPT2SUP_RDZV_PORT"),
])
def test_malformed_or_missing_variables_are_one_line_errors(changes, words):
    env = {k: v for k, v in {**SLURM_4, **changes}.items() if v is not None}
    with pytest.raises(SlurmError) as caught:
        fill_from_slurm(Rendezvous(), env)
    assert words in str(caught.value) and "\n" not in str(caught.value)


# --- gpt2sup run under srun ------------------------------------------------------------------------
@pytest.fixture
def no_slurm(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SLURM_") or name == "GPT2SUP_RDZV_PORT":
            monkeypatch.delenv(name)


def _run(tmp_path, monkeypatch, env, *args):
    seen = {}
    monkeypatch.setattr(run_cmd, "_supervise", lambda config: seen.setdefault("config", config) and 0)
    result = CliRunner().invoke(run_cmd.run, ["--log-dir", str(tmp_path / "run"), "--nproc-per-node", "2", *args],
                                env=env)
    return result, seen.get("config")


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_srun_task_builds_torchrun_with_slurms_nodes_rank_endpoint_and_job_id(tmp_path, monkeypatch, no_slurm):
    result, config = _run(tmp_path, monkeypatch, SLURM_4, "--", "--model", "tiny")
    assert result.exit_code == 0, result.output
    assert f"gpt2sup run: from SLURM: --nnodes 4 --node-rank 2 --rdzv-endpoint gpu-07:{DEFAULT_PORT} --rdzv-id 81234" \
        in result.output.splitlines()
    argv = build_command(config)
    assert "--standalone" not in argv
    assert _value(argv, "--nnodes") == "4" and _value(argv, "--node-rank") == "2"
    assert _value(argv, "--rdzv-endpoint") == f"gpu-07:{DEFAULT_PORT}" and _value(argv, "--rdzv-id") == "81234"
    assert _value(argv, "--rdzv-backend") == "c10d" and _value(argv, "--nproc-per-node") == "2"
    assert argv[-2:] == ["--model", "tiny"]


def test_flags_given_win_over_slurm(tmp_path, monkeypatch, no_slurm):
    result, config = _run(tmp_path, monkeypatch, SLURM_4, "--nnodes", "2", "--node-rank", "0",
                          "--rdzv-endpoint", "head:4000", "--rdzv-id", "mine")
    assert result.exit_code == 0, result.output
    assert "from SLURM" not in result.output
    argv = build_command(config)
    assert (_value(argv, "--nnodes"), _value(argv, "--node-rank"), _value(argv, "--rdzv-endpoint"),
            _value(argv, "--rdzv-id")) == ("2", "0", "head:4000", "mine")
    result, config = _run(tmp_path, monkeypatch, SLURM_4, "--rdzv-endpoint", "head:4000")
    argv = build_command(config)
    assert _value(argv, "--rdzv-endpoint") == "head:4000" and _value(argv, "--node-rank") == "2"
    assert "from SLURM: --nnodes 4 --node-rank 2 --rdzv-id 81234" in result.output


def test_a_one_node_slurm_job_and_no_slurm_stay_standalone(tmp_path, monkeypatch, no_slurm):
    for env in ({"SLURM_JOB_ID": "7", "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n1"}, {}):
        result, config = _run(tmp_path, monkeypatch, env)
        assert result.exit_code == 0, result.output
        assert config.multi_node is None and "--standalone" in build_command(config)
        assert "SLURM" not in result.output


def test_without_slurm_the_rendezvous_id_default_is_unchanged(tmp_path, monkeypatch, no_slurm):
    result, config = _run(tmp_path, monkeypatch, {}, "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "h:1")
    assert result.exit_code == 0, result.output
    assert _value(build_command(config), "--rdzv-id") == "gpt2sup"


def test_a_malformed_slurm_variable_is_one_line_exit_2_before_the_run_directory(tmp_path, monkeypatch, no_slurm):
    result, config = _run(tmp_path, monkeypatch, {**SLURM_4, "SLURM_JOB_NODELIST": "gpu-[07-09"})
    assert result.exit_code == SupervisorExit.REFUSED and config is None
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gpt2sup run: ") and "SLURM_JOB_NODELIST" in lines[0], lines
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_help_mentions_slurm():
    text = CliRunner().invoke(run_cmd.run, ["--help"]).output
    assert "SLURM" in text and "--signal=TERM@120" in text and "SLURM_JOB_ID" in text


# --- a time limit: SLURM signals every process of the step at once ----------------------------------
@pytest.mark.slow
def test_sigterm_to_every_process_of_the_step_at_once_saves_and_exits_4(tmp_path):
    """``#SBATCH --signal=TERM@120`` (and the time limit itself) send SIGTERM to every process of
    the job step, not only to the supervisor: torchrun and the ranks get it in the same instant.
    The run must still save and end ``stopped`` (exit 4), which the batch script turns into a requeue."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--max-restarts", "0", worker_args=_long_worker_args())
    wait_for_step(log_dir, 2, rank=1)
    pids = [p["pid"] for p in supervisor_json(log_dir)["processes"]]
    assert len(pids) >= 3  # torchrun + 2 ranks
    for pid in [proc.pid, *pids]:
        os.kill(pid, signal.SIGTERM)
    code = wait_exit(proc, log_dir, timeout=120)
    assert code == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    step = heartbeat(log_dir, 0)["step"]
    assert heartbeat(log_dir, 0)["status"] == "stopped"
    assert (log_dir / f"model_{step:05d}.pt").exists(), console_text(log_dir)[-3000:]
    assert supervisor_json(log_dir)["state"] == "stopped"


def _long_worker_args() -> list[str]:
    args = list(WORKER_ARGS)
    args[args.index("--max_steps") + 1] = "400"  # far from the end when the signal comes
    args[args.index("--checkpoint_interval") + 1] = "0"
    return args


def test_the_default_rendezvous_port_is_torchruns_own():
    """One port: what torchrun assumes for an endpoint without one is what the SLURM endpoint names."""
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import (
        DEFAULT_PORT as TORCHRUN_DEFAULT,
    )
    assert DEFAULT_PORT == TORCHRUN_DEFAULT
