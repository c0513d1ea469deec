"""gpt2sup's heartbeat client: a few lines that give your own training script what gpt2sup's
worker has (docs/own-trainer.md, "A few lines").

    from shared.client import Heartbeat

    hb = Heartbeat(max_steps=max_steps)         # once, after torchrun set RANK / WORLD_SIZE
    for step in range(start, max_steps):
        ...forward, backward, optimizer step...
        hb.beat(step, loss=loss, compute_s=fwd_bwd_seconds)
        if step % checkpoint_interval == 0 or hb.should_stop():
            with hb.phase("checkpoint"):         # a save may be slower than a step: its own timeout
                save(path)
            hb.saved(path)
        if hb.should_stop():                    # gpt2sup stop, Ctrl-C, SIGTERM to the supervisor
            hb.stopped()
            break
    else:
        hb.finished()

What it buys, under ``gpt2sup run -- SCRIPT.py``:

- hang detection per phase from the beats (as for gpt2sup's worker: a rank silent past its
  phase's timeout is hung; the timeouts are learned from the step pace unless given), instead of
  the coarse silence of the script's output;
- the stop protocol: a stop request reaches the script as ``should_stop()`` (it saves at the
  next step and exits 0, and the run ends ``stopped`` with that checkpoint); a SIGTERM that is
  torchrun tearing the group down after a peer died still ends the process at once;
- straggler detection (``compute_s``: the seconds of the rank's own forward and backward, before
  the gradient all-reduce that makes every rank's step time equal) and the live panel of
  ``gpt2sup status`` (step, loss, tokens/s, phase per rank).

Dependency-free (the standard library and gpt2sup's ``shared`` package), cheap (a few
microseconds per step: one small JSON file rewritten at most every ``MIN_BEAT_INTERVAL_S``, by the
training loop itself: never from a thread, which would beat on while the loop is stuck), and a
no-op outside gpt2sup (no ``GPT2SUP_RUN_DIR`` in the environment
and no ``run_dir`` given): the same script runs bare, under plain torchrun, unchanged.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from shared.atomic_io import read_json, rewrite_json
from shared.run_dir import STOP_REQUEST_NAME, RunDir
from shared.vocabulary import (
    ATTEMPT_ID_ENV,
    RUN_DIR_ENV,
    SUPERVISOR_ENV,
    Phase,
    RankStatus,
)

COMPUTE_SAMPLES = 20  # the newest per-step compute times a beat carries (as the worker's)
# Step beats closer together than this update the record in memory only: a rewrite of the file
# costs ~0.3 ms, which a fast step would notice; hang timeouts are seconds, so a beat at most this
# much older changes no verdict. A phase change, a save and an ending are always written at once.
MIN_BEAT_INTERVAL_S = 0.25


class Heartbeat:
    """One rank's heartbeat file, ``<run dir>/heartbeat/rank{R}.json`` (docs/architecture.md)."""

    def __init__(self, run_dir: str | Path | None = None, *, max_steps: int | None = None,
                 handle_sigterm: bool = True) -> None:
        given = run_dir if run_dir is not None else os.environ.get(RUN_DIR_ENV)
        self.enabled = bool(given)
        self.run = RunDir.at(Path(given)) if given else None
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.max_steps = max_steps
        self.attempt_id = os.environ.get(ATTEMPT_ID_ENV) or None
        self.step = -1
        self.current_phase = Phase.STARTUP
        self.status = RankStatus.RUNNING
        self.loss: float | None = None
        self.tokens_per_s: float | None = None
        self.last_checkpoint: str | None = None
        self.save_seconds: float | None = None
        self.message: str | None = None
        self.compute_s: list[float] = []
        self._seq = 0
        self._last_write = -MIN_BEAT_INTERVAL_S
        self._stop_reason: str | None = None
        self._supervisor_pid = _pid_of(os.environ.get(SUPERVISOR_ENV, ""))
        self._next_supervisor_check = 0.0
        if self.enabled and handle_sigterm:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        self._write()

    # -- what the training loop says --------------------------------------------------------------
    def beat(self, step: int, *, phase: str = Phase.TRAIN, loss: float | None = None,
             tokens_per_s: float | None = None, compute_s: float | None = None) -> None:
        """``step`` (the last completed optimizer step) is done: call it once per step. Written to
        the file at most every ``MIN_BEAT_INTERVAL_S`` (a phase change at once)."""
        changed_phase = Phase(phase) != self.current_phase
        self.step, self.current_phase = int(step), Phase(phase)
        self.loss = float(loss) if loss is not None else None
        self.tokens_per_s = float(tokens_per_s) if tokens_per_s is not None else None
        if compute_s is not None:
            self.compute_s = [*self.compute_s, float(compute_s)][-COMPUTE_SAMPLES:]
        if changed_phase or time.monotonic() - self._last_write >= MIN_BEAT_INTERVAL_S:
            self._write()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """``with hb.phase("checkpoint"):`` (or ``"eval"``): the code inside is judged against that
        phase's timeout, not a training step's; back to ``train`` after it."""
        self.current_phase = Phase(name)
        self._write()
        started = time.monotonic()
        try:
            yield
        finally:
            if self.current_phase == Phase.CHECKPOINT:
                self.save_seconds = time.monotonic() - started
            self.current_phase = Phase.TRAIN
            self._write()

    def saved(self, path: str | Path) -> None:
        """A checkpoint is complete on disk (renamed into place): the supervisor validates it."""
        self.last_checkpoint = Path(path).name
        self._write()

    def should_stop(self) -> bool:
        """The supervisor asked this run to stop (``gpt2sup stop``, Ctrl-C or SIGTERM to it), or
        it is gone: save at this step and exit. Cheap enough to call every step."""
        if self._stop_reason is None and self._supervisor_gone():
            self._stop_reason = f"supervisor {self._supervisor_pid} is gone"
        return self._stop_reason is not None

    def stopped(self, message: str | None = None) -> None:
        """This rank stops on request (after its save): the run ends ``stopped``."""
        self._end(RankStatus.STOPPED, message or self._stop_reason)

    def finished(self) -> None:
        """The last step is done and saved: the run ends ``finished``."""
        self._end(RankStatus.FINISHED, None)

    def failed(self, message: str) -> None:
        """This rank gives up with a reason (the supervisor shows it as the cause)."""
        self._end(RankStatus.FAILED, message)

    # -- inside -----------------------------------------------------------------------------------
    def _end(self, status: RankStatus, message: str | None) -> None:
        self.status, self.message = status, message
        self._write()

    def _write(self) -> None:
        if self.run is None:
            return
        self._last_write = time.monotonic()
        self._seq += 1
        record: dict[str, Any] = {
            "pid": os.getpid(), "rank": self.rank, "world_size": self.world_size, "step": self.step,
            "phase": str(self.current_phase), "time": time.time(), "mono": time.monotonic(), "seq": self._seq,
            "status": str(self.status), "max_steps": self.max_steps, "loss": self.loss,
            "tokens_per_s": self.tokens_per_s, "last_checkpoint": self.last_checkpoint,
            "save_seconds": self.save_seconds, "message": self.message, "hostname": socket.gethostname(),
            "compute_s": list(self.compute_s) or None, "attempt_id": self.attempt_id,
        }
        try:
            rewrite_json(self.run.heartbeat(self.rank), record)
        except OSError:
            pass  # a full disk must not kill training; the supervisor judges by the last beat it read

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """The supervisor's stop (it writes ``stop_request.json`` for this attempt first, then
        signals): stop at the next step. Any other SIGTERM while a peer rank is dead is torchrun
        tearing the group down: no step can finish, so the process ends at once, as by default."""
        if self._supervisor_asked() or not self._a_peer_is_gone():
            self._stop_reason = self._stop_reason or "stop requested (SIGTERM)"
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def _supervisor_asked(self) -> bool:
        assert self.run is not None
        record = read_json(self.run.root / STOP_REQUEST_NAME)
        if not isinstance(record, dict):
            return False
        asked = record.get("attempt_id")
        return not (isinstance(asked, str) and self.attempt_id) or asked == self.attempt_id

    def _a_peer_is_gone(self) -> bool:
        """A rank of this attempt on this host whose process has exited (from its heartbeat)."""
        assert self.run is not None
        for path in self.run.list_heartbeats():
            try:
                beat = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            pid = beat.get("pid") if isinstance(beat, dict) else None
            if (isinstance(pid, int) and pid != os.getpid() and beat.get("hostname") == socket.gethostname()
                    and beat.get("attempt_id") == self.attempt_id and not _alive(pid)):
                return True
        return False

    def _supervisor_gone(self) -> bool:
        if self._supervisor_pid is None or time.monotonic() < self._next_supervisor_check:
            return False
        self._next_supervisor_check = time.monotonic() + 1.0
        return not _alive(self._supervisor_pid)


def _pid_of(token: str) -> int | None:
    """The pid of ``<pid>:<create_time>`` (``GPT2SUP_SUPERVISOR``)."""
    text = token.partition(":")[0]
    return int(text) if text.isdigit() and int(text) > 0 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
