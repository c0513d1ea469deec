"""What a training run *is*, and whether a relaunch describes the same run.

A resume continues the exact math of the run that wrote the checkpoint: same model, same data,
same batch, same learning-rate schedule, same seed. Relaunching the run directory with other
arguments (another ``--data_dir``, a larger ``--max_lr``) used to continue silently with the old
weights and the new settings: a different, unrecorded experiment. This module records a run's
identity (resolved training config, a cheap fingerprint of its data, the process count, the
pretrained file it started from, the command line) and compares a recorded identity with the
current one, sorting each difference into one of two kinds:

* **math-changing** (model, data, total batch, sequence length, LR schedule, seed, dropout, weight
  decay, a shorter ``max_steps``, another pretrained file): a resume is refused unless the user
  explicitly overrides it;
* **allowed, noted** (eval/checkpoint intervals, keep-last-N, micro batch and process count at an
  equal total batch, a moved but identical data directory, a *longer* ``max_steps``, which is a
  documented extension whose LR-schedule change is spelled out).

Pure standard library, no torch: the worker and the supervisor both use it. The worker writes the
identity to ``run_identity.json`` at a run's first start and into every checkpoint's
``train_config`` (a flat dict whose older keys keep their names, so older readers still work;
without the command line, which differs between launches of the same training).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.hf_files import fingerprint_hf_source, is_hf_source

IDENTITY_VERSION = 1
# Bytes hashed at each end of a data shard: cheap on a 100M-token (200 MB) shard, and a
# re-tokenized, re-ordered or truncated shard differs in its size or at one of its ends.
SHARD_EDGE_BYTES = 1 << 20
SHARD_SPLITS = ("train", "val")
# The architecture fields of a model config (the ones that decide parameter shapes).
ARCHITECTURE_KEYS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")

# Scalars whose change changes the training math; compared one by one.
MATH_SCALARS = ("total_batch_size", "seq_len", "max_lr", "warmup_steps", "weight_decay", "seed", "dropout")
# Scalars that may change between launches at an equal total batch: noted, never refused.
ALLOWED_SCALARS = ("micro_batch_size", "world_size")

LrSchedule = Callable[[int, float, int, int], float]  # (step, max_lr, warmup_steps, max_steps) -> lr


@dataclass(frozen=True)
class RunIdentity:
    """The resolved configuration of one run. ``None`` means "not recorded" (older checkpoints)."""

    identity_version: int | None = None
    model: str | None = None  # preset name, e.g. "gpt2" or "tiny"
    model_config: dict[str, int] | None = None  # ARCHITECTURE_KEYS
    total_batch_size: int | None = None
    micro_batch_size: int | None = None
    seq_len: int | None = None
    max_steps: int | None = None
    warmup_steps: int | None = None
    max_lr: float | None = None
    weight_decay: float | None = None
    seed: int | None = None
    dropout: float | None = None
    world_size: int | None = None
    data: dict[str, Any] | None = None  # fingerprint_data()
    pretrained: dict[str, Any] | None = None  # fingerprint_checkpoint_file() + step, or None
    settings: dict[str, Any] = field(default_factory=dict)  # intervals, keep-last-N, device: no math
    argv: list[str] = field(default_factory=list)  # the worker's command line, for people

    @property
    def is_legacy(self) -> bool:
        """Recorded by a version that knew only the training scalars (no data, no settings)."""
        return self.identity_version is None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``run_identity.json``)."""
        return asdict(self)

    def to_train_config(self) -> dict[str, Any]:
        """The checkpoint's ``train_config`` (``weights_only``-safe): everything but ``argv``.

        The command line names the run directory and says ``--auto_resume`` or not; two runs of the
        same training must write bitwise-equal checkpoints, so it stays in ``run_identity.json``.
        """
        return {k: v for k, v in asdict(self).items() if k != "argv"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunIdentity:
        """Tolerant reader: unknown keys are ignored; missing ones, and values of the wrong type
        (a hand-edited file, a foreign checkpoint), read as "not recorded"."""
        if not isinstance(data, Mapping):
            return cls()
        values = {}
        for f in fields(cls):
            value = data.get(f.name)
            if value is not None and _type_fits(f.name, value):
                values[f.name] = dict(value) if isinstance(value, Mapping) else value
        return cls(**values)

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> RunIdentity:
        """The identity a checkpoint dict records.

        Checkpoints written before identities existed carry only the training scalars in
        ``train_config``; their model architecture and dropout are read from ``config``.
        """
        identity = cls.from_dict(checkpoint.get("train_config"))
        model_config = checkpoint.get("config")
        if isinstance(model_config, Mapping):
            if identity.model_config is None:
                arch = {k: model_config[k] for k in ARCHITECTURE_KEYS if k in model_config}
                identity = _replace(identity, model_config=arch or None)
            if identity.dropout is None and "dropout" in model_config:
                identity = _replace(identity, dropout=model_config["dropout"])
        return identity


@dataclass(frozen=True)
class IdentityFile:
    """``run_identity.json`` as read: the identity, or why a file that exists cannot be used.

    A damaged file is never silently trusted nor silently kept: the worker rebuilds it from the
    checkpoint it resumes (whose ``train_config`` carries the identity) or refuses to start."""

    identity: RunIdentity | None
    unreadable: str | None = None  # "not JSON", "not a JSON object", "records no identity"


def read_identity_file(path: str | Path) -> IdentityFile:
    """Read ``run_identity.json``; absent is ``IdentityFile(None)``. Never raises."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return IdentityFile(None)
    except (OSError, UnicodeDecodeError) as exc:
        return IdentityFile(None, str(getattr(exc, "strerror", None) or exc))
    try:
        data = json.loads(text)
    except ValueError:
        return IdentityFile(None, "not JSON")
    if not isinstance(data, dict):
        return IdentityFile(None, "not a JSON object")
    identity = RunIdentity.from_dict(data)
    if identity == RunIdentity(argv=identity.argv):  # nothing of the training recorded
        return IdentityFile(None, "records no identity")
    return IdentityFile(identity)


_NUMBER_FIELDS = frozenset({"total_batch_size", "micro_batch_size", "seq_len", "max_steps", "warmup_steps",
                            "max_lr", "weight_decay", "seed", "dropout", "world_size", "identity_version"})
_MAPPING_FIELDS = frozenset({"model_config", "data", "pretrained", "settings"})


def _type_fits(name: str, value: Any) -> bool:
    if name in _NUMBER_FIELDS:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in _MAPPING_FIELDS:
        return isinstance(value, Mapping)
    if name == "argv":
        return isinstance(value, list)
    return isinstance(value, str)


def _replace(identity: RunIdentity, **changes: Any) -> RunIdentity:
    return RunIdentity(**{**identity.to_dict(), **changes})


# ----------------------------------------------------------------------------- fingerprints


def fingerprint_data(data_dir: str | Path) -> dict[str, Any]:
    """Names, sizes and a hash of the first and last ``SHARD_EDGE_BYTES`` of every shard.

    Shards are build-nanogpt's ``*_train_*.npy`` / ``*_val_*.npy`` files (a single file, e.g. a
    fine-tuning jsonl, is summarised the same way). ``digest`` summarises
    the contents (not the directory path, so a moved copy of the same data compares equal).
    """
    root = Path(data_dir).resolve()
    if root.is_file():  # one data file (fine-tuning's jsonl): the same summary of that file
        size = root.stat().st_size
        entry = {"file": [{"name": root.name, "bytes": size, "edges_sha256": _edges_sha256(root, size)}]}
        return {"path": str(root), "shards": entry, "digest": _digest(entry)}
    shards: dict[str, list[dict[str, Any]]] = {}
    for split in SHARD_SPLITS:
        entries = []
        for path in sorted(root.glob(f"*_{split}_*.npy")):
            size = path.stat().st_size
            entries.append({"name": path.name, "bytes": size, "edges_sha256": _edges_sha256(path, size)})
        shards[split] = entries
    return {"path": str(root), "shards": shards, "digest": _digest(shards)}


def fingerprint_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A content hash of a checkpoint file from its zip directory (every member's CRC-32 and size).

    torch.save files are zip archives whose central directory already holds a CRC-32 of each
    member, so this reads a few kB, not the file. A file that is not a zip is hashed at its ends.
    A Hugging Face model (a directory, or a safetensors file) has no CRCs: its header, config and
    sampled tensor bytes are hashed instead (``shared.hf_files.fingerprint_hf_source``).
    """
    if is_hf_source(path):
        return fingerprint_hf_source(path)
    path = Path(path).resolve()
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = sorted((info.filename, info.CRC, info.file_size) for info in archive.infolist())
        content = _digest(members)
    except (zipfile.BadZipFile, OSError, ValueError):
        content = _edges_sha256(path, size)[:16]
    return {"path": str(path), "bytes": size, "content_digest": content}


def _edges_sha256(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= 2 * SHARD_EDGE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(SHARD_EDGE_BYTES))
            handle.seek(size - SHARD_EDGE_BYTES)
            digest.update(handle.read(SHARD_EDGE_BYTES))
    return digest.hexdigest()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Difference:
    """One setting that differs between the recorded run and this launch."""

    key: str
    before: str
    after: str
    changes_math: bool
    note: str | None = None  # what the change means, e.g. the LR-schedule change of an extension
    overridable: bool = True  # False: no override can make the checkpoint fit (other shapes)

    def line(self) -> str:
        """``max_lr: 0.0006 -> 0.5`` (plus the note in parentheses)."""
        text = f"{self.key}: {self.before} -> {self.after}"
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True)
class IdentityDiff:
    differences: tuple[Difference, ...] = ()
    notes: tuple[str, ...] = ()  # what could not be compared, and why

    @property
    def math_changes(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.changes_math)

    @property
    def allowed_changes(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if not d.changes_math)

    @property
    def changes_math(self) -> bool:
        return bool(self.math_changes)

    @property
    def overridable(self) -> bool:
        return all(d.overridable for d in self.math_changes)

    def lines(self) -> list[str]:
        """Every difference, math-changing first, one per line."""
        return [d.line() for d in (*self.math_changes, *self.allowed_changes)]


def compare(
    recorded: RunIdentity,
    current: RunIdentity,
    *,
    resumed_step: int | None = None,
    lr_schedule: LrSchedule | None = None,
) -> IdentityDiff:
    """Every difference between ``recorded`` and ``current``, classified.

    Fields ``recorded`` does not hold are not compared; they are named once in ``notes``.
    ``lr_schedule`` (with ``resumed_step``) lets a longer ``max_steps`` say how the learning rate
    of the next step changes; the worker passes its own schedule function.
    """
    differences: list[Difference] = []
    unrecorded: list[str] = []

    model_difference = _compare_model(recorded, current)
    if model_difference is not None:
        differences.append(model_difference)
    elif recorded.model_config is None:
        unrecorded.append("model")

    math_differences, math_unrecorded = _compare_math_scalars(recorded, current)
    differences.extend(math_differences)
    unrecorded.extend(math_unrecorded)

    if recorded.max_steps is None:
        unrecorded.append("max_steps")
    elif current.max_steps is not None and recorded.max_steps != current.max_steps:
        differences.append(_max_steps_difference(recorded, current, resumed_step, lr_schedule))

    differences.extend(_compare_allowed_scalars(recorded, current))

    if recorded.is_legacy:
        unrecorded.extend(["data", "pretrained"])
    else:
        differences.extend(_compare_data(recorded.data, current.data))
        differences.extend(_compare_pretrained(recorded.pretrained, current.pretrained))
        differences.extend(_compare_settings(recorded, current))

    notes = ()
    if unrecorded:
        notes = (f"not recorded by the run (written by an older version), so not compared: {', '.join(unrecorded)}",)
    return IdentityDiff(tuple(differences), notes)


def _compare_math_scalars(recorded: RunIdentity, current: RunIdentity) -> tuple[list[Difference], list[str]]:
    """The changed math scalars (each changes the math), and those ``recorded`` does not hold."""
    differences: list[Difference] = []
    unrecorded: list[str] = []
    for key in MATH_SCALARS:
        before, after = getattr(recorded, key), getattr(current, key)
        if before is None:
            unrecorded.append(key)
        elif not _same(before, after):
            differences.append(Difference(key, _fmt(before), _fmt(after), changes_math=True))
    return differences, unrecorded


def _compare_allowed_scalars(recorded: RunIdentity, current: RunIdentity) -> list[Difference]:
    """The changed batch-split scalars: allowed, since the total batch (tokens per step) is the same."""
    differences = []
    for key in ALLOWED_SCALARS:
        before, after = getattr(recorded, key), getattr(current, key)
        if before is not None and not _same(before, after):
            differences.append(Difference(key, _fmt(before), _fmt(after), changes_math=False,
                                          note="same total batch: the same tokens per step"))
    return differences


def _compare_settings(recorded: RunIdentity, current: RunIdentity) -> list[Difference]:
    """The changed free-form settings (neither side's keys missed), in key order; none changes the math."""
    differences = []
    for key in sorted(set(recorded.settings) | set(current.settings)):
        before, after = recorded.settings.get(key), current.settings.get(key)
        if not _same(before, after):
            differences.append(Difference(key, _fmt(before), _fmt(after), changes_math=False))
    return differences


def _compare_model(recorded: RunIdentity, current: RunIdentity) -> Difference | None:
    before, after = recorded.model_config, current.model_config
    if before is None or after is None:
        return None
    changed = [k for k in ARCHITECTURE_KEYS if before.get(k) != after.get(k)]
    if changed:
        def describe(name: str | None, config: Mapping[str, Any]) -> str:
            shape = ", ".join(f"{k}={config.get(k)}" for k in changed)
            return f"{name} ({shape})" if name else shape

        return Difference("model", describe(recorded.model, before), describe(current.model, after),
                          changes_math=True, overridable=False,
                          note="other parameter shapes: the checkpoint's weights cannot be loaded")
    if recorded.model is not None and recorded.model != current.model:
        return Difference("model", str(recorded.model), str(current.model), changes_math=False,
                          note="same architecture")
    return None


def _max_steps_difference(recorded: RunIdentity, current: RunIdentity, resumed_step: int | None,
                          lr_schedule: LrSchedule | None) -> Difference:
    before, after = int(recorded.max_steps), int(current.max_steps)  # type: ignore[arg-type]
    if after < before:
        return Difference("max_steps", str(before), str(after), changes_math=True,
                          note="a shorter run decays the learning rate sooner")
    note = "a longer run: allowed"
    old_peak = recorded.max_lr if recorded.max_lr is not None else current.max_lr
    old_warmup = recorded.warmup_steps if recorded.warmup_steps is not None else current.warmup_steps
    schedule_known = None not in (current.max_lr, current.warmup_steps, old_peak, old_warmup)
    if lr_schedule is not None and isinstance(resumed_step, int) and schedule_known:
        step = resumed_step + 1
        old_lr = lr_schedule(step, old_peak, old_warmup, before)  # type: ignore[arg-type]
        new_lr = lr_schedule(step, current.max_lr, current.warmup_steps, after)  # type: ignore[arg-type]
        note += f"; the LR schedule now decays over {after} steps: lr at step {step} {old_lr:.4g} -> {new_lr:.4g}"
    else:
        note += f"; the LR schedule now decays over {after} steps instead of {before}"
    return Difference("max_steps", str(before), str(after), changes_math=False, note=note)


def _compare_data(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[Difference]:
    if before is None and after is None:
        return []
    if before is None or after is None or before.get("digest") != after.get("digest"):
        return [Difference("data", _describe_data(before), _describe_data(after), changes_math=True,
                           note=_first_shard_difference(before, after))]
    if before.get("path") != after.get("path"):
        return [Difference("data directory", str(before.get("path")), str(after.get("path")),
                           changes_math=False, note="same shards, same contents")]
    return []


def _describe_data(fingerprint: Mapping[str, Any] | None) -> str:
    if fingerprint is None:
        return "none"
    shards = fingerprint.get("shards") or {}
    counts = ", ".join(f"{len(shards.get(split) or [])} {split}" for split in SHARD_SPLITS)
    return f"{fingerprint.get('path')} ({counts} shards, fingerprint {fingerprint.get('digest')})"


def _first_shard_difference(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str | None:
    if before is None or after is None:
        return None
    for split in SHARD_SPLITS:
        old = {s["name"]: s for s in (before.get("shards") or {}).get(split) or []}
        new = {s["name"]: s for s in (after.get("shards") or {}).get(split) or []}
        if set(old) != set(new):
            gone, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
            parts = ([f"gone: {', '.join(gone[:3])}"] if gone else []) + ([f"new: {', '.join(added[:3])}"] if added else [])
            return f"{split} shards differ; {'; '.join(parts)}"
        for name in sorted(old):
            if old[name].get("bytes") != new[name].get("bytes"):
                return f"{name}: {old[name].get('bytes'):,} -> {new[name].get('bytes'):,} bytes"
            if old[name].get("edges_sha256") != new[name].get("edges_sha256"):
                return f"{name}: same size, other contents"
    return None


def _compare_pretrained(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[Difference]:
    def describe(info: Mapping[str, Any] | None) -> str:
        if info is None:
            return "none"
        return f"{info.get('path')} (step {info.get('step')}, content {info.get('content_digest')})"

    if before is None and after is None:
        return []
    if before is None or after is None or before.get("content_digest") != after.get("content_digest"):
        return [Difference("pretrained_checkpoint", describe(before), describe(after), changes_math=True)]
    if before.get("path") != after.get("path"):
        return [Difference("pretrained_checkpoint", str(before.get("path")), str(after.get("path")),
                           changes_math=False, note="same contents")]
    return []


def _same(before: Any, after: Any) -> bool:
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and not isinstance(before, bool):
        return float(before) == float(after)
    return before == after


def _fmt(value: Any) -> str:
    """``0.0006`` for 6e-4 (repr round-trips), ``none`` for None, plain text otherwise."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    return str(value)
