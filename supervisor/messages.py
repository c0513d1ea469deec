"""Every line ``gpt2sup run`` says about a failure or an ending, composed in one place.

The cycle decides; this module words it. Keeping the text here means one tone and one format
for "what happened, to which rank, after which step, and why" instead of f-strings scattered
through the loop, and the wording can be tested without processes.
"""
from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

from shared.exit_codes import SupervisorExit
from shared.run_dir import DEFAULT_LOG_DIR
from shared.vocabulary import OutcomeKind
from supervisor.policy import Outcome, RankExit
from supervisor.run_config import DEFAULT_WORKER

_LABELS = {
    OutcomeKind.OOM: "ran out of memory (kernel OOM kill)",
    OutcomeKind.DIVERGED: "diverged (non-finite loss)",
    OutcomeKind.PERMANENT: "cannot run",
    OutcomeKind.BAD_CHECKPOINT: "could not use its checkpoint",
    OutcomeKind.FINISHED_WITHOUT_CHECKPOINT: "could not write its final checkpoint",
}


def run_command(log_dir: str | Path, cwd: str | Path, worker_module: str | None = None) -> str:
    """``gpt2sup run --log-dir mine`` (``--worker M`` too, where not the default): the command that
    acts on this run directory when typed in ``cwd``. A bare ``gpt2sup run`` acts on ``./log``,
    so a hint that says only that sends the operator to another run."""
    parts = ["gpt2sup", "run"]
    target = os.path.normpath(os.path.join(cwd, log_dir))
    relative = os.path.relpath(target, cwd)
    if relative != os.path.normpath(DEFAULT_LOG_DIR):
        parts += ["--log-dir", relative if not relative.startswith("..") else target]
    if worker_module and worker_module != DEFAULT_WORKER and not worker_module.endswith(".py"):
        parts += ["--worker", worker_module]  # a script is not: the directory's record names it
    return shlex.join(parts)


def script_startup_timeout(seconds: float, workers_started: bool) -> str:
    if not workers_started:
        return f"torchrun started no worker within the start-up timeout ({seconds:.0f}s)"
    return (f"the script printed nothing and wrote no file within the start-up timeout ({seconds:.0f}s) "
            "of its ranks starting")


def script_hang_detection_off(script: str) -> str:
    return (f"hang detection is OFF for {os.path.basename(script)} unless it writes gpt2sup heartbeats "
            "(shared.client): crashes are still restarted. Give --hang-timeout SECONDS to judge a script "
            "without heartbeats by the silence of its output and files (docs/own-trainer.md)")


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; a number with no name (a real-time signal) as ``signal 40``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def after_step(step: int | None) -> str:
    """``after step 41`` (the last completed step), or ``before its first step``."""
    return f"after step {step}" if step is not None and step >= 0 else "before its first step"


def first_line(text: str | None) -> str | None:
    """The summary line of a (possibly multi-line) worker message."""
    if not text:
        return None
    stripped = text.strip().splitlines()
    return stripped[0].strip() if stripped else None


def attempt_failure(outcome: Outcome, step: int | None, cause: str | None, step_known: bool = True) -> str:
    """``rank 1 crashed: killed by SIGKILL after step 5`` (+ ``: <its own error line>``).
    ``step_known`` False: a script without heartbeats, whose step nobody told us: no step."""
    who = f"rank {outcome.rank}" if outcome.rank is not None else "torchrun"
    how = f"killed by {signal_name(outcome.signal)}" if outcome.signal else f"exited with code {outcome.exit_code}"
    reason = f"{who} {_LABELS.get(outcome.kind, 'crashed')}: {how}" + (f" {after_step(step)}" if step_known else "")
    return f"{reason}: {cause}" if cause else reason


def startup_timeout(seconds: float, workers_started: bool) -> str:
    if not workers_started:
        return f"torchrun started no worker within the start-up timeout ({seconds:.0f}s)"
    return f"no heartbeat within the start-up timeout ({seconds:.0f}s) of the workers starting"


def unsupported_format(reason: str) -> str:
    """A checkpoint in a format newer than this install reads: not damage, no restart can help."""
    return f"cannot resume: {reason} (nothing renamed, no restart spent; exit {int(SupervisorExit.UNSUPPORTED_FORMAT)})"


def gave_up(decision_reason: str, failure_reason: str) -> str:
    return f"gave up: {decision_reason}; last failure: {failure_reason}"


def permanent(cause: str | None, failure_reason: str, exit_code: int | None, log_name: str) -> str:
    """One short line: the worker's own reason, then where the full output is."""
    code = f"worker exit {exit_code}: " if exit_code is not None else ""
    return f"gave up: {cause or failure_reason} ({code}relaunching cannot help; full output in {log_name})"


def refused(message: str | None, failure_reason: str) -> str:
    """The summary, then each difference on its own line (the worker wrote them that way)."""
    lines = [line.rstrip() for line in (message or failure_reason).strip().splitlines() if line.strip()]
    # The worker names its own flags; the operator talks to gpt2sup run, which forwards them.
    summary = (lines[0] if lines else "").replace("--allow_config_change", "--allow-config-change")
    summary = summary.replace("--log_dir", "--log-dir")
    head = f"refused: {summary}" if summary else "refused"
    tail = [f"  {line.strip()}" for line in lines[1:]]
    hint = [] if "--allow-config-change" in summary else [
        "  (pass --allow-config-change to resume anyway, or use another --log-dir)"]
    return "\n".join([head, *tail, *hint])


def finished(step: int | None, checkpoint: str | None) -> str:
    return f"training finished {after_step(step)}; final checkpoint {checkpoint} (exit {int(SupervisorExit.FINISHED)})"


def already_finished(step: int | None, checkpoint: str) -> str:
    """A plain ``gpt2sup run`` on a complete run: say so instead of relaunching it."""
    return (f"already finished at step {step} ({checkpoint}): nothing launched; a longer --max_steps "
            f"trains on (exit {int(SupervisorExit.FINISHED)})")


def finished_without_checkpoint(step: int | None, cause: str | None) -> str:
    why = f": {cause}" if cause else ""
    return (f"training reached its last step ({after_step(step)}) but the final checkpoint is NOT on disk{why} "
            f"(exit {int(SupervisorExit.FINISHED_WITHOUT_CHECKPOINT)})")


def stopped_without_checkpoint(step: int | None, cause: str | None, newest: str | None,
                               resume_with: str = "gpt2sup run") -> str:
    """A stop whose own checkpoint could not be written (worker exit 9): resumable, but steps are lost."""
    why = f": {cause}" if cause else ""
    resume = (f"`{resume_with}` resumes from {newest}, redoing the steps after it" if newest
              else "no checkpoint is on disk, so there is nothing to resume")
    return (f"stopped {after_step(step)}, but the stop's checkpoint could NOT be written{why}; "
            f"{resume} (exit {int(SupervisorExit.STOPPED)})")


def stopped(how: str, step: int | None = None, checkpoint: str | None = None,
            resume_with: str | None = "gpt2sup run", newest: str | None = None) -> str:
    """``resume_with``: the command that resumes this run (``run_command``), None when no checkpoint
    exists (a stop during start-up): then nothing is said about resuming. ``newest``: the newest
    checkpoint on disk when the stop itself saved none (a forced stop)."""
    saved = f"; saved {checkpoint}" if checkpoint else f"; newest checkpoint {newest}" if newest else ""
    where = f" {after_step(step)}" if step is not None else ""
    resume = f"`{resume_with}` resumes it" if resume_with else "no checkpoint was written, so there is nothing to resume"
    return f"stopped on request ({how}){where}{saved}; {resume} (exit {int(SupervisorExit.STOPPED)})"


# --- what the watch of one attempt says (supervisor.attempts.torchrun_attempts) --------------------
def could_not_launch(program: str, error: str) -> str:
    return f"could not launch {program}: {error}"


def launched(number: int, pid: int, nproc_per_node: int, log_name: str) -> str:
    return f"attempt {number}: launched torchrun pid {pid} ({nproc_per_node} proc/node), log {log_name}"


def not_scheduled(gap_s: float) -> str:
    return f"the supervisor itself was not scheduled for {gap_s:.0f}s (stopped, suspended or starved)"


def heartbeat_unreadable(rank: int) -> str:
    return f"heartbeat of rank {rank} disappeared or is unreadable; judging it by its last good beat"


def slow_node(host: str, own_s: float, others_s: float) -> str:
    return (f"node {host} is a straggler: {own_s * 1000:.1f} ms of compute per step, "
            f"{own_s / others_s:.2f}x the other nodes' {others_s * 1000:.1f} ms")


def stop_forwarded(asked_by: str | None, workers: int, script: bool = False) -> str:
    if script:  # a user's script: SIGTERM is all it gets; whether it saves is its own code's business
        return (f"stop requested ({asked_by}): sent SIGTERM to {workers} rank(s) of the script "
                "(`gpt2sup stop --force` or a second Ctrl-C kills them at once)")
    return (f"stop requested ({asked_by}): asked {workers} worker(s) to save and exit (`gpt2sup stop --force` "
            "or a second Ctrl-C stops without the save)")


def stop_before_workers(asked_by: str | None) -> str:
    return f"stop requested ({asked_by}) before workers started: stopping torchrun"


def stop_repeated(signal: str) -> str:
    return (f"stop requested again ({signal}): the workers are already saving; this changes nothing "
            "(`gpt2sup stop --force` stops without the save)")


def killing_tree(why: str) -> str:
    return f"{why}: killing the process tree"


def killing_for_peer(why: str, attempt: int) -> str:
    return f"{why}: killing this node's attempt {attempt}"


def in_attempt(attempt: int, what: str) -> str:
    """``attempt 3: <what>``: a hang or a crash, as the journal records it."""
    return f"attempt {attempt}: {what}"


def evidence_captured(where: str, files: int, seconds: float) -> str:
    return f"evidence in {where} ({files} files, {seconds:.1f}s)"


def agent_unresponsive(pid: int, stopped: bool, elapsed_s: float) -> str:
    return (f"torchrun (pid {pid}) stopped responding after its ranks exited"
            + (" (it is stopped by a signal)" if stopped else f" ({elapsed_s:.0f}s into the attempt)"))


def died_in_teardown(first: RankExit | None, torchrun_code: int) -> str:
    """A rank that failed after every rank had ended: the run is done, nothing to restart."""
    if first is None:
        who = f"torchrun exited {torchrun_code}"
    elif first.exit_code < 0:
        who = f"rank {first.rank} was killed by {signal_name(-first.exit_code)}"
    else:
        who = f"rank {first.rank} exited {first.exit_code}"
    return (f"{who} after every rank had ended (finished with its final checkpoint valid, or stopped): "
            "a failure in the workers' teardown, not in training; not restarted")


def survived_sigkill(pids: list[int]) -> str:
    return f"processes survived SIGKILL: {pids}"


# --- what the cycle says between attempts (supervisor.run_loop) -----------------------------------
def internal_error(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"


def restarted(restarts_used: int, max_restarts: int, after: object) -> str:
    return f"restart {restarts_used}/{max_restarts} after {after}"


def refusing_to_launch(beside: str) -> str:
    return f"refusing to launch: {beside}"


def written_in_attempt(attempt: int) -> str:
    return f"written by the worker in attempt {attempt}"


def backing_off(remaining_s: float, delay_s: float) -> str:
    return f"waiting {remaining_s:.1f}s more before restarting (backoff {delay_s:.1f}s from the failure)"


def last_failure(decision_reason: str, failure_reason: str) -> str:
    return f"{decision_reason}; last failure: {failure_reason}"


def following_node(peer: str, node: int | None) -> str:
    return f"{peer} -- node {node} ends too"


# --- before the first launch (supervisor.run_start) ------------------------------------------------
def supervisor_started(pid: int, run_root: object) -> str:
    return f"supervisor {pid} watching {run_root}"


def record_rewritten(unreadable: str) -> str:
    return f"the previous supervisor.json was unreadable ({unreadable}); rewritten with this run's arguments"


def record_unreadable(state_path: object, why: str, run_root: object, command: str) -> str:
    return (f"refusing to start: {state_path} is unreadable ({why}), so the worker arguments of the run in "
            f"{run_root} are unknown; give them after `--` ({command} [--worker MODULE] -- ARGS), "
            "or use a new --log-dir")


def not_touching(left_alone: dict[int, str]) -> str:
    return (f"not touching {len(left_alone)} live process(es) recorded in supervisor.json: "
            + "; ".join(f"pid {pid}: {why}" for pid, why in sorted(left_alone.items())))


def orphans_stopped(forced: str | None, pids: list[int], previous_pid: int) -> str:
    how = f"killed ({forced})" if forced else "saved and stopped"
    return f"{how}: {len(pids)} process(es) left by supervisor {previous_pid}: {pids}"


# --- the checkpoint a launch resumes from (supervisor.checkpoints.resume_choice) -------------------
def quarantined(name: str, reason: str | None, renamed_to: str, by_worker: bool = False) -> str:
    if by_worker:
        return f"checkpoint {name} rejected by the worker ({reason}); renamed to {renamed_to}"
    return f"checkpoint {name} failed validation ({reason}); renamed to {renamed_to}"


def kept_unjudged(name: str, reason: str | None) -> str:
    return f"could not judge {name} ({reason}); kept it, resuming from an older file that passed"


def resuming_unverified_none_passed(name: str) -> str:
    return (f"NO CHECKPOINT PASSED VALIDATION, but {name} is still on disk: resuming from it UNVERIFIED "
            "rather than from scratch")


NONE_VALID = "NO VALID CHECKPOINT: every checkpoint failed validation; starting from scratch"


def could_not_judge_resuming(name: str, reason: str | None) -> str:
    return f"COULD NOT JUDGE {name} ({reason}): resuming from it UNVERIFIED; the worker's own checks are the last line"


def resuming_from(name: str, seconds: float | None, inconclusive_reason: str | None = None,
                  inconclusive: bool = False) -> str:
    if inconclusive:
        return f"resuming from {name} UNVERIFIED: validation inconclusive ({inconclusive_reason})"
    return f"resuming from {name} (validated in {seconds or 0:.2f}s)"


def rejected_but_unnamed(cause: str | None, name: str | None) -> str:
    return (f"the worker rejected its checkpoint ({cause}) but "
            f"{'did not name it' if not name else name + ' is gone'}; validating again")


def could_not_quarantine(name: str, error: str) -> str:
    return f"could not quarantine {name}: {error}"


# --- the nodes' shared endings (supervisor.multinode.endings) ----------------------------------------
def ending_not_recorded(marker_name: str, error: str) -> str:
    return f"could not record this node's ending for the other nodes in {marker_name}: {error}"


def store_unreachable(where: str) -> str:
    return (f"could not tell the other nodes through the coordination store at {where} (not reachable): "
            "only a shared run directory does")


def rendezvous_still_closed(rdzv_id: str, wait_s: float) -> str:
    return (f"the rendezvous '{rdzv_id}' is still closed by the previous attempt (a torchrun of it, on some "
            f"node, still hosts the c10d store): relaunching in {wait_s:g}s, not counted as a restart")


# --- the checkpoint store (supervisor.checkpoints.remote_checkpoints) ---------------------------------
def store_refused(error: object) -> str:
    return f"refusing to start: checkpoint store: {error}"


def identity_not_restored(error: str) -> str:
    return f"refusing to start: cannot restore run_identity.json: {error}"


def identity_restored(uri: str) -> str:
    return f"restored run_identity.json from {uri} (a new machine: the run continues from the store)"


def remote_unlisted(error: object) -> str:
    return f"could not look at the remote checkpoints ({error}); resuming from the local ones"


def committed_to(line: str, step: int, uri: str) -> str:
    return f"{line} [model_{step:05d}.pt committed to {uri}]"


def not_uploaded(step: int | None, uri: str, timeout_s: float, committed: int | None, error: str | None) -> str:
    remote = f"step {committed}" if committed is not None else "nothing"
    why = f": {error}" if error else ""
    return (f"model_{step:05d}.pt is on local disk but NOT uploaded to {uri} within {timeout_s:g}s "
            f"(the store holds {remote}{why})")

