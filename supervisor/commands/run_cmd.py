"""``gpt2sup run``: launch torchrun workers and keep them alive until training finishes.

The command only turns options into a ``RunConfig`` and maps outcomes to exit codes; the cycle
itself lives in ``supervisor.run_loop``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import click

from shared.exit_codes import SupervisorExit
from shared.run_dir import DEFAULT_LOG_DIR, RunDir
from shared.supervisor_state import read_supervisor_state
from supervisor import policy
from supervisor.run_lock import RunLockHeld
from supervisor.run_loop import DEFAULT_WORKER, MultiNode, RunConfig, Supervisor


def visible_gpu_count() -> int:
    """GPUs this process may use, without importing torch (``gpt2sup run`` must start fast)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _fail(message: str, code: SupervisorExit = SupervisorExit.REFUSED) -> NoReturn:
    click.echo(f"gpt2sup run: {message}", err=True)
    sys.exit(int(code))


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    if value < 0 or (value == 0 and not allow_zero):
        _fail(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}")
    return value


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    epilog="Worker arguments go after `--`, e.g. `gpt2sup run -- --max_steps 1000 --model d12`.\n\n"
    "Exit codes: 0 finished, 1 internal error, 2 refused (bad options, run directory locked), "
    "3 gave up (restart budget or no progress), 4 stopped on request.",
)
@click.option("--log-dir", default=DEFAULT_LOG_DIR, help="Run directory (checkpoints, heartbeats, logs).")
@click.option("--max-restarts", default=10, type=int, help="Restarts allowed before giving up.")
@click.option("--nproc-per-node", default="auto", help="Processes per node; auto = visible GPUs, else 1.")
@click.option("--hang-timeout", default="auto",
              help=f"Seconds a training rank may go without a heartbeat, or auto "
                   f"({policy.AUTO_STEP_MULTIPLE:g}x the slowest step seen, at least {policy.AUTO_FLOOR_S:g}s).")
@click.option("--startup-timeout", default=1800.0, type=float,
              help="Seconds allowed in start-up (imports, data preparation, compile) before the first step.")
@click.option("--checkpoint-timeout", default=600.0, type=float, help="Seconds allowed for one checkpoint save.")
@click.option("--eval-timeout", default=1200.0, type=float, help="Seconds allowed for an eval / HellaSwag / sampling pass.")
@click.option("--monitor-interval", default=2.0, type=float, help="Seconds between checks of processes, heartbeats, disk.")
@click.option("--backoff-initial", default=5.0, type=float, help="First restart delay in seconds (doubles each failure).")
@click.option("--backoff-max", default=300.0, type=float, help="Longest restart delay in seconds.")
@click.option("--backoff-reset-after", default=600.0, type=float,
              help="An attempt healthy this many seconds resets the backoff.")
@click.option("--max-no-progress-restarts", default=3, type=int,
              help="Give up after this many consecutive failures without a newer checkpoint (0 = never).")
@click.option("--min-free-disk", default="auto",
              help="Warn below this much free disk (e.g. 20G); auto = 2x the newest checkpoint, at least 64M.")
@click.option("--prune-on-low-disk", is_flag=True, default=False,
              help="On low disk, delete the OLDEST checkpoints (never the newest valid one).")
@click.option("--kill-grace", default=10.0, type=float, help="Seconds between SIGTERM and SIGKILL when killing a tree.")
@click.option("--stop-timeout", default=None, type=float,
              help="Seconds a stop request may take (save + exit) before the tree is killed "
                   "[default: the checkpoint timeout].", show_default=False)
@click.option("--probe-timeout", default=60.0, type=float, help="Seconds for the checkpoint load-probe before restarts.")
@click.option("--workers-outlive-supervisor", is_flag=True, default=False,
              help="Let the workers keep training if this supervisor is killed (nohup/setsid users who "
                   "restart the supervisor by hand). By default each worker saves and stops at its next "
                   "step once the supervisor is gone.")
@click.option("--worker", "worker_module", default=DEFAULT_WORKER, help="Python module torchrun runs (-m).")
@click.option("--nnodes", default=None, help="Multi-node: number of nodes (torchrun --nnodes), one supervisor per node.")
@click.option("--node-rank", default=None, type=int, help="Multi-node: this node's rank.")
@click.option("--rdzv-endpoint", default=None, help="Multi-node: rendezvous host:port.")
@click.option("--rdzv-id", default="gpt2sup", help="Multi-node: rendezvous job id.")
@click.option("--rdzv-backend", default="c10d", help="Multi-node: rendezvous backend.")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def run(
    log_dir: str,
    max_restarts: int,
    nproc_per_node: str,
    hang_timeout: str,
    startup_timeout: float,
    checkpoint_timeout: float,
    eval_timeout: float,
    monitor_interval: float,
    backoff_initial: float,
    backoff_max: float,
    backoff_reset_after: float,
    max_no_progress_restarts: int,
    min_free_disk: str,
    prune_on_low_disk: bool,
    kill_grace: float,
    stop_timeout: float | None,
    probe_timeout: float,
    workers_outlive_supervisor: bool,
    worker_module: str,
    nnodes: str | None,
    node_rank: int | None,
    rdzv_endpoint: str | None,
    rdzv_id: str,
    rdzv_backend: str,
    worker_args: tuple[str, ...],
) -> None:
    """Launch torchrun workers and keep them alive: restart on crashes and hangs, from the newest
    checkpoint that passes validation, until training finishes.

    \b
    SIGINT/SIGTERM/SIGHUP (or `gpt2sup stop`) asks the workers to save at the next step and
    exit; a second one kills them. Under nohup SIGHUP stays ignored. Run `gpt2sup status` in another terminal to look in.
    """
    config = _build_config(**locals())
    try:
        supervisor = Supervisor(config)
        supervisor.install_signal_handlers()
        code = supervisor.run()
    except RunLockHeld as exc:
        pid = exc.pid
        if pid is None:
            state = read_supervisor_state(RunDir.at(config.log_dir).supervisor_state)
            pid = state.pid if state is not None else None
        who = f"pid {pid}" if pid is not None else "another process"
        _fail(f"refusing to start: another supervisor ({who}) is already running on {config.log_dir}")
    except KeyboardInterrupt:
        _fail("interrupted", SupervisorExit.STOPPED)
    except Exception as exc:  # never a traceback: one line, the documented code
        _fail(f"internal error: {type(exc).__name__}: {exc}", SupervisorExit.INTERNAL_ERROR)
    sys.exit(int(code))


def _build_config(**opts: object) -> RunConfig:
    try:
        hang = policy.parse_hang_timeout(str(opts["hang_timeout"]))
    except ValueError:
        _fail(f"--hang-timeout must be positive seconds or 'auto', got {opts['hang_timeout']!r}")
    nproc_text = str(opts["nproc_per_node"]).strip().lower()
    if nproc_text == "auto":
        nproc = max(1, visible_gpu_count())
    else:
        try:
            nproc = int(nproc_text)
        except ValueError:
            _fail(f"--nproc-per-node must be a positive integer or 'auto', got {opts['nproc_per_node']!r}")
        if nproc < 1:
            _fail(f"--nproc-per-node must be a positive integer, got {nproc}")
    min_free_text = str(opts["min_free_disk"]).strip().lower()
    min_free: int | None = None
    if min_free_text != "auto":
        try:
            min_free = policy.parse_size(min_free_text)
        except ValueError:
            _fail(f"--min-free-disk must be a size like 20G or 'auto', got {opts['min_free_disk']!r}")
    for name in ("startup_timeout", "checkpoint_timeout", "eval_timeout", "monitor_interval", "probe_timeout"):
        _positive("--" + name.replace("_", "-"), float(opts[name]))  # type: ignore[arg-type]
    for name in ("backoff_initial", "backoff_max", "backoff_reset_after", "kill_grace"):
        _positive("--" + name.replace("_", "-"), float(opts[name]), allow_zero=True)  # type: ignore[arg-type]
    if int(opts["max_restarts"]) < 0:  # type: ignore[arg-type]
        _fail("--max-restarts must be >= 0")
    if int(opts["max_no_progress_restarts"]) < 0:  # type: ignore[arg-type]
        _fail("--max-no-progress-restarts must be >= 0")
    if opts["stop_timeout"] is not None:
        _positive("--stop-timeout", float(opts["stop_timeout"]))  # type: ignore[arg-type]

    multi: MultiNode | None = None
    if opts["nnodes"] is not None or opts["node_rank"] is not None or opts["rdzv_endpoint"] is not None:
        if opts["nnodes"] is None or opts["rdzv_endpoint"] is None:
            _fail("multi-node runs need both --nnodes and --rdzv-endpoint (and --node-rank per node)")
        multi = MultiNode(
            nnodes=str(opts["nnodes"]),
            node_rank=opts["node_rank"],  # type: ignore[arg-type]
            rdzv_endpoint=str(opts["rdzv_endpoint"]),
            rdzv_id=str(opts["rdzv_id"]),
            rdzv_backend=str(opts["rdzv_backend"]),
        )
    worker_args = list(opts["worker_args"])  # type: ignore[arg-type]
    if worker_args and worker_args[0] == "--":
        worker_args = worker_args[1:]
    for flag in ("--log_dir", "--auto_resume"):
        if any(a == flag or a.startswith(flag + "=") for a in worker_args):
            _fail(f"{flag} is set by gpt2sup run; use --log-dir / nothing instead of passing it to the worker")

    cwd = Path.cwd()
    log_dir = (cwd / str(opts["log_dir"])).resolve()
    if log_dir.exists() and not log_dir.is_dir():
        _fail(f"--log-dir {opts['log_dir']} exists and is not a directory")
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        probe = log_dir / f".gpt2sup-write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        _fail(f"cannot use --log-dir {opts['log_dir']}: {exc.strerror or exc}")
    return RunConfig(
        log_dir=log_dir,
        cwd=cwd,
        worker_args=worker_args,
        worker_module=str(opts["worker_module"]),
        nproc_per_node=nproc,
        multi_node=multi,
        timeouts=policy.TimeoutConfig(
            hang_timeout=hang,
            startup_timeout=float(opts["startup_timeout"]),  # type: ignore[arg-type]
            checkpoint_timeout=float(opts["checkpoint_timeout"]),  # type: ignore[arg-type]
            eval_timeout=float(opts["eval_timeout"]),  # type: ignore[arg-type]
        ),
        monitor_interval=float(opts["monitor_interval"]),  # type: ignore[arg-type]
        backoff=policy.BackoffConfig(
            initial_s=float(opts["backoff_initial"]),  # type: ignore[arg-type]
            max_s=float(opts["backoff_max"]),  # type: ignore[arg-type]
            reset_after_s=float(opts["backoff_reset_after"]),  # type: ignore[arg-type]
        ),
        limits=policy.RestartLimits(
            max_restarts=int(opts["max_restarts"]),  # type: ignore[arg-type]
            max_no_progress_restarts=int(opts["max_no_progress_restarts"]),  # type: ignore[arg-type]
        ),
        min_free_disk=min_free,
        prune_on_low_disk=bool(opts["prune_on_low_disk"]),
        kill_grace=float(opts["kill_grace"]),  # type: ignore[arg-type]
        stop_timeout=opts["stop_timeout"],  # type: ignore[arg-type]
        probe_timeout=float(opts["probe_timeout"]),  # type: ignore[arg-type]
        workers_outlive_supervisor=bool(opts["workers_outlive_supervisor"]),
    )
