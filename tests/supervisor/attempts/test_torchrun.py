"""Unit tests for ``supervisor.attempts.torchrun``: its command line and environment, and reading its log."""
from __future__ import annotations

from supervisor.attempts.torchrun import (
    build_command,
    build_env,
    error_line,
    module_missing,
    parse_rank_exits,
    worker_lines,
)
from supervisor.policy import RankExit
from supervisor.run_config import MultiNode, RunConfig


def meaningful_log_lines(log_text: str, count: int = 3) -> list[str]:
    """The last ``count`` lines the worker printed (what ``error_line`` and the reasons read)."""
    return worker_lines(log_text)[-count:]

TORCHRUN_FAILURE_LOG = """\
step     5 | loss 10.60 | lr 3.3e-04
injected crash after step 5
W1126 17:57:07.550000 10256 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 10486 closing signal SIGTERM
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/x/site-packages/torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
worker.train_gpt2 FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-26_17:57:07
  host      : box
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 10486)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-26_17:57:07
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 10487)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 10487
============================================================
"""


def test_parse_rank_exits_puts_the_root_cause_first():


    assert parse_rank_exits(TORCHRUN_FAILURE_LOG) == [RankExit(1, -9), RankExit(0, -15)]
    assert parse_rank_exits("no summary here") == []


def test_meaningful_log_lines_drop_torchrun_noise():


    lines = meaningful_log_lines(TORCHRUN_FAILURE_LOG, count=2)
    assert lines == ["injected crash after step 5"]  # the routine step line is noise too


def test_build_command_single_and_multi_node(tmp_path):


    cfg = RunConfig(log_dir=tmp_path, cwd=tmp_path, worker_args=["--max_steps", "5"], nproc_per_node=4)
    argv = build_command(cfg)
    assert "--standalone" in argv and argv[argv.index("--max-restarts") + 1] == "0"
    assert argv[argv.index("-m", 3):] == ["-m", "worker.train_gpt2", "--auto_resume", "--log_dir", str(tmp_path),
                                           "--max_steps", "5"]
    cfg.multi_node = MultiNode(nnodes="2", node_rank=1, rdzv_endpoint="host:29500", rdzv_id="job")
    cfg.worker_module = "worker.finetune"
    argv = build_command(cfg)
    assert "--standalone" not in argv
    assert argv[argv.index("--rdzv-endpoint") + 1] == "host:29500" and argv[argv.index("--node-rank") + 1] == "1"
    assert "worker.finetune" in argv
    assert build_env(cfg, {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"  # the user's choice wins
    # The workers learn their supervisor's node rank (node 0's local rank 0 writes the run's files).
    assert build_env(cfg, {})["GPT2SUP_NODE_RANK"] == "1"
    cfg.multi_node = None
    assert "GPT2SUP_NODE_RANK" not in build_env(cfg, {"GPT2SUP_NODE_RANK": "0"})  # never inherited
    assert int(build_env(cfg, {})["OMP_NUM_THREADS"]) >= 1


def test_meaningful_log_lines_skip_routine_step_lines():
    """The failure reason should say why it died, not repeat the last losses."""


    log = (
        "step   141 | loss 5.078215 | lr 6.7404e-04 | norm 1.2974 | dt 710.46ms | tok/sec 1441.33\n"
        "RuntimeError: CUDA error: an illegal memory access was encountered\n"
        "step   142 | loss 5.426543 | lr 6.6900e-04 | norm 0.9982 | dt 721.33ms | tok/sec 1419.60\n"
    )
    assert meaningful_log_lines(log, count=3) == ["RuntimeError: CUDA error: an illegal memory access was encountered"]


def test_allow_config_change_is_forwarded_to_the_worker(tmp_path):
    cfg = RunConfig(log_dir=tmp_path, cwd=tmp_path, allow_config_change=True, worker_args=["--max_steps", "5"])
    argv = build_command(cfg)
    assert argv[argv.index("--auto_resume"):] == ["--auto_resume", "--log_dir", str(tmp_path),
                                                  "--allow_config_change", "--max_steps", "5"]
    assert "--allow_config_change" not in build_command(RunConfig(log_dir=tmp_path, cwd=tmp_path))


def test_error_line_is_the_argparse_error_not_the_usage_block():
    log = (
        "usage: train_gpt2.py [-h] [--model {gpt2,tiny}] [--max_steps MAX_STEPS]\n"
        "                     [--log_dir LOG_DIR]\n"
        "python -m worker.train_gpt2: error: unrecognized arguments: --max_stpes 10\n"
        "usage: train_gpt2.py [-h] [--model {gpt2,tiny}] [--max_steps MAX_STEPS]\n"
        "python -m worker.train_gpt2: error: unrecognized arguments: --max_stpes 10\n"
        + TORCHRUN_FAILURE_LOG.split("step     5", 1)[0]
    )
    assert error_line(log) == "python -m worker.train_gpt2: error: unrecognized arguments: --max_stpes 10"


def test_error_line_skips_the_surviving_peers_connection_errors():
    log = (
        "Traceback (most recent call last):\n"
        '  File "worker/train_gpt2.py", line 300, in train\n'
        "ValueError: shard data/train_000.npy holds 12 tokens, need 65\n"
        "Traceback (most recent call last):\n"
        '  File "torch/distributed/distributed_c10d.py", line 2, in all_reduce\n'
        "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242\n"
    )
    assert error_line(log) == "ValueError: shard data/train_000.npy holds 12 tokens, need 65"
    assert error_line("step 1 | loss 3.2\n") is None


def test_module_missing_recognises_pythons_messages_for_the_worker_module():
    log = "/usr/bin/python: No module named worker.trian_gpt2\n" + TORCHRUN_FAILURE_LOG.split("step     5", 1)[0]
    assert error_line(log) == "No module named worker.trian_gpt2"
    assert module_missing("/usr/bin/python: No module named worker.trian_gpt2\n", "worker.trian_gpt2")
    assert module_missing("Error while finding module specification for 'nope.train' "
                          "(ModuleNotFoundError: No module named 'nope')", "nope.train")
    assert not module_missing("ModuleNotFoundError: No module named 'tiktoken'", "worker.train_gpt2")


def test_compile_runs_get_the_run_directorys_compile_cache(tmp_path):
    from supervisor.attempts.torchrun import build_env
    from supervisor.run_config import RunConfig

    compiled = RunConfig(log_dir=tmp_path / "run", cwd=tmp_path, worker_args=["--compile"])
    env = build_env(compiled, base={})
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "run").absolute() / "compile_cache")
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1" and env["TRITON_CACHE_DIR"].endswith("compile_cache/triton")
    assert build_env(compiled, base={"TORCHINDUCTOR_CACHE_DIR": "/site"})["TORCHINDUCTOR_CACHE_DIR"] == "/site"
    plain = RunConfig(log_dir=tmp_path / "run", cwd=tmp_path)
    assert "TORCHINDUCTOR_CACHE_DIR" not in build_env(plain, base={})


def test_node_zero_is_the_only_supervisor_or_node_rank_0_or_none(tmp_path):
    cfg = RunConfig(log_dir=tmp_path, cwd=tmp_path)
    assert cfg.is_node_zero and cfg.node is None
    for rank, leader in ((None, True), (0, True), (1, False), (3, False)):
        cfg.multi_node = MultiNode(nnodes="4", node_rank=rank, rdzv_endpoint="h:29400")
        assert cfg.is_node_zero is leader and cfg.multi_node.is_node_zero is leader and cfg.node == rank


def test_a_script_runs_as_given_and_gets_its_resume_flag_only_when_there_is_something_to_resume(tmp_path):
    script = str(tmp_path / "train_gpt2.py")
    cfg = RunConfig(log_dir=tmp_path / "log", cwd=tmp_path, worker_module=script, worker_args=["--max_steps", "5"])
    assert cfg.runs_script
    tail = build_command(cfg, resume=False)[-3:]
    assert tail == [script, "--max_steps", "5"]  # no -m, no --log_dir of ours, no resume flag
    assert build_command(cfg, resume=True)[-4:] == [script, "--max_steps", "5", "--auto_resume"]
    cfg.resume_flag = "--resume_latest"
    assert build_command(cfg, resume=True)[-1] == "--resume_latest"
    cfg.resume_flag = None  # --resume-flag none
    assert build_command(cfg, resume=True)[-1] == "5"
    # gpt2sup's worker always gets --auto_resume, whatever ``resume`` says
    worker = RunConfig(log_dir=tmp_path, cwd=tmp_path)
    assert "--auto_resume" in build_command(worker, resume=False)
