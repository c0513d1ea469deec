"""What a supervisor's cycle is plugged into: the attempts it runs, how it picks a checkpoint, the
warm validator and the nodes' coordination store.

``run_cmd`` builds the production wiring with ``production_wiring``; the cycle's unit tests hand
the same ``Supervisor`` a ``Wiring`` of scripted attempts and selections (``tests/supervisor/test_run_loop.py``). So nothing in the
cycle asks which one it got: both go through the same code.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shared.run_dir import RunDir
from shared.vocabulary import EventKind
from supervisor.attempts.attempt import Attempts
from supervisor.attempts.torchrun_attempts import TorchrunAttempts
from supervisor.checkpoints.background_validation import WarmValidator
from supervisor.checkpoints.checkpoint_selection import (
    Selection,
    select_checkpoint_for_restart,
)
from supervisor.checkpoints.checkpoint_validation import probe_command_for
from supervisor.checkpoints.disk_guard import DiskGuard
from supervisor.journal import Journal
from supervisor.multinode import node_coordination
from supervisor.run_config import RunConfig
from supervisor.stop_signals import StopSignals

Select = Callable[..., Selection]


@dataclass
class Wiring:
    attempts: Attempts
    select: Select  # (run_dir, probe_timeout=...) -> Selection: the checkpoint to resume from
    validator: WarmValidator | None = None  # started and closed with the run
    coordination: node_coordination.NodeCoordination | None = None  # multi-node, one directory per node


class CycleParts(Protocol):
    """What of the supervisor the wiring is built from (``Supervisor`` has these)."""

    config: RunConfig
    run_dir: RunDir
    journal: Journal
    stops: StopSignals
    disk: DiskGuard
    node: int | None

    def peer_ended_line(self) -> str | None: ...


def production_wiring(parts: CycleParts) -> Wiring:
    """torchrun attempts, and on node 0 one warm load-probe child that validates checkpoints as
    they are written (node R >= 1 never validates); the coordination store of a multi-node run."""
    config = parts.config
    # A user's script saves its own format: the generic probe judges it (not gpt2sup's restore).
    validator = (WarmValidator(parts.run_dir.root, config.probe_timeout, command=probe_command_for(config))
                 if config.is_node_zero else None)
    attempts = TorchrunAttempts(config, parts.run_dir, parts.journal, parts.stops, parts.disk,
                                peer_ended=parts.peer_ended_line if parts.node is not None else None,
                                validator=validator)
    coordination = node_coordination.for_node(config.multi_node, parts.node, config.monitor_interval,
                                              warn=lambda line: parts.journal.event(EventKind.WARNING, line))
    select: Select = validator.select if validator is not None else select_checkpoint_for_restart
    return Wiring(attempts, select, validator, coordination)
