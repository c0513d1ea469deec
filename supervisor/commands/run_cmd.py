"""``gpt2sup run``: launch torchrun workers and keep them alive until training finishes.

The command only turns options into a ``RunConfig`` (its defaults are the option defaults) and
maps outcomes to exit codes; the cycle itself lives in ``supervisor.run_loop``. Every numeric
option is range-checked by its click type, so a bad value is one line and exit 2 before anything
starts (a NaN interval would busy-loop, a NaN timeout would never fire).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from shared.exit_codes import SupervisorExit, exit_status_epilog
from shared.run_dir import DEFAULT_LOG_DIR, RunDir
from shared.supervisor_state import read_supervisor_state
from supervisor import policy
from supervisor.multinode.slurm import (
    DEFAULT_PORT,
    PORT_ENV,
    Rendezvous,
    SlurmError,
    fill_from_slurm,
)
from supervisor.run_config import (
    DEFAULT_RDZV_ID,
    MultiNode,
    RunConfig,
    absolute_path_args,
    is_script,
)

DEFAULTS = RunConfig(log_dir=Path(DEFAULT_LOG_DIR), cwd=Path("."))
AUTO = policy.AUTO


def visible_gpu_count() -> int:
    """GPUs this process may use, without importing torch (``gpt2sup run`` must start fast)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


# --- parameter types ---------------------------------------------------------------------------------
class Seconds(click.ParamType):
    """A finite number of seconds (positive, or >= 0 with ``allow_zero``); ``auto`` -> None if allowed."""

    name = "seconds"

    def __init__(self, *, allow_auto: bool = False, allow_zero: bool = False) -> None:
        self.allow_auto = allow_auto
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | None:
        if value is None or isinstance(value, float) and math.isfinite(value):
            return value
        text = str(value).strip().lower()
        if self.allow_auto and text == AUTO:
            return None
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        smallest = "non-negative" if self.allow_zero else "positive"
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.allow_zero):
            self.fail(f"must be a finite, {smallest} number of seconds{' or auto' if self.allow_auto else ''}, "
                      f"got {value!r}", param, ctx)
        return seconds


class ByteSize(click.ParamType):
    """``20G``, ``500MiB``, ``1048576``; ``auto`` -> None."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == AUTO:
            return None
        try:
            return policy.parse_size(str(value))
        except ValueError:
            self.fail(f"must be a size like 20G or 500M, or auto, got {value!r}", param, ctx)


class ProcessCount(click.ParamType):
    """A positive integer, or ``auto``: the visible GPUs, else 1."""

    name = "nproc"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == AUTO:
            return max(1, visible_gpu_count())
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"must be a positive integer or auto, got {value!r}", param, ctx)


class OneLineErrors(click.Command):
    """Bad options: one line on stderr and exit 2, not click's three-line usage block."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        given = list(args)  # click consumes the list it parses
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.NoSuchOption as exc:
            _fail(exc.format_message() + self._worker_flag_hint(exc.option_name, given))
        except click.UsageError as exc:
            _fail(exc.format_message())

    def _worker_flag_hint(self, option: str, args: list[str]) -> str:
        """A worker flag (``--data_dir``: the worker's are snake_case) given to ``gpt2sup run``
        itself: say where it goes, with the corrected command line to copy."""
        if "_" not in option:
            return ""
        ours, theirs = split_worker_flags(self, args)
        return f" (worker arguments go after `--`: {shlex.join(['gpt2sup', 'run', *ours, '--', *theirs])})"


def split_worker_flags(command: click.Command, args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` split into ``gpt2sup run``'s own options (with their values) and the rest."""
    takes_value = {name: not p.is_flag for p in command.params if isinstance(p, click.Option)
                   for name in [*p.opts, *p.secondary_opts]}
    ours: list[str] = []
    theirs: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            theirs.extend(args[i + 1:])
            break
        name = arg.partition("=")[0]
        if name not in takes_value:
            theirs.append(arg)
        else:
            ours.append(arg)
            if takes_value[name] and "=" not in arg and i + 1 < len(args):
                i += 1
                ours.append(args[i])
        i += 1
    return ours, theirs


def _fail(message: str, code: SupervisorExit = SupervisorExit.REFUSED) -> NoReturn:
    click.echo(f"gpt2sup run: {message}", err=True)
    sys.exit(int(code))


POSITIVE = Seconds()
NON_NEGATIVE = Seconds(allow_zero=True)
AUTO_SECONDS = Seconds(allow_auto=True)
T, B, L = DEFAULTS.timeouts, DEFAULTS.backoff, DEFAULTS.limits


@click.command(
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    epilog="Worker arguments go after `--`, e.g. `gpt2sup run -- --model gpt2 --max_steps 1000` "
    "(models: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini, small-cpu).\n\n"
    "Your own trainer: `gpt2sup run -- train_gpt2.py ARGS` runs any torchrun script, unchanged, and "
    "restarts it with --resume-flag after a crash; --log-dir must be where it writes its "
    "model_NNNNN.pt files, or --checkpoint-glob names its own (docs/own-trainer.md).\n\n"
    + exit_status_epilog(SupervisorExit, "Exit codes:") + "\n\n"
    "SLURM: under `srun` (one task per node) on more than one node, --nnodes, --node-rank, "
    "--rdzv-endpoint (the first host of the node list, port $" + PORT_ENV + " or " + str(DEFAULT_PORT) + ") and "
    "--rdzv-id ($SLURM_JOB_ID) default to the SLURM_* variables; options given win. "
    "Use `#SBATCH --signal=TERM@120` so a time limit saves and exits 4 (docs/scaling.md, SLURM).",
)
@click.option("--log-dir", default=DEFAULT_LOG_DIR, help="Run directory (checkpoints, heartbeats, logs). "
              "Multi-node: the same directory on shared storage for every node, or one per node.")
@click.option("--max-restarts", default=L.max_restarts, type=click.IntRange(min=0),
              help="Restarts allowed before giving up.")
@click.option("--nproc-per-node", default=AUTO, type=ProcessCount(), help="Processes per node; auto = visible GPUs, else 1.")
@click.option("--hang-timeout", default=AUTO, type=AUTO_SECONDS,
              help=f"Seconds a training rank may go without a heartbeat, or auto "
                   f"({policy.AUTO_STEP_MULTIPLE:g}x the slowest step seen, at least {policy.AUTO_FLOOR_S:g}s).")
@click.option("--startup-timeout", default=T.startup_timeout, type=POSITIVE,
              help="Seconds allowed in start-up (imports, data preparation, compile) before the first step.")
@click.option("--checkpoint-timeout", default=AUTO, type=AUTO_SECONDS,
              help=f"Seconds allowed for one checkpoint save, or auto ({policy.AUTO_STEP_MULTIPLE:g}x the slowest "
                   "save seen, at least the hang timeout; before the first save, estimated from the newest "
                   "checkpoint's size).")
@click.option("--eval-timeout", default=AUTO, type=AUTO_SECONDS,
              help=f"Seconds allowed for an eval / HellaSwag / sampling pass, or auto "
                   f"({policy.AUTO_STEP_MULTIPLE:g}x the slowest pass seen, at least the hang timeout; "
                   f"{policy.UNKNOWN_EVAL_S:g}s before the first).")
@click.option("--monitor-interval", default=DEFAULTS.monitor_interval, type=POSITIVE,
              help="Seconds between checks of processes, heartbeats, disk.")
@click.option("--backoff-initial", default=B.initial_s, type=NON_NEGATIVE,
              help="First restart delay in seconds (doubles each failure).")
@click.option("--backoff-max", default=B.max_s, type=NON_NEGATIVE, help="Longest restart delay in seconds.")
@click.option("--backoff-reset-after", default=B.reset_after_s, type=NON_NEGATIVE,
              help="An attempt healthy this many seconds resets the backoff.")
@click.option("--max-no-progress-restarts", default=L.max_no_progress_restarts, type=click.IntRange(min=0),
              help="Give up after this many consecutive failures without a newer checkpoint (0 = never).")
@click.option("--min-free-disk", default=AUTO, type=ByteSize(),
              help="Warn below this much free disk (e.g. 20G); auto = 2x the newest checkpoint, at least 64M.")
@click.option("--prune-on-low-disk", is_flag=True, default=DEFAULTS.prune_on_low_disk,
              help="On low disk, delete the OLDEST checkpoints (never the newest valid one).")
@click.option("--kill-grace", default=DEFAULTS.kill_grace, type=NON_NEGATIVE,
              help="Seconds between SIGTERM and SIGKILL when killing a tree.")
@click.option("--stop-timeout", default=AUTO, type=AUTO_SECONDS,
              help="Seconds a stop request may take (finish the step, save, exit) before the tree is killed; "
                   "auto = the hang timeout plus the checkpoint timeout in force.")
@click.option("--probe-timeout", default=AUTO, type=AUTO_SECONDS,
              help="Seconds for the checkpoint load-probe of one file before restarts, or auto (from the "
                   "probe's measured start-up cost on this machine). A probe that times out never "
                   "quarantines a file.")
@click.option("--allow-config-change", is_flag=True, default=DEFAULTS.allow_config_change,
              help="Resume even though the worker arguments change the run's math (forwarded to the worker).")
@click.option("--workers-outlive-supervisor", is_flag=True, default=DEFAULTS.workers_outlive_supervisor,
              help="Let the workers train on if this supervisor is killed (for nohup/setsid setups that "
                   "restart the supervisor by hand). By default each worker saves and stops at its next "
                   "step once the supervisor is gone.")
@click.option("--checkpoint-uri", default=None, show_default=False,
              help="Also keep checkpoints in a store that outlives this machine: s3://BUCKET/PREFIX (any "
                   "S3-compatible store; credentials and endpoint from the AWS environment only), file:///PATH or "
                   "a path (a network mount). Uploaded in the background, resumed from on a new machine with an "
                   "empty --log-dir [default: the one the run in --log-dir recorded] (docs/object-storage.md).")
@click.option("--upload-timeout", default=DEFAULTS.upload_timeout, type=POSITIVE,
              help="Seconds a finish or stop waits for the last checkpoint's upload; past it the run ends "
                   "saying the checkpoint is NOT uploaded (exit 7 for a finished run).")
@click.option("--worker", "worker_module", default=None, show_default=False,
              help=f"Python module torchrun runs (-m) [default: the module of the run in --log-dir, "
                   f"else {DEFAULTS.worker_module}].")
@click.option("--resume-flag", default=None, show_default=False,
              help="A script's (-- SCRIPT.py ...) own resume flag, appended to its arguments whenever --log-dir "
                   "holds a checkpoint (after a crash, on a rerun); `none`: never appended  "
                   "[default: the run's recorded one, else --auto_resume].")
@click.option("--probe", "user_probe", default=None, show_default=False, metavar="MODULE:FUNCTION",
              help="A script's own restore without training, FUNCTION(path), run on each checkpoint in the "
                   "load-probe child after the generic checks (imported from this directory first); raising "
                   "rejects the file  [default: the run's recorded one, else none].")
@click.option("--checkpoint-glob", default=None, show_default=False, metavar="DIR/PATTERN",
              help="Where a script (-- SCRIPT.py ...) writes its checkpoints: one directory, and a file-name "
                   "pattern with one '*' for the step number, e.g. ckpt/step_*.pt. The directory is the run "
                   "directory (--log-dir defaults to it)  [default: the run's recorded one, else "
                   "LOG_DIR/model_*.pt].")
@click.option("--nnodes", default=None, help="Multi-node: number of nodes (torchrun --nnodes), one supervisor per node "
              "[default: SLURM's node count under srun].")
@click.option("--node-rank", default=None, type=click.IntRange(min=0),
              help="Multi-node: this node's rank [default: $SLURM_NODEID under srun]. Node R >= 1 keeps its own "
                   "supervisor.nodeR.{lock,json} and attempts/nodeR/ in the run directory.")
@click.option("--rdzv-endpoint", default=None,
              help="Multi-node: rendezvous host:port [default: the SLURM node list's first host under srun].")
@click.option("--rdzv-id", default=None, show_default=False,
              help=f"Multi-node: rendezvous job id [default: $SLURM_JOB_ID under srun, else {DEFAULT_RDZV_ID}].")
@click.option("--rdzv-backend", default="c10d", help="Multi-node: rendezvous backend.")
@click.option("--coordination-port", default=None, type=click.IntRange(min=0, max=65535),
              help="Multi-node: node 0's supervisor hosts a torch TCPStore on the rendezvous host at this port "
                   "for the run's lifetime; one node's ending (gave up, refused, stopped) reaches every node through "
                   "it, with one run directory per node too. Open it between the nodes like the rendezvous port; "
                   "0 turns it off  [default: the rendezvous port + 1].")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def run(log_dir: str, max_restarts: int, nproc_per_node: int, hang_timeout: float | None, startup_timeout: float,
        checkpoint_timeout: float | None, eval_timeout: float | None, monitor_interval: float,
        backoff_initial: float, backoff_max: float, backoff_reset_after: float, max_no_progress_restarts: int,
        min_free_disk: int | None, prune_on_low_disk: bool, kill_grace: float, stop_timeout: float | None,
        probe_timeout: float | None, allow_config_change: bool, workers_outlive_supervisor: bool,
        checkpoint_uri: str | None, upload_timeout: float, worker_module: str | None,
        resume_flag: str | None, user_probe: str | None, checkpoint_glob: str | None, nnodes: str | None,
        node_rank: int | None, rdzv_endpoint: str | None, rdzv_id: str | None, rdzv_backend: str,
        coordination_port: int | None, worker_args: tuple[str, ...]) -> None:
    """Launch torchrun workers and keep them alive: restart on crashes and hangs, from the newest
    checkpoint that passes validation, until training finishes.

    With no worker arguments, an existing run directory's own arguments and --worker module
    (the last ones its worker accepted) are reused; a finished run is reported, not relaunched.

    \b
    SIGINT/SIGTERM/SIGHUP (or `gpt2sup stop`) asks the workers to save at the next step and
    exit; a second one kills them (under nohup SIGHUP stays ignored). Run `gpt2sup status` in
    another terminal to look in.
    """
    multi_node = _multi_node(nnodes, node_rank, rdzv_endpoint, rdzv_id, rdzv_backend)  # a bad SLURM_* touches nothing
    if multi_node is not None and coordination_port is not None:
        multi_node = dataclasses.replace(multi_node, coordination_port=coordination_port)
    script, args = _script_and_args(worker_args, worker_module, _resume_flag(resume_flag))
    if script is not None:
        _refuse_what_a_script_cannot_use(multi_node, checkpoint_uri, allow_config_change)
    else:
        args = absolute_path_args(_worker_args(args), Path.cwd())
    may_be_a_script = script is not None or (worker_module is None and not args)  # a plain rerun may be
    if user_probe is not None:
        _check_user_probe(user_probe, may_be_a_script)
    naming = None
    if checkpoint_glob is not None:
        log_dir_given = click.get_current_context().get_parameter_source("log_dir") != ParameterSource.DEFAULT
        log_dir, naming = _checkpoint_glob(checkpoint_glob, log_dir if log_dir_given else None, may_be_a_script)
    config = RunConfig(
        log_dir=_usable_log_dir(log_dir),
        cwd=Path.cwd(),
        worker_args=args,
        worker_module=script or worker_module or DEFAULTS.worker_module,
        worker_module_given=script is not None or worker_module is not None,
        resume_flag=_resume_flag(resume_flag) if resume_flag is not None else DEFAULTS.resume_flag,
        resume_flag_given=resume_flag is not None,
        user_probe=user_probe,
        checkpoint_naming=naming,
        nproc_per_node=nproc_per_node,
        multi_node=multi_node,
        timeouts=policy.TimeoutConfig(hang_timeout=hang_timeout, startup_timeout=startup_timeout,
                                      checkpoint_timeout=checkpoint_timeout, eval_timeout=eval_timeout),
        monitor_interval=monitor_interval,
        backoff=policy.BackoffConfig(initial_s=backoff_initial, max_s=backoff_max, reset_after_s=backoff_reset_after),
        limits=policy.RestartLimits(max_restarts=max_restarts, max_no_progress_restarts=max_no_progress_restarts),
        min_free_disk=min_free_disk,
        prune_on_low_disk=prune_on_low_disk,
        kill_grace=kill_grace,
        stop_timeout=stop_timeout,
        probe_timeout=probe_timeout,
        allow_config_change=allow_config_change,
        workers_outlive_supervisor=workers_outlive_supervisor,
        checkpoint_uri=_checkpoint_uri(checkpoint_uri),
        upload_timeout=upload_timeout,
    )
    sys.exit(int(_supervise(config)))


def _supervise(config: RunConfig) -> SupervisorExit:
    from supervisor.run_lock import RunLockHeld
    from supervisor.run_loop import Supervisor
    from supervisor.run_start import RecordUnreadable, StartRefused
    from supervisor.wiring import production_wiring

    try:
        supervisor = Supervisor(config, production_wiring)
        supervisor.install_signal_handlers()
        return supervisor.run()
    except RunLockHeld as exc:
        pid = exc.pid
        node = config.node
        if pid is None:
            state = read_supervisor_state(RunDir.at(config.log_dir, node).supervisor_state)
            pid = state.pid if state is not None else None
        who = f"pid {pid}" if pid is not None else "another process"
        of_node = f" for node {node}" if node is not None else ""
        _fail(f"refusing to start: another supervisor{of_node} ({who}) is already running on {config.log_dir}")
    except (RecordUnreadable, StartRefused) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", SupervisorExit.STOPPED)
    except Exception as exc:  # noqa: BLE001 - never a traceback: one line, the documented code
        _fail(f"internal error: {type(exc).__name__}: {exc}", SupervisorExit.INTERNAL_ERROR)


def _checkpoint_uri(given: str | None) -> str | None:
    """The store's URI in its canonical form (a plain path made absolute); a bad one is one line, exit 2."""
    if given is None:
        return None
    from shared.remote import CheckpointUriError, parse_checkpoint_uri

    try:
        return parse_checkpoint_uri(given).uri
    except CheckpointUriError as exc:
        _fail(str(exc))


def _resume_flag(given: str | None) -> str | None:
    """``--resume-flag``: a flag to append (``--auto_resume``), or ``none``; not given: None."""
    if given is None or given.strip().lower() == "none":
        return None
    if not given.startswith("-") or any(c.isspace() for c in given):
        _fail(f"--resume-flag must be one flag such as --auto_resume, or none; got {given!r}")
    return given


def _script_and_args(given: tuple[str, ...], worker_module: str | None,
                     resume_flag: str | None) -> tuple[str | None, list[str]]:
    """``-- SCRIPT.py ARGS``: the script's absolute path and its arguments; else (None, args).

    A script that is not there is one line and exit 2 before anything starts, not a launch that
    torchrun reports as a crash and the restarts repeat."""
    args = list(given)
    if args and args[0] == "--":
        args = args[1:]
    if not args or not is_script(args[0]):
        return None, args
    if worker_module is not None:
        _fail("give either --worker MODULE or a script (-- SCRIPT.py ARGS), not both")
    path = Path(os.path.normpath(Path.cwd() / Path(args[0]).expanduser()))
    if not path.is_file():
        _fail(f"no such script: {args[0]}" + (f" (looked in {Path.cwd()})" if not Path(args[0]).is_absolute() else ""))
    flag = resume_flag or DEFAULTS.resume_flag
    if flag and any(a == flag or a.startswith(flag + "=") for a in args[1:]):
        _fail(f"{flag} is appended by gpt2sup run whenever --log-dir holds a checkpoint; leave it out "
              "(or pass --resume-flag none to manage it yourself)")
    return str(path), args[1:]


def _check_user_probe(spec: str, may_be_a_script: bool) -> None:
    """``--probe MODULE:FUNCTION``: the spelling, and only for a script (gpt2sup's worker has its own
    probe: the worker's restore runs in the probe child already)."""
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        _fail(f"--probe must be MODULE:FUNCTION (e.g. myprobe:restore), got {spec!r}")
    if not may_be_a_script:
        _fail("--probe is for a script (-- SCRIPT.py ...): gpt2sup's worker is probed by its own restore")


def _checkpoint_glob(glob: str, log_dir: str | None, may_be_a_script: bool) -> tuple[str, str]:
    """``--checkpoint-glob DIR/PATTERN``: the run directory it names and its file-name pattern.

    gpt2sup keeps its records (heartbeats, events, quarantined files) beside the checkpoints, so
    the pattern's directory is the run directory: --log-dir defaults to it, and another one given
    is refused rather than watched apart from the files it should judge."""
    from shared.run_dir import CheckpointNaming, CheckpointNamingError

    if not may_be_a_script:
        _fail("--checkpoint-glob is for a script (-- SCRIPT.py ...): gpt2sup's worker names its own model_NNNNN.pt")
    path = Path(glob).expanduser()
    directory = path.parent
    if any(ch in str(directory) for ch in "*?["):
        _fail(f"--checkpoint-glob {glob}: the directory cannot hold wildcards; give one directory and a file pattern")
    try:
        naming = CheckpointNaming(path.name)
    except CheckpointNamingError as exc:
        _fail(f"--checkpoint-glob {glob}: {exc}")
    if log_dir is not None and (Path.cwd() / log_dir).resolve() != (Path.cwd() / directory).resolve():
        _fail(f"--checkpoint-glob {glob} is not in --log-dir {log_dir}: gpt2sup keeps its records beside the "
              "checkpoints; leave --log-dir out or give it the checkpoints' directory")
    return str(directory), naming.pattern


def _refuse_what_a_script_cannot_use(multi_node: MultiNode | None, checkpoint_uri: str | None,
                                     allow_config_change: bool) -> None:
    """Options that need gpt2sup's own worker (its flags, heartbeats or node-0 writer): one line."""
    if allow_config_change:
        _fail("--allow-config-change is a flag of gpt2sup's worker; pass your script's own flags after the script")
    if multi_node is not None:
        _fail("a script (-- SCRIPT.py) runs on one node for now; multi-node runs need gpt2sup's worker")
    if checkpoint_uri is not None:
        _fail("--checkpoint-uri needs gpt2sup's worker for now (it uploads the checkpoints its heartbeats name)")


def _worker_args(args: list[str]) -> list[str]:
    for flag in ("--log_dir", "--auto_resume"):
        if any(a == flag or a.startswith(flag + "=") for a in args):
            _fail(f"{flag} is set by gpt2sup run; use --log-dir / nothing instead of passing it to the worker")
    return args


def _multi_node(nnodes: str | None, node_rank: int | None, endpoint: str | None, rdzv_id: str | None,
                backend: str) -> MultiNode | None:
    """The multi-node options, the missing ones from SLURM under ``srun`` on several nodes."""
    given = Rendezvous(nnodes=nnodes, node_rank=node_rank, endpoint=endpoint, rdzv_id=rdzv_id)
    try:
        filled = fill_from_slurm(given, os.environ)
    except SlurmError as exc:
        _fail(f"cannot take the multi-node options from SLURM: {exc}")
    if filled is not None:
        click.echo(f"gpt2sup run: {filled.describe()}")
        given = filled.rendezvous
    if given.nnodes is None and given.node_rank is None and given.endpoint is None:
        return None
    if given.nnodes is None or given.endpoint is None:
        _fail("multi-node runs need both --nnodes and --rdzv-endpoint (and --node-rank per node)")
    return MultiNode(nnodes=given.nnodes, node_rank=given.node_rank, rdzv_endpoint=given.endpoint,
                     rdzv_id=given.rdzv_id or DEFAULT_RDZV_ID, rdzv_backend=backend)


def _usable_log_dir(given: str) -> Path:
    log_dir = (Path.cwd() / given).resolve()
    if log_dir.exists() and not log_dir.is_dir():
        _fail(f"--log-dir {given} exists and is not a directory")
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        probe = log_dir / f".gpt2sup-write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        _fail(f"cannot use --log-dir {given}: {exc.strerror or exc}")
    return log_dir
