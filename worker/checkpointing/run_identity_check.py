"""The worker's side of run identity: this launch's identity, checked on resume, recorded at start.

``shared.run_identity`` knows what an identity is and how two compare; ``RunIdentityCheck`` applies
the rule where the worker starts, so a bare ``--auto_resume`` without the supervisor is protected:

* a resume compares this launch with the checkpoint it resumes from (or, when the run has no
  checkpoint yet, with ``run_identity.json``); a math-changing difference without
  ``--allow_config_change`` is exit 6 listing every difference, one per line; allowed (or
  overridden) differences go on with one note each;
* ``--pretrained_checkpoint`` starts a new run: the file is not compared, but its path, content
  hash and step become part of the identity, so a later resume without it is refused;
* rank 0 writes ``run_identity.json`` (durably) at a run's first start, and every checkpoint's
  ``train_config`` carries the identity (``identity.to_train_config()``).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared.atomic_io import write_json_atomic
from shared.exit_codes import WorkerExit
from shared.hf_files import HFFileError
from shared.run_dir import RunDir
from shared.run_identity import (
    ARCHITECTURE_KEYS,
    IDENTITY_VERSION,
    RunIdentity,
    compare,
    fingerprint_checkpoint_file,
    fingerprint_data,
    read_identity_file,
)
from worker.errors import WorkerError
from worker.model import cosine_lr

# Flags that change nothing in the math: recorded so a relaunch can say what changed.
SETTINGS_FLAGS = ("checkpoint_interval", "keep_last_n_checkpoints", "eval_interval", "hellaswag_interval",
                  "generate_interval", "val_steps", "compile", "device_type")


class RunIdentityCheck:
    def __init__(self, identity: RunIdentity, run_dir: RunDir, *, allow_change: bool,
                 log: Callable[[str], None] = print) -> None:
        self.identity = identity  # what this run is, and records from now on
        self.run_dir = run_dir
        self.allow_change = allow_change
        self.log = log
        self._resumed: tuple[RunIdentity, str] | None = None  # the resumed checkpoint's identity, its name
        # The allowed differences from the resumed checkpoint that change what its re-done steps
        # compute (a longer max_steps re-shapes the LR schedule; overridden math changes): the
        # replay check must not blame data, code or hardware for them.
        self.resume_math_changes: tuple[str, ...] = ()

    @classmethod
    def for_launch(cls, config: Any, world_size: int, data_dir: Path, model_config: dict[str, Any],
                   run_dir: RunDir, log: Callable[[str], None] = print) -> RunIdentityCheck:
        """This launch's identity from its resolved config (a ``TrainConfig``: every default filled in)."""
        pretrained = None
        if config.pretrained_checkpoint and Path(config.pretrained_checkpoint).exists():
            try:  # a file or a Hugging Face directory; an unreadable one is reported when it is loaded
                pretrained = pretrained_fingerprint(Path(config.pretrained_checkpoint))
            except (HFFileError, OSError):
                pretrained = None
        identity = RunIdentity(
            identity_version=IDENTITY_VERSION,
            model=config.model,
            model_config={k: model_config[k] for k in ARCHITECTURE_KEYS},
            total_batch_size=config.total_batch_size,
            micro_batch_size=config.micro_batch_size,
            seq_len=config.seq_len,
            max_steps=config.max_steps,
            warmup_steps=config.warmup_steps,
            max_lr=config.max_lr,
            weight_decay=config.weight_decay,
            seed=config.seed,
            dropout=config.dropout,
            world_size=world_size,
            data=fingerprint_data(data_dir),
            pretrained=pretrained,
            settings={k: getattr(config, k) for k in SETTINGS_FLAGS},
            argv=list(sys.argv[1:]),
        )
        return cls(identity, run_dir, allow_change=config.allow_config_change, log=log)

    # --- the three moments of a start-up ---------------------------------------------------
    def check_checkpoint(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Before a checkpoint's state is used: is it this run's? (exit 6 if not)"""
        step = checkpoint.get("step")
        recorded = RunIdentity.from_checkpoint(checkpoint)
        self._check(recorded, f"checkpoint {path.name}", step if isinstance(step, int) else None)
        self._resumed = (recorded, path.name)  # what a damaged run_identity.json is rebuilt from

    def check_unstarted_run(self) -> None:
        """``--auto_resume`` found no checkpoint: a run that started here before must match too.
        A damaged ``run_identity.json`` cannot be rebuilt without a checkpoint: refused (exit 6),
        since training over it would trust what nobody can read."""
        recorded = read_identity_file(self.run_dir.run_identity)
        if recorded.unreadable is not None:
            raise WorkerError(
                f"{self.run_dir.run_identity} is unreadable ({recorded.unreadable}) and no checkpoint holds the "
                f"run's identity to rebuild it from: delete it to start {self.run_dir.root} afresh, or use a new "
                "--log_dir", WorkerExit.RUN_MISMATCH)
        if recorded.identity is not None:
            self._check(recorded.identity, self.run_dir.run_identity.name, None)

    def note_pretrained(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """A fine-tune starts from ``path``: record which file (content hash) and its step."""
        self.identity = replace(self.identity, pretrained=pretrained_fingerprint(path, checkpoint.get("step")))

    def record_first_start(self, resumed: bool) -> None:
        """Rank 0, after start-up: a run that did not resume state starts here (so does one whose
        directory predates identities); write ``run_identity.json`` durably."""
        identity = self.identity
        if resumed and self.run_dir.run_identity.exists():
            damage = read_identity_file(self.run_dir.run_identity).unreadable
            if damage is None or self._resumed is None:
                return
            identity, source = self._resumed
            self.log(f"note: {self.run_dir.run_identity.name} was unreadable ({damage}): rebuilt from "
                     f"checkpoint {source}")
        try:
            write_json_atomic(self.run_dir.run_identity, identity.to_dict(), durable=True)
        except OSError as exc:  # every checkpoint carries the identity too: warn and train on
            self.log(f"WARNING: could not write {self.run_dir.run_identity}: {exc.strerror or exc}")

    # -----------------------------------------------------------------------------------------
    def _check(self, recorded: RunIdentity, source: str, resumed_step: int | None) -> None:
        diff = compare(recorded, self.identity, resumed_step=resumed_step, lr_schedule=cosine_lr)
        listed = "".join(f"\n  {line}" for line in diff.lines())
        if diff.changes_math and not diff.overridable:
            raise WorkerError(
                f"{self.run_dir.root} holds another run: {source} was trained with a different model, which no "
                f"--allow_config_change can resume (other parameter shapes); use a new --log_dir{listed}",
                WorkerExit.RUN_MISMATCH)
        if diff.changes_math and not self.allow_change:
            raise WorkerError(
                f"{self.run_dir.root} holds another run: {len(diff.math_changes)} setting(s) that change the "
                f"training math differ from {source}; pass --allow_config_change to resume anyway, or use a "
                f"new --log_dir{listed}", WorkerExit.RUN_MISMATCH)
        if resumed_step is not None:
            self.resume_math_changes = tuple(d.line() for d in diff.differences
                                             if d.changes_math or d.key == "max_steps")
        for note in diff.notes:
            self.log(f"note: run identity: {note}")
        for difference in diff.differences:
            why = "changes the training math, allowed by --allow_config_change" if difference.changes_math else "allowed"
            self.log(f"note: {why}: {difference.line()}")
        if recorded.pretrained and not any(d.key == "pretrained_checkpoint" for d in diff.differences):
            # The same pretrained file: keep what its first load recorded (its step is not re-read).
            self.identity = replace(self.identity, pretrained=recorded.pretrained)


def pretrained_fingerprint(path: Path, step: Any = None) -> dict[str, Any]:
    """The file a fine-tune starts from: its path, content hash (zip CRCs; for a Hugging Face
    directory or safetensors file its header and sampled bytes) and training step (None for HF)."""
    return {**fingerprint_checkpoint_file(path), "step": step if isinstance(step, int) else None}
