"""The run directory layout (docs/cli.md, "The run directory"): one place that names every file both sides use."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

DEFAULT_LOG_DIR = "log"
LATEST_LINK_NAME = "latest_checkpoint.pt"
QUARANTINE_SUFFIX = ".corrupt"
TMP_SUFFIX = ".tmp"


def checkpoint_name(step: int) -> str:
    """``model_{step:05d}.pt``, as docs/checkpoints.md names them."""
    return f"model_{step:05d}.pt"


class CheckpointNamingError(ValueError):
    """A ``--checkpoint-glob`` gpt2sup cannot read steps from (the message is one line for the user)."""


@dataclass(frozen=True)
class CheckpointNaming:
    """How a run directory's checkpoint files are named: a file-name pattern with one ``*`` that
    stands for the step number (``model_*.pt``, gpt2sup's worker and the guide; ``step_*.pt``, a
    script's own). Checkpoints are ordered by that number, so it must be all digits; a name whose
    ``*`` part is not is not a checkpoint. Staging (``.tmp``) and quarantined (``.corrupt``) files
    never count, whatever the pattern.

    A run whose script names its files otherwise records its pattern in the run directory
    (:data:`NAMING_FILE`), so that every reader (the supervisor, ``status``, ``report``,
    ``verify DIR``, the load-probe) lists the same files without being told.
    """

    pattern: str = "model_*.pt"

    def __post_init__(self) -> None:
        if "/" in self.pattern or os.sep in self.pattern:
            raise CheckpointNamingError(f"{self.pattern!r}: a file-name pattern, without a directory")
        if any(ch in self.pattern for ch in "?[]"):
            raise CheckpointNamingError(f"{self.pattern!r}: only '*' (the step number) is understood, not '?' or '[...]'")
        if self.pattern.count("*") != 1:
            raise CheckpointNamingError(f"{self.pattern!r}: needs exactly one '*', standing for the step number "
                                        "(e.g. step_*.pt)")
        prefix, suffix = self.pattern.split("*")
        if not prefix and not suffix:
            raise CheckpointNamingError("'*' alone matches every file; name the checkpoints' prefix or suffix "
                                        "(e.g. step_*.pt)")
        object.__setattr__(self, "_regex", re.compile(f"^{re.escape(prefix)}([0-9]+){re.escape(suffix)}$"))

    @property
    def is_default(self) -> bool:
        return self.pattern == DEFAULT_NAMING_PATTERN

    def step_of(self, name: str) -> int | None:
        """The step a file named ``name`` holds, or ``None`` if it is not a checkpoint's name."""
        if name.endswith((TMP_SUFFIX, QUARANTINE_SUFFIX)):
            return None
        match = self._regex.match(name)  # type: ignore[attr-defined]
        return int(match.group(1)) if match else None

    def to_json(self) -> dict[str, str]:
        return {"pattern": self.pattern}


DEFAULT_NAMING_PATTERN = "model_*.pt"
NAMING_FILE = "checkpoint_naming.json"
DEFAULT_NAMING = CheckpointNaming()


def naming_of(directory: str | Path) -> CheckpointNaming:
    """The naming a run directory records (:data:`NAMING_FILE`), else the default ``model_*.pt``.

    A record that cannot be read or understood counts as none: the default naming still lists
    gpt2sup's own files, and a reader never fails on a damaged record."""
    import json

    try:
        with open(Path(directory) / NAMING_FILE, encoding="utf-8") as handle:
            return CheckpointNaming(str(json.load(handle)["pattern"]))
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_NAMING


def record_naming(directory: str | Path, naming: CheckpointNaming) -> None:
    """Write (or, for the default naming, remove) the run directory's naming record, atomically."""
    from shared.atomic_io import write_json_atomic

    path = Path(directory) / NAMING_FILE
    if naming.is_default:
        path.unlink(missing_ok=True)
    else:
        write_json_atomic(path, naming.to_json())


def step_from_checkpoint_name(name: str, naming: CheckpointNaming | None = None) -> int | None:
    """The step encoded in a checkpoint file name, or ``None`` if it is not one (default naming:
    ``model_N.pt``)."""
    return (naming or DEFAULT_NAMING).step_of(name)


def step_from_checkpoint_path(path: str | Path) -> int | None:
    """The step in ``path``'s name, by the naming its directory records."""
    path = Path(path)
    return naming_of(path.parent).step_of(path.name)


class CheckpointFile(NamedTuple):
    """One complete checkpoint file (``model_N.pt``, or as the directory's naming says)."""

    step: int
    path: Path
    size: int


def scan_checkpoints(directory: Path, naming: CheckpointNaming | None = None) -> list[CheckpointFile]:
    """The complete checkpoint files (``model_N.pt``, or as ``directory`` records its naming) of
    ``directory``, sorted by step ascending: the one lister (the run's checkpoints, a file's
    siblings, ``gpt2sup verify DIR``).

    Symlink rule: only regular files count, a symlink is never followed, whatever it is named. A
    run's checkpoints are files its trainer wrote there; a link named like one would count its
    target twice (selection, pruning, the sibling median) or a file of another directory. A path
    the user names is still followed by the validation itself. Staging ``.tmp`` and quarantined
    ``.corrupt`` files never match the name; a file that vanishes while we list is skipped.
    Raises ``OSError`` when the directory itself cannot be listed (callers say what that means).
    """
    naming = naming or naming_of(directory)
    found: list[CheckpointFile] = []
    for entry in list(os.scandir(directory)):
        step = naming.step_of(entry.name)
        if step is None:
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                found.append(CheckpointFile(step, Path(entry.path), entry.stat(follow_symlinks=False).st_size))
        except OSError:
            continue
    found.sort(key=lambda item: item.step)
    return found


NODE_STATE_RE = re.compile(r"^supervisor\.node(\d+)\.json$")
GIVE_UP_NAME = "give_up.json"
STOP_REQUEST_NAME = "stop_request.json"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory. Pure path arithmetic plus directory listing.

    ``node``: the supervisor's node rank in a multi-node run (``--nnodes`` > 1). Node 0 and a
    one-node run use the plain names (``supervisor.lock``, ``supervisor.json``, ``attempts/``,
    ``incidents/``); node R >= 1 has its own (``supervisor.nodeR.lock``, ``supervisor.nodeR.json``,
    ``attempts/nodeR/``, ``incidents/nodeR/``), so the nodes of one run can share one directory.
    """

    root: Path
    node: int | None = None

    @classmethod
    def at(cls, root: str | Path, node: int | None = None) -> RunDir:
        return cls(Path(root), node if node else None)

    @property
    def _node_suffix(self) -> str:
        return f".node{self.node}" if self.node else ""

    # --- worker-written files -------------------------------------------------------------
    def checkpoint(self, step: int) -> Path:
        """Where gpt2sup's worker writes the checkpoint of ``step`` (``model_NNNNN.pt``)."""
        return self.root / checkpoint_name(step)

    def checkpoint_of_step(self, step: int) -> Path:
        """The checkpoint of ``step`` by this directory's naming: a script's file as it is on
        disk (``step_500.pt`` or ``step_0500.pt``), else the worker's name for it."""
        naming = self.naming()
        if naming.is_default:
            return self.checkpoint(step)
        found = [item.path for item in self.list_checkpoints() if item.step == step]
        return found[-1] if found else self.root / naming.pattern.replace("*", str(step))

    @property
    def latest_link(self) -> Path:
        return self.root / LATEST_LINK_NAME

    @property
    def log_txt(self) -> Path:
        return self.root / "log.txt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def heartbeat_dir(self) -> Path:
        return self.root / "heartbeat"

    def heartbeat(self, rank: int) -> Path:
        return self.heartbeat_dir / f"rank{rank}.json"

    @property
    def run_identity(self) -> Path:
        """What this run is (resolved training config, data fingerprint), written at its first start."""
        return self.root / "run_identity.json"

    @property
    def worker_lock(self) -> Path:
        """flock held by worker rank 0 while it trains: two trainers never write one directory."""
        return self.root / "worker.lock"

    @property
    def samples(self) -> Path:
        return self.root / "samples.txt"

    @property
    def tensorboard_dir(self) -> Path:
        """``--tensorboard``: rank 0's TensorBoard event files (``tensorboard --logdir <log_dir>/tb``)."""
        return self.root / "tb"

    # --- supervisor-written files ---------------------------------------------------------
    @property
    def supervisor_state(self) -> Path:
        return self.root / f"supervisor{self._node_suffix}.json"

    @property
    def supervisor_lock(self) -> Path:
        return self.root / f"supervisor{self._node_suffix}.lock"

    @property
    def remote_sync(self) -> Path:
        """``--checkpoint-uri``: the uploader's record (URI, newest committed step, lag, last error)."""
        return self.root / "remote_sync.json"

    def node_state(self, node: int) -> Path:
        """``supervisor.json`` for node 0, ``supervisor.nodeR.json`` for node R (one directory, several nodes)."""
        return RunDir.at(self.root, node).supervisor_state

    def list_node_states(self) -> dict[int, Path]:
        """node rank -> state file of every node that has one here (node 0: ``supervisor.json``)."""
        found: dict[int, Path] = {}
        if self.node_state(0).is_file():
            found[0] = self.node_state(0)
        try:
            names = [entry.name for entry in os.scandir(self.root)]
        except OSError:
            names = []
        for name in names:
            match = NODE_STATE_RE.match(name)
            if match and int(match.group(1)) > 0:
                found[int(match.group(1))] = self.root / name
        return dict(sorted(found.items()))

    @property
    def give_up_marker(self) -> Path:
        """Multi-node: written by a node's supervisor that ended the run (gave up, refused, stopped);
        the other nodes' supervisors sharing this directory read it and end the same way."""
        return self.root / GIVE_UP_NAME

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def stop_request(self) -> Path:
        """Written by the supervisor just before it SIGTERMs the workers to save and stop (and
        removed before each launch): a worker that gets a SIGTERM without it, while a peer rank is
        gone, is being torn down by torchrun and exits at once (worker/runtime/lifetime.py)."""
        return self.root / STOP_REQUEST_NAME

    @property
    def attempts_dir(self) -> Path:
        return self.root / "attempts" / f"node{self.node}" if self.node else self.root / "attempts"

    def attempt_log(self, attempt: int) -> Path:
        return self.attempts_dir / f"{attempt:03d}.log"

    @property
    def incidents_dir(self) -> Path:
        return self.root / "incidents" / f"node{self.node}" if self.node else self.root / "incidents"

    def incident_dir(self, number: int) -> Path:
        return self.incidents_dir / f"{number:03d}"

    # --- listings ---------------------------------------------------------------------------
    def naming(self) -> CheckpointNaming:
        """How this directory's checkpoints are named (its :data:`NAMING_FILE`, read each call:
        cheap, and a long-lived reader sees a rerun's new pattern)."""
        return naming_of(self.root)

    def list_checkpoints(self) -> list[CheckpointFile]:
        """:func:`scan_checkpoints` of the run directory; none when it cannot be listed."""
        try:
            return scan_checkpoints(self.root)
        except OSError:
            return []

    def newest_checkpoint(self) -> CheckpointFile | None:
        checkpoints = self.list_checkpoints()
        return checkpoints[-1] if checkpoints else None

    def highest_attempt(self) -> int:
        """The highest ``attempts/NNN.log`` number so far (0: none); attempts are numbered across supervisors."""
        return _highest_numbered_entry(self.attempts_dir)

    def next_incident_number(self) -> int:
        """1 + the highest ``incidents/NNN`` directory: incidents are numbered across attempts."""
        return _highest_numbered_entry(self.incidents_dir) + 1

    def list_heartbeats(self) -> list[Path]:
        try:
            return sorted(self.heartbeat_dir.glob("rank*.json"))
        except OSError:
            return []

    def point_latest_link(self, target: Path | None) -> None:
        """Atomically re-point ``latest_checkpoint.pt`` at ``target`` (or remove it for ``None``).

        The link is relative (the run directory can be moved) and replaced by renaming a new link
        over it, so a reader always sees the old target or the new one. The directory is fsynced
        so the new link survives a power loss together with the file it names.
        """
        from shared.atomic_io import fsync_path

        link = self.latest_link
        if target is None:
            if link.is_symlink() or link.exists():
                link.unlink(missing_ok=True)
        else:
            staging = link.with_name(f".{link.name}.{os.getpid()}.new")
            staging.unlink(missing_ok=True)
            os.symlink(Path(target).name, staging)
            os.replace(staging, link)
        fsync_path(self.root)

    def resolve_latest_link(self) -> Path | None:
        """The file ``latest_checkpoint.pt`` points to, if the link exists and its target does."""
        link = self.latest_link
        if not link.is_symlink():
            return link if link.is_file() else None
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return target if target.is_file() else None


def _highest_numbered_entry(directory: Path) -> int:
    """The largest ``NNN`` among ``directory``'s entries named ``NNN`` or ``NNN.ext``; 0 if none."""
    try:
        stems = [entry.name.split(".")[0] for entry in os.scandir(directory)]
    except OSError:
        return 0
    return max((int(stem) for stem in stems if stem.isdigit()), default=0)
