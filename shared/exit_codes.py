"""Every exit code of gpt2sup, the worker and their helpers: the one home (README.md's table is
checked against it; the commands' ``--help`` tables are generated from it).

Each member carries its one-line ``meaning``; :func:`exit_status_epilog` renders a command's
table for its ``--help`` and :func:`exit_code_summary` the short list ``gpt2sup --help`` shows.

A worker exit code is a verdict the supervisor acts on, so each code means one thing:

* 4 CHECKPOINT_ERROR says "the checkpoint I was given is bad": the supervisor quarantines that
  file and falls back to the previous valid one.
* 2 USAGE, 5 DATA_ERROR, 6 RUN_MISMATCH and 8 RUN_DIR_BUSY are permanent: relaunching the same
  command cannot succeed, so the supervisor gives up at once with the worker's own reason.
* 7 FINAL_SAVE_FAILED: training reached its last step but the final state is not on disk; the
  run must not be reported as finished.
* 9 STOP_SAVE_FAILED: the worker stopped on a stop request (SIGTERM/SIGINT, or its supervisor
  gone) but that stop's checkpoint is not on disk. Kept apart from 7: when a full disk also
  swallows the heartbeat, the exit code alone must still say which ending it was.
* 10 UNSUPPORTED_FORMAT: the checkpoint to resume from has a ``format_version`` this install does
  not read (a newer gpt2sup wrote it). Not damage: the file is never quarantined, and relaunching
  the same install cannot help, so the supervisor ends at once (``gpt2sup run`` exit 6).
* 11 PRETRAINED_ERROR: the ``--pretrained_checkpoint`` source cannot be used (damaged, a bad
  Hugging Face header or config, another architecture). It is an input of the command, not one of
  the run's checkpoints: never renamed, and no relaunch can fix it (permanent).
"""
from __future__ import annotations

import textwrap
from enum import IntEnum

HELP_WIDTH = 88  # the --help tables' lines (click's own text is rewrapped to the terminal)


class ExitCode(IntEnum):
    """An exit code with its one-line meaning (``meaning``), the text of every help table."""

    meaning: str

    def __new__(cls, value: int, meaning: str = "") -> ExitCode:  # noqa: PYI034 (typing.Self is 3.11+)
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member


class WorkerExit(ExitCode):
    """Exit codes of ``python -m worker.train_gpt2``."""

    OK = 0, "finished max_steps, or stopped on request after saving (heartbeat says which)"
    CRASHED = 1, "unhandled exception (Python's default)"
    USAGE = 2, "bad command line (argparse's default)"
    DIVERGED = 3, "non-finite loss; restarting from the same checkpoint will not help by itself"
    CHECKPOINT_ERROR = 4, "the checkpoint to resume from is unreadable, damaged or does not restore"
    DATA_ERROR = 5, "data directory missing or holding no shards"
    RUN_MISMATCH = 6, "the arguments describe another run than the one in --log_dir"
    FINAL_SAVE_FAILED = 7, "the last step's checkpoint could not be written"
    RUN_DIR_BUSY = 8, "another trainer holds --log_dir"
    STOP_SAVE_FAILED = 9, "a stop request's checkpoint could not be written"
    UNSUPPORTED_FORMAT = 10, "the checkpoint's format_version is newer than this install reads"
    PRETRAINED_ERROR = 11, "the --pretrained_checkpoint source cannot be used"


# Worker exits that no relaunch can fix: give up at once, quoting the worker's reason.
PERMANENT_WORKER_EXITS = frozenset(
    {WorkerExit.USAGE, WorkerExit.DATA_ERROR, WorkerExit.RUN_MISMATCH, WorkerExit.RUN_DIR_BUSY,
     WorkerExit.UNSUPPORTED_FORMAT, WorkerExit.PRETRAINED_ERROR}
)


class SupervisorExit(ExitCode):
    """Exit codes of ``gpt2sup run`` (1, internal error, is every ``gpt2sup`` command's)."""

    FINISHED = 0, "finished: training reached max steps and its final checkpoint is on disk"
    INTERNAL_ERROR = 1, "internal error: a bug in gpt2sup itself"
    REFUSED = 2, "refused to start: bad options, run directory busy, a different run's arguments"
    GAVE_UP = 3, "gave up: restart budget exhausted, no progress, or a permanent worker error"
    STOPPED = 4, "stopped on request (Ctrl-C, SIGTERM, SIGHUP, `gpt2sup stop`); resumable"
    FINISHED_WITHOUT_CHECKPOINT = 5, "reached max steps, but the final checkpoint is not on disk"
    UNSUPPORTED_FORMAT = 6, ("a checkpoint's format_version is newer than this gpt2sup reads "
                             "(upgrade; nothing renamed)")
    FINISHED_NOT_UPLOADED = 7, ("finished, final checkpoint on local disk, but NOT committed to the "
                                "--checkpoint-uri store within --upload-timeout")


class StatusExit(ExitCode):
    """Exit codes of ``gpt2sup status``."""

    SHOWN = 0, "a run was shown"
    NO_RUN = 1, "the directory holds no run"
    USAGE = 2, "bad usage"


class StopExit(ExitCode):
    """Exit codes of ``gpt2sup stop``."""

    DELIVERED = 0, "stop delivered (with --wait: and the run exited)"
    NOTHING_OR_TIMEOUT = 1, "nothing to stop, or still running after --timeout"
    USAGE = 2, "bad usage"


class VerifyExit(ExitCode):
    """Exit codes of ``gpt2sup verify``: the worst verdict among the files decides."""

    ALL_OK = 0, "every file passed"
    SOME_FAILED = 1, "at least one file failed (FAIL)"
    USAGE = 2, "usage error (bad option, no PATH)"
    SOME_NOT_JUDGED = 3, ("no file failed, but at least one could not be judged (INCONCLUSIVE: the "
                          "probe timed out or could not start); try a longer --timeout")
    UNSUPPORTED = 4, ("no file failed, but at least one is in a checkpoint format newer than this "
                      "gpt2sup reads (UNSUPPORTED: not damaged; upgrade gpt2sup)")
    NO_CHECKPOINT_YET = 5, ("nothing failed, but a directory holds no checkpoint yet (NO CHECKPOINT "
                            "YET: a run before its first save)")


class ConvertExit(ExitCode):
    """Exit codes of ``gpt2sup convert``."""

    CONVERTED = 0, "NEW written and it passed every check of gpt2sup verify"
    NOT_CONVERTED = 1, "OLD could not be read or refused, or NEW did not validate (NEW removed)"
    USAGE = 2, "usage error (NEW exists without --force, bad option)"


class ExportExit(ExitCode):
    """Exit codes of ``gpt2sup export``."""

    EXPORTED = 0, "OUTDIR written"
    NOT_EXPORTED = 1, ("CHECKPOINT missing, unreadable or refused (no GPT-2 equivalent), or OUTDIR "
                       "could not be written")
    USAGE = 2, ("usage error (OUTDIR exists and is not empty without --force; safetensors not "
                "installed; bad option)")


class ReportExit(ExitCode):
    """Exit codes of ``gpt2sup report``."""

    WRITTEN = 0, "the report was written"
    NO_RUN = 1, "the directory holds no run (no metrics.jsonl, no events.jsonl)"
    USAGE = 2, "bad usage"
    NOT_WRITTEN = 3, "the report could not be written (matplotlib missing, OUT not writable)"


class PrepareExit(ExitCode):
    """Exit codes of ``python -m worker.prepare``."""

    DONE = 0, "ok"
    OUTPUT_NOT_WRITABLE = 1, "output not writable (disk full, permissions)"
    BAD_INPUT = 2, ("bad input (no files, a missing path, a malformed line, an empty corpus, a missing "
                    "optional dependency)")
    INTERRUPTED = 130, "interrupted"


class ProbeExit(ExitCode):
    """Exit codes of the load-probe child ``python -m worker.checkpoint_probe`` (the supervisor's)."""

    VERDICT = 0, "a verdict (good or bad) is on stdout"
    CANNOT_JUDGE = 3, "the environment is broken (no torch): not the file's fault"


def exit_status_epilog(codes: type[ExitCode], title: str = "Exit status:") -> str:
    """A command's exit-code table for its ``--help`` epilog (click's ``\\b``: kept as written)."""
    width = max(len(str(code.value)) for code in codes)
    lines = ["\b", title]
    for code in codes:
        head = f"  {code.value:<{width}}  "
        lines += textwrap.wrap(code.meaning, HELP_WIDTH, initial_indent=head,
                               subsequent_indent=" " * len(head))
    return "\n".join(lines)


def exit_code_summary(codes: type[ExitCode]) -> str:
    """``0 finished, 1 internal error, ...``: the members' names as words, for one-line overviews."""
    return ", ".join(f"{code.value} {code.name.lower().replace('_', ' ')}" for code in codes)
