"""Hang timeouts per phase: how long a rank may be silent in each phase, fixed or learned
(``auto``) from the slowest step, save and evaluation seen.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.vocabulary import (
    EVAL_LIKE_PHASES,
    Phase,
)

# --------------------------------------------------------------------------------------------
# Hang timeouts per phase
# --------------------------------------------------------------------------------------------

AUTO = "auto"
# Auto timeouts: this many times the slowest step / save / eval seen, never below a floor.
AUTO_STEP_MULTIPLE = 20.0
AUTO_FLOOR_S = 120.0
# Before the first save of a run is timed, a save is estimated from the newest checkpoint's size
# at this (deliberately slow: network filesystems, busy disks) write bandwidth.
CONSERVATIVE_WRITE_BYTES_PER_S = 50e6
# Allowances while nothing at all is known (no save timed, no checkpoint on disk, no eval timed).
UNKNOWN_SAVE_S = 600.0
UNKNOWN_EVAL_S = 1200.0


@dataclass(frozen=True)
class TimeoutConfig:
    """How long each phase may stay silent before the rank counts as hung; ``None`` means auto.

    Long phases get their own allowance because saving a 1.5 GB checkpoint or a HellaSwag pass
    legitimately takes minutes without a step heartbeat. Auto allowances follow what this run
    has measured (``phase_timeouts``), so a save that hangs is caught in about the time a save
    takes here, not after a fixed ten minutes.
    """

    hang_timeout: float | None = None
    startup_timeout: float = 1800.0
    checkpoint_timeout: float | None = None
    eval_timeout: float | None = None
    auto_multiple: float = AUTO_STEP_MULTIPLE
    auto_floor: float = AUTO_FLOOR_S


def auto_train_timeout(slowest_step_s: float | None, config: TimeoutConfig) -> float:
    """The auto hang timeout: a multiple of the slowest step, floored.

    Before any step has been timed (the first step includes warm-up/compile) we do not know the
    pace, so the start-up allowance applies instead of a guess.
    """
    if slowest_step_s is None:
        return max(config.auto_floor, config.startup_timeout)
    return max(config.auto_floor, config.auto_multiple * slowest_step_s)


@dataclass(frozen=True)
class Measurements:
    """What this run has measured so far: the inputs of the auto timeouts."""

    slowest_step_s: float | None = None
    slowest_save_s: float | None = None
    slowest_eval_s: float | None = None
    newest_checkpoint_bytes: int | None = None


def phase_timeouts(config: TimeoutConfig, seen: Measurements) -> dict[Phase, float]:
    """Seconds of heartbeat silence tolerated in each phase (explicit values win over auto).

    A save or an eval may always take as long as a silent training step (the floor); beyond
    that, ``auto_multiple`` times the slowest one seen. Before the first save is timed, the save
    is estimated from the newest checkpoint's size at a conservative bandwidth.
    """
    if config.hang_timeout is not None:
        train = config.hang_timeout
    else:
        train = auto_train_timeout(seen.slowest_step_s, config)
    floor = config.hang_timeout if config.hang_timeout is not None else config.auto_floor

    def auto(measured: float | None, unknown: float) -> float:
        return unknown if measured is None else max(floor, config.auto_multiple * measured)

    if config.checkpoint_timeout is not None:
        save = config.checkpoint_timeout
    elif seen.slowest_save_s is None and seen.newest_checkpoint_bytes:
        save = auto(seen.newest_checkpoint_bytes / CONSERVATIVE_WRITE_BYTES_PER_S, UNKNOWN_SAVE_S)
    else:
        save = auto(seen.slowest_save_s, UNKNOWN_SAVE_S)
    evaluation = config.eval_timeout if config.eval_timeout is not None else auto(seen.slowest_eval_s, UNKNOWN_EVAL_S)
    timeouts = {Phase.STARTUP: config.startup_timeout, Phase.TRAIN: train, Phase.CHECKPOINT: save}
    timeouts.update({phase: evaluation for phase in EVAL_LIKE_PHASES})
    return timeouts


def timeout_for_phase(phase: str | None, timeouts: Mapping[Phase, float]) -> float:
    """Seconds of heartbeat silence tolerated in ``phase`` (an unknown phase counts as training)."""
    if phase is None:
        return timeouts[Phase.STARTUP]
    try:
        return timeouts[Phase(phase)]
    except (ValueError, KeyError):
        return timeouts[Phase.TRAIN]


@dataclass
class StepPaceTracker:
    """Learns the slowest train-step interval from successive heartbeat observations.

    Only pairs of observations that are both in phase ``train`` count, so an eval or a checkpoint
    between two polls does not masquerade as a slow step (it would inflate the auto timeout).
    """

    slowest_step_s: float | None = None
    _last: tuple[int, float, str] | None = None  # (step, heartbeat time, phase)

    def observe(self, step: int, hb_time: float, phase: str) -> None:
        last = self._last
        self._last = (step, hb_time, phase)
        if last is None:
            return
        last_step, last_time, last_phase = last
        if phase != Phase.TRAIN or last_phase != Phase.TRAIN or step <= last_step or last_step < 1:
            # last_step < 1: the interval up to step 1 includes warm-up, not the steady pace.
            return
        per_step = (hb_time - last_time) / (step - last_step)
        if per_step > 0 and (self.slowest_step_s is None or per_step > self.slowest_step_s):
            self.slowest_step_s = per_step

    def reset_attempt(self) -> None:
        """Forget the last observation (a new attempt's steps are not contiguous with the old)."""
        self._last = None


