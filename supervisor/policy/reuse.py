"""The run a directory holds: what a plain ``gpt2sup run`` reuses, and whether it already finished.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.vocabulary import (
    OutcomeKind,
    SupervisorStateName,
)


# --- the run a directory holds: what a plain ``gpt2sup run`` reuses ------------------------------
@dataclass(frozen=True)
class RecordedRun:
    """The worker arguments and ``--worker`` module of the last attempt the worker accepted."""

    worker_args: tuple[str, ...]
    worker_module: str

    def to_dict(self) -> dict[str, object]:
        return {"worker_args": list(self.worker_args), "worker_module": self.worker_module}


# A supervisor that ended this way may have recorded arguments the worker never accepted.
_UNACCEPTED_ENDINGS = frozenset({SupervisorStateName.REFUSED, SupervisorStateName.GAVE_UP})


def arguments_accepted(kind: OutcomeKind, step: int | None) -> bool:
    """Whether an attempt's worker arguments became the run's: the worker trained (or resumed) with
    them, i.e. a heartbeat named a step, and it did not end on a permanent error (a refusal, a
    bad flag, missing data). A stop or crash during start-up proves nothing either way."""
    return kind != OutcomeKind.PERMANENT and step is not None and step >= 0


def run_to_reuse(accepted: object, run_config: Mapping[str, object], state: str | None,
                 default_module: str) -> RecordedRun | None:
    """What "no worker arguments" means on an existing run directory: its accepted run.

    Why not simply ``run_config``: every supervisor rewrites it with the arguments it was given,
    including one whose launch the worker refused (another run's data, a typo), and reusing those
    refuses again, forever (issue 19). So each attempt the worker accepts records ``accepted_run``
    and a refused one leaves it alone. A file without that record (written before it existed, or
    by a supervisor killed during its first attempt) falls back to its ``run_config``, unless that
    supervisor itself ended refused or gave up.
    """
    if isinstance(accepted, Mapping) and isinstance(accepted.get("worker_args"), list):
        module = accepted.get("worker_module")
        return RecordedRun(tuple(str(a) for a in accepted["worker_args"]),
                           module if isinstance(module, str) and module else default_module)
    if state in _UNACCEPTED_ENDINGS or not isinstance(run_config.get("worker_args"), list):
        return None
    module = run_config.get("worker_module")
    return RecordedRun(tuple(str(a) for a in run_config["worker_args"]),  # type: ignore[union-attr]
                       module if isinstance(module, str) and module else default_module)


def finished_checkpoint(previous_state: str | None, previous_newest: str | None,
                        recorded: str | None) -> str | None:
    """The final checkpoint of the run a directory holds, if it finished: the one recorded, else
    (a file written before that record existed) the newest one of a supervisor that ended finished."""
    if recorded is not None:
        return recorded
    return previous_newest if previous_state == SupervisorStateName.FINISHED else None


def already_finished(final_checkpoint: str | None, resume_from: str | None, same_run: bool) -> bool:
    """Whether a new ``gpt2sup run`` would only relaunch a run that is complete.

    Why: torchrun and the workers take seconds to minutes to start, load the final checkpoint and
    exit at once, with no word that nothing was left to do (issue 19). A run is complete when its
    final checkpoint (``finished_checkpoint``, kept across refused attempts) is the one to resume
    from (it still passes validation) and the worker arguments and module are the accepted ones;
    other arguments (a longer ``--max_steps``) go to the worker, which extends or refuses the run.
    """
    return same_run and resume_from is not None and final_checkpoint == resume_from
