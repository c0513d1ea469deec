"""``RunConfig``: everything ``gpt2sup run`` was asked to do, with every default in one place.

The command line builds it by keyword (``commands/run_cmd.py`` takes its option defaults from
here), the cycle reads it, and ``supervisor.json`` records it so a later ``gpt2sup run`` on the
same directory can reuse the worker arguments (and the ``--worker`` module).
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.policy import BackoffConfig, RestartLimits, TimeoutConfig

DEFAULT_WORKER = "worker.train_gpt2"
# A script's own resume flag, appended when the run directory holds a checkpoint (the guide's).
DEFAULT_RESUME_FLAG = "--auto_resume"
DEFAULT_RDZV_ID = "gpt2sup"
# Worker flags whose value is a path: recorded absolute, so a later ``gpt2sup run`` that reuses
# them from another working directory reads the same files.
PATH_FLAGS = ("--data_dir", "--data_path", "--pretrained_checkpoint", "--checkpoint_path", "--hellaswag_path")


def absolute_path_args(args: list[str], base: Path) -> list[str]:
    """``args`` with each relative path value of a ``PATH_FLAGS`` flag made absolute against ``base``.

    Why: the arguments are recorded in ``supervisor.json`` and reused by a later plain
    ``gpt2sup run``, maybe from another directory, where ``../my_corpus`` names nothing.
    """
    out: list[str] = []
    expects_path = False
    for arg in args:
        if expects_path:
            out.append(_absolute(arg, base))
            expects_path = False
            continue
        flag, eq, value = arg.partition("=")
        if flag in PATH_FLAGS and eq:
            out.append(f"{flag}={_absolute(value, base)}")
        else:
            out.append(arg)
            expects_path = arg in PATH_FLAGS
    return out


def _absolute(value: str, base: Path) -> str:
    if not value or value.startswith("-") or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def is_script(worker: str) -> bool:
    """``worker`` names a script file (``train_gpt2.py``), not a module (``worker.train_gpt2``)."""
    return worker.endswith(".py")


@dataclass(frozen=True)
class MultiNode:
    """torchrun's c10d rendezvous, one supervisor per node."""

    nnodes: str
    node_rank: int | None
    rdzv_endpoint: str
    rdzv_id: str = DEFAULT_RDZV_ID
    rdzv_backend: str = "c10d"
    # Node 0's supervisor hosts a torch TCPStore here, on the rendezvous host, through which the
    # nodes agree on an ending (supervisor.multinode.node_coordination); None: the rendezvous port + 1; 0: off.
    coordination_port: int | None = None

    @property
    def is_node_zero(self) -> bool:
        """Node 0 (``--node-rank`` 0, or not given: torchrun's default), the leader's node."""
        return self.node_rank in (None, 0)


@dataclass
class RunConfig:
    log_dir: Path
    cwd: Path
    worker_args: list[str] = field(default_factory=list)
    # The module torchrun runs with -m, or the absolute path of a script (``gpt2sup run --
    # SCRIPT.py ARGS``: any trainer, not only gpt2sup's worker; ``runs_script``). Recorded and
    # reused as one value, so a plain ``gpt2sup run`` relaunches whichever the run used.
    worker_module: str = DEFAULT_WORKER
    # False: --worker was not given, so an existing run's recorded module is reused.
    worker_module_given: bool = True
    # A script's: appended when the run directory holds a checkpoint to resume from; None: never.
    resume_flag: str | None = DEFAULT_RESUME_FLAG
    resume_flag_given: bool = True  # False: an existing run's recorded resume flag is reused
    # A script's --probe MODULE:FUNCTION: its own restore without training, run in the probe child
    # after the generic checks (imported from ``cwd`` first); None: the generic checks only.
    user_probe: str | None = None
    # A script's --checkpoint-glob file-name pattern (``step_*.pt``), recorded in the run directory
    # (shared.run_dir.NAMING_FILE) for every reader; None: the directory's recorded one, else model_*.pt.
    checkpoint_naming: str | None = None
    nproc_per_node: int = 1
    multi_node: MultiNode | None = None
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    monitor_interval: float = 2.0
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    limits: RestartLimits = field(default_factory=RestartLimits)
    min_free_disk: int | None = None  # None: derived from the newest checkpoint's size
    prune_on_low_disk: bool = False
    kill_grace: float = 10.0
    stop_timeout: float | None = None  # None: the checkpoint allowance in force
    probe_timeout: float | None = None  # None: auto, from the probe's measured cost on this machine
    allow_config_change: bool = False  # forwarded to the worker as --allow_config_change
    workers_outlive_supervisor: bool = False  # True: workers are not told to stop when we die
    # --checkpoint-uri: a store the supervisor uploads checkpoints to and resumes from
    # (supervisor.checkpoints.remote_sync); recorded (never a credential) so a plain `gpt2sup run` reuses it.
    checkpoint_uri: str | None = None
    upload_timeout: float = 300.0  # how long an ending waits for the last checkpoint's upload
    launcher: list[str] = field(default_factory=lambda: [sys.executable, "-m", "torch.distributed.run"])

    @property
    def runs_script(self) -> bool:
        """A script of the user's (``-- SCRIPT.py``), not a worker module: no gpt2sup heartbeats,
        run identity or exit codes are assumed (docs/own-trainer.md)."""
        return is_script(self.worker_module)

    @property
    def node(self) -> int | None:
        """This supervisor's ``--node-rank`` in a multi-node run; None for a one-node run."""
        return self.multi_node.node_rank if self.multi_node is not None else None

    @property
    def is_node_zero(self) -> bool:
        """Whether this supervisor is the run's leader: the only one, or node 0's. Only node 0's
        judges the run's checkpoints, writes them and speaks for the whole run (one answer for
        every "is this node 0 / the leader" question in supervisor/)."""
        return self.multi_node is None or self.multi_node.is_node_zero

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for ``supervisor.json["run_config"]``."""
        data = asdict(self)
        data["log_dir"] = str(self.log_dir)
        data["cwd"] = str(self.cwd)
        return data
