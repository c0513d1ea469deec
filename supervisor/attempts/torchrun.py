"""Everything about talking to ``torchrun``: its command line and environment, and reading its
output afterwards (which rank exited how, the worker's own error line, the kernel's OOM counter).

torchrun's log is the only record of a rank that died without writing a heartbeat (SIGKILL, an
import error, argparse), so the parsing here is what turns 400 lines of interleaved tracebacks
into the one line a tired operator reads.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from shared.atomic_io import read_file_tail
from shared.compile_cache import use_run_dir_compile_cache
from shared.vocabulary import ATTEMPT_ID_ENV, NODE_RANK_ENV, RUN_DIR_ENV, SUPERVISOR_ENV
from supervisor.attempts.process_tree import own_identity
from supervisor.policy import RankExit
from supervisor.run_config import RunConfig

LOG_TAIL_BYTES = 64 * 1024
# torchrun's c10d rendezvous port when --rdzv-endpoint names none (torch.distributed.run's docs;
# --master-port's 29500 is the static launcher's, not used here). gpt2sup's SLURM endpoint uses it too.
RDZV_DEFAULT_PORT = 29400
MAX_LINE_CHARS = 300

_RANK_EXIT_RE = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)")
# torchrun's own chatter, and the worker's routine per-step progress lines: neither says why it died.
_NOISE_RE = re.compile(
    r"torch/distributed/elastic|torch\.distributed\.elastic|^\*+$|^=+$|^\s*$|^step\s+\d+ \| loss "
)
# What a rank prints when it dies because a PEER died: never the cause.
_PEER_LOST_RE = re.compile(
    r"Connection closed by peer|Connection reset by peer|DistBackendError|DistNetworkError|"
    r"ProcessGroupGloo|gloo/transport|NCCL communicator was aborted|Broken pipe",
)
# argparse's and the worker's one-line errors ("prog: error: ..."), and an exception's final line.
_ERROR_LINE_RE = re.compile(r"^[^:]*: error: .+|^error: .+")
_EXCEPTION_LINE_RE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?$")
_MISSING_MODULE_LINE_RE = re.compile(r"No module named .+")
_MISSING_MODULE_RE = re.compile(r"No module named '?([\w.]+)'?|Error while finding module specification for '([\w.]+)'")


def build_command(config: RunConfig, resume: bool = True) -> list[str]:
    """torchrun argv: its own restarts off, one supervisor per node, our worker with auto-resume;
    a script with its arguments as given, and its resume flag when ``resume`` (there is a
    checkpoint to resume from)."""
    argv = list(config.launcher)
    if config.multi_node is None:
        argv += ["--standalone"]
    else:
        mn = config.multi_node
        argv += ["--nnodes", mn.nnodes, "--rdzv-backend", mn.rdzv_backend, "--rdzv-endpoint", mn.rdzv_endpoint,
                 "--rdzv-id", mn.rdzv_id]
        if mn.node_rank is not None:
            argv += ["--node-rank", str(mn.node_rank)]
    argv += ["--nproc-per-node", str(config.nproc_per_node), "--max-restarts", "0"]
    if config.runs_script:
        argv += [config.worker_module, *config.worker_args]
        return argv + [config.resume_flag] if resume and config.resume_flag else argv
    argv += ["-m", config.worker_module, "--auto_resume", "--log_dir", str(config.log_dir)]
    if config.allow_config_change:
        argv += ["--allow_config_change"]
    argv += list(config.worker_args)
    return argv


def build_env(config: RunConfig, base: dict[str, str] | None = None, attempt_id: str | None = None) -> dict[str, str]:
    """torchrun forces OMP_NUM_THREADS=1 when unset; give each process its share of the cores.

    ``attempt_id`` goes to every rank (``ATTEMPT_ID_ENV``), which writes it into its heartbeat:
    the watcher ties beats to this attempt by it, not by comparing clocks.
    """
    env = dict(os.environ if base is None else base)
    env.pop(ATTEMPT_ID_ENV, None)
    if attempt_id is not None:
        env[ATTEMPT_ID_ENV] = attempt_id
    if not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, config.nproc_per_node)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Workers save and stop when the supervisor named here is gone, so a SIGKILLed supervisor does
    # not leave a trainer running unwatched; --workers-outlive-supervisor removes the name.
    env.pop(SUPERVISOR_ENV, None)
    if not config.workers_outlive_supervisor:
        env[SUPERVISOR_ENV] = own_identity().token
    env[RUN_DIR_ENV] = str(config.log_dir)  # where a script using shared.client writes its heartbeats
    # --compile: inductor's caches in the run directory, so a relaunch does not compile from scratch
    # (the worker sets the same itself, for bare runs). A site's own wins.
    if "--compile" in config.worker_args:
        use_run_dir_compile_cache(Path(config.log_dir), env)
    # Multi-node: the worker on node 0 writes the run's files, whatever global rank it gets.
    env.pop(NODE_RANK_ENV, None)
    if config.multi_node is not None and config.multi_node.node_rank is not None:
        env[NODE_RANK_ENV] = str(config.multi_node.node_rank)
    return env


def read_log_tail(path: Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    return read_file_tail(path, max_bytes)[0].decode("utf-8", errors="replace")


def parse_rank_exits(log_text: str) -> list[RankExit]:
    """(rank, exit code) from torchrun's failure summary, root cause first."""
    marker = log_text.rfind("Root Cause")
    if marker >= 0:
        # "Other Failures" precede the root cause in torchrun's summary; add them after it.
        ordered = _RANK_EXIT_RE.findall(log_text[marker:]) + _RANK_EXIT_RE.findall(log_text[:marker])
    else:
        ordered = _RANK_EXIT_RE.findall(log_text)
    seen: set[int] = set()
    out: list[RankExit] = []
    for rank, code in ordered:
        if int(rank) not in seen:
            seen.add(int(rank))
            out.append(RankExit(int(rank), int(code)))
    return out


def worker_lines(log_text: str) -> list[str]:
    """The lines the *worker* printed: torchrun's own traceback, summary and chatter cut away."""
    lines = log_text.splitlines()
    cut = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Traceback (most recent call last)"):
            following = "\n".join(lines[index + 1 : index + 6])
            if "torch/distributed/run.py" in following or "runpy" in following or "torchrun" in following:
                cut = index
                break
    return [line.rstrip() for line in lines[:cut] if not _NOISE_RE.search(line)]


def error_line(log_text: str) -> str | None:
    """The worker's own one-line cause: argparse's / the worker's ``error:`` line, else the final
    line of the last exception that is not a rank losing its connection to a dead peer."""
    lines = [line.strip() for line in worker_lines(log_text) if not _PEER_LOST_RE.search(line)]
    for pattern in (_ERROR_LINE_RE, _EXCEPTION_LINE_RE):
        for line in reversed(lines):
            if pattern.match(line):
                return line[:MAX_LINE_CHARS]
    for line in reversed(lines):  # "/usr/bin/python: No module named worker.trian_gpt2"
        missing = _MISSING_MODULE_LINE_RE.search(line)
        if missing:
            return missing.group(0)[:MAX_LINE_CHARS]
    return None


def module_missing(log_text: str, module: str) -> bool:
    """Python said it cannot find ``module`` (or a package above it): ``--worker`` is wrong."""
    for match in _MISSING_MODULE_RE.finditer(log_text):
        name = match.group(1) or match.group(2)
        if name and (module == name or module.startswith(name + ".")):
            return True
    return False


def rendezvous_closed(log_text: str) -> bool:
    """torchrun could not join: the c10d store it reached holds its ``--rdzv-id`` as closed."""
    return "RendezvousClosedError" in log_text
