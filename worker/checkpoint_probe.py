"""Load-probe of checkpoints, meant to run in a throw-away child process.

    python -m worker.checkpoint_probe PATH [--deep] [--size-bytes N] [--generic]   one file, one verdict
    python -m worker.checkpoint_probe --serve [--generic]                          many files, one import
    ... --generic --user-probe MODULE:FUNCTION [--user-probe-path DIR]           + the user's restore

Why a child process: loading parses an untrusted pickle and memory-maps tensor bytes. A damaged
file can make it raise, hang, or (in native code) crash the interpreter. The caller
(``supervisor.checkpoints.checkpoint_validation``) runs this module with a timeout so that none of those can
take the supervisor or ``gpt2sup verify`` down with it.

Contract with the caller: exactly ONE JSON object on the last line of stdout, exit status 0,
whenever a verdict was reached — including "this file is bad":

    {"ok": bool, "reason": str | null, "step": int | null, "config": dict | null,
     "format_version": int | null, "has_optimizer_state": bool | null, "deep": bool,
     "source_format": str | null, "import_torch_seconds": float,
     "unsupported_format_version": int | null, "inconclusive": bool,
     "checks": [[name, passed, detail, seconds], ...]}

``unsupported_format_version`` is set (with ``ok`` false) for a file whose ``format_version`` is
newer than this install reads: checked right after the load, before any other check, and not a
verdict of damage (the caller reports it as UNSUPPORTED and never quarantines the file).

``inconclusive`` is true (with ``ok`` false) only in ``--generic`` mode, for a file that cannot be
judged without running code it names (below): not a verdict of damage. It is false otherwise.

``--serve`` answers many files with one ``import torch``: it first prints
``{"ready": true, "import_torch_seconds": s}``, then reads one JSON request per stdin line
(``{"path": str, "deep": bool, "size_bytes": int | null}``, optionally ``"generic": true``) and
prints one verdict line (above) per request, until stdin closes. The caller times each request on
its own. ``--serve --generic`` probes every request in generic mode.

Exit status 3 means the probe could not judge any file (torch or the worker failed to import);
the caller must not blame the checkpoint for that. Anything else (a signal, another status, no
JSON) is the loader dying on the file being probed.

Loading is ``shared.checkpoint_loading.load_checkpoint(path, mmap=True)``: ``weights_only=True``
with a stand-in allowlist, so the build-nanogpt guide's own files load, a file whose pickle would
call ``os.system`` is refused before anything runs, and ``mmap`` maps tensor bytes instead of
reading them. After the structure checks, ``restore`` runs the worker's own resume code,
``worker.checkpointing.train_state.restore_full_state``, on the loaded dict: the model built from the file's
config (on the ``meta`` device: every key and shape is checked as on CPU, no memory is spent on
weights), AdamW built as the worker builds it, a loader stand-in whose ``load_state_dict`` runs
``worker.data.shards.validate_loader_state``, and every RNG state restored. So "verify OK" means "this
file resumes". ``--deep`` then touches every tensor (finite values, optimizer moments shaped
like their parameters), which does read the whole file.

``--generic`` probes a checkpoint in a format of its own (a user's training script's, not
gpt2sup's): nothing about gpt2sup's format or GPT-2 is assumed; no format_version, keys, shapes,
size floor or restore. Its checks, in the same ``checks`` list:

- ``load``: the same safe load. A file whose pickle names a class we never load (refused) is not
  damage: ``ok`` false, ``inconclusive`` true, reason "cannot judge without loading code the file
  names: ...". Any other load error is damage (``ok`` false).
- ``step``: when the file is a dict with an int ``step`` and its name is ``model_N.pt``, the two
  must agree; otherwise there is nothing to compare and the check passes.
- ``tensors``: counts the tensors anywhere in the loaded object (touches no tensor bytes). With
  ``--deep``, every floating tensor under the top-level ``model`` key (or, for a flat mapping of
  tensors such as a bare state_dict, every one of them) must be finite.

- ``user-probe`` (``--user-probe MODULE:FUNCTION``, ``gpt2sup run --probe``): last, the user's
  own restore without training, ``FUNCTION(path)``, imported once per child from
  ``--user-probe-path`` first. It raises: the file is invalid, with the exception as the reason.
  It cannot be imported, or fails in its own code (ImportError, NameError, AttributeError,
  SyntaxError, TypeError): inconclusive, never a verdict on the file.

A generic verdict reports ``step`` (the dict's int ``step``, if any), ``config`` (the dict's
``config``, if it is a dict after loading, e.g. a pickled ``GPTConfig`` dataclass) and
``source_format`` ``"generic"``; ``format_version``, ``has_optimizer_state`` and
``unsupported_format_version`` stay null.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.checkpoint_format import (
    MODEL_CONFIG_KEYS,
    REQUIRED_KEYS,
    SUPPORTED_FORMAT_VERSIONS,
    expected_model_shapes,
    minimum_checkpoint_bytes,
    newer_format_version,
    unsupported_format_message,
)
from shared.exit_codes import ProbeExit
from shared.run_dir import naming_of, step_from_checkpoint_name
from worker.runtime.compiler_import import skip_compiler_import_for_optimizers

TIED_NAME = "lm_head.weight"
TIED_TO = "transformer.wte.weight"
_MAX_NAMES_SHOWN = 3


class CheckFailed(Exception):
    """One check failed; the message is the one human line the user sees."""


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    return shown + (f" and {len(names) - _MAX_NAMES_SHOWN} more" if len(names) > _MAX_NAMES_SHOWN else "")


# --- the checks, in order ------------------------------------------------------------------------

def check_container(checkpoint: Any) -> str:
    if not isinstance(checkpoint, dict):
        raise CheckFailed(f"not a checkpoint: the file holds a {type(checkpoint).__name__}, not a dict")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckFailed(f"missing required keys: {_few(missing)}")
    return f"{len(REQUIRED_KEYS)} required keys present"


def check_format_version(checkpoint: dict[str, Any]) -> str:
    version = checkpoint["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckFailed(f"format_version is {version!r}, not an int")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        readable = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise CheckFailed(f"format_version {version} is not one this gpt2sup reads ({readable})")
    return f"format_version {version}"


def check_step(checkpoint: dict[str, Any], path: Path) -> str:
    step = checkpoint["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckFailed(f"step is {step!r}, not a non-negative int")
    name_step = step_from_checkpoint_name(path.name)
    if name_step is not None and name_step != step:
        raise CheckFailed(f"step {step} inside the file disagrees with its name {path.name} (step {name_step})")
    return f"step {step}" + (" matches the file name" if name_step is not None else "")


def check_config(checkpoint: dict[str, Any]) -> str:
    config = checkpoint["config"]
    if not isinstance(config, dict):
        raise CheckFailed(f"config is a {type(config).__name__}, not a plain dict")
    missing = [key for key in MODEL_CONFIG_KEYS if key not in config]
    if missing:
        raise CheckFailed(f"config lacks {_few(missing)}")
    bad = [f"{k}={config[k]!r}" for k in MODEL_CONFIG_KEYS
           if not isinstance(config[k], int) or isinstance(config[k], bool) or config[k] <= 0]
    if bad:
        raise CheckFailed(f"config values must be positive ints: {_few(bad)}")
    if config["n_embd"] % config["n_head"]:
        raise CheckFailed(f"config n_embd {config['n_embd']} is not divisible by n_head {config['n_head']}")
    return ", ".join(f"{k} {config[k]}" for k in MODEL_CONFIG_KEYS)


def check_model_shapes(checkpoint: dict[str, Any], torch: Any) -> str:
    model = checkpoint["model"]
    if not isinstance(model, dict):
        raise CheckFailed(f"model is a {type(model).__name__}, not a state_dict")
    expected = expected_model_shapes(checkpoint["config"])
    missing = [name for name in expected if name not in model]
    unexpected = [name for name in model if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise CheckFailed("model state_dict does not match its config: " + "; ".join(parts))
    for name, shape in expected.items():
        tensor = model[name]
        if not isinstance(tensor, torch.Tensor):
            raise CheckFailed(f"model entry {name} is a {type(tensor).__name__}, not a tensor")
        if _shape(tensor) != shape:
            raise CheckFailed(
                f"{name} has shape {_fmt_shape(_shape(tensor))} but the config implies {_fmt_shape(shape)}"
            )
    return f"{len(expected)} tensors shaped as the config says"


def optimizer_state_present(checkpoint: dict[str, Any]) -> bool:
    optimizer = checkpoint["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list):
        raise CheckFailed("optimizer is not an optimizer state_dict (needs 'state' and 'param_groups')")
    return len(optimizer["state"]) > 0


def check_optimizer_container(checkpoint: dict[str, Any]) -> str:
    if optimizer_state_present(checkpoint):
        return f"optimizer state for {len(checkpoint['optimizer']['state'])} parameters"
    return "optimizer never stepped (no moments saved)"


def check_size_floor(checkpoint: dict[str, Any], size_bytes: int, has_optimizer_state: bool) -> str:
    floor = minimum_checkpoint_bytes(checkpoint["config"], has_optimizer_state=has_optimizer_state)
    what = "weights + AdamW moments" if has_optimizer_state else "weights"
    if size_bytes < floor:
        raise CheckFailed(
            f"file is {size_bytes:,} bytes but its config needs at least {floor:,} ({what} in fp32)"
        )
    return f"{size_bytes:,} bytes >= floor {floor:,} ({what})"


def check_other_state(checkpoint: dict[str, Any], torch: Any) -> str:
    loader = checkpoint["train_loader_state"]
    if not isinstance(loader, dict):
        raise CheckFailed(f"train_loader_state is a {type(loader).__name__}, not a dict")
    rng = checkpoint["rng_state"]
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise CheckFailed("rng_state is not a uint8 tensor (torch.get_rng_state())")
    val_loss = checkpoint["val_loss"]
    if val_loss is not None and not isinstance(val_loss, (int, float)):
        raise CheckFailed(f"val_loss is {type(val_loss).__name__}, not a number or None")
    return "loader and RNG state well-formed"


class _LoaderStandIn:
    """The data loader as ``restore_full_state`` sees it, without data: it only validates."""

    def __init__(self) -> None:
        self.state: Any = None

    def load_state_dict(self, state: Any) -> None:
        from worker.data.shards import validate_loader_state

        validate_loader_state(state)
        self.state = state


def _model_without_weights(config: dict[str, Any], torch: Any) -> Any:
    """The worker's GPT for ``config`` on the meta device, its random initialisation skipped.

    Initial values would be overwritten by the checkpoint anyway, and ``normal_`` on meta tensors
    imports torch's compiler stack (9 s here) while plain construction costs nothing; so a
    torch-function mode turns the in-place random initialisers into no-ops while it is built.
    """
    from torch.overrides import TorchFunctionMode

    from worker.model import GPT, GPTConfig

    class _SkipRandomInit(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if getattr(func, "__name__", "") in ("normal_", "uniform_"):
                return args[0] if args else (kwargs or {}).get("tensor")  # init.* pass it by keyword
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), _SkipRandomInit():
        return GPT(GPTConfig.from_dict(config))


def check_restore(checkpoint: dict[str, Any], torch: Any) -> str:
    """The worker's own resume code on this dict (module docstring): what a resume would do."""
    from worker.checkpointing.train_state import restore_full_state

    try:
        with warnings.catch_warnings():
            # Copying into meta parameters is a no-op by design here (shapes are still checked).
            warnings.filterwarnings("ignore", message=".*meta parameter.*")
            model = _model_without_weights(checkpoint["config"], torch)
            optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, device_type="cpu")
            restore_full_state(checkpoint, model, optimizer, _LoaderStandIn(), device_type="cpu")
    except Exception as error:  # noqa: BLE001  any failure here is what the worker would hit on resume
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = "; ".join(lines[:2])[:300] or type(error).__name__
        raise CheckFailed(f"the worker's restore fails on this file: {type(error).__name__}: {detail}") from None
    return "model, optimizer, loader state and every RNG state restore as on resume"


# --- deep checks ---------------------------------------------------------------------------------

def _nonfinite(tensor: Any, torch: Any) -> int:
    """Number of NaN/inf elements. Fast path: a NaN or inf anywhere makes the sum non-finite,
    so a finite sum proves every element finite (one cheap reduction, no bool tensor); only a
    non-finite sum (a bad value, or a harmless overflow of huge finite values) pays for the
    exact element-wise count."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    if bool(torch.isfinite(tensor.sum()).all()):
        return 0
    return int((~torch.isfinite(tensor)).sum().item())


def check_model_finite(checkpoint: dict[str, Any], torch: Any) -> str:
    model = checkpoint["model"]
    for name, tensor in model.items():
        bad = _nonfinite(tensor, torch)
        if bad:
            raise CheckFailed(f"model tensor {name} holds {bad} non-finite values (NaN/inf)")
    if not torch.equal(model[TIED_NAME], model[TIED_TO]):
        raise CheckFailed(f"{TIED_NAME} differs from {TIED_TO}, but GPT-2 ties them")
    return f"{len(model)} model tensors finite, head tied to wte"


def optimizer_index_orders(
    named_params: list[tuple[str, tuple[int, ...]]], group_sizes: list[int]
) -> list[tuple[str, list[str]]]:
    """Candidate meanings of the optimizer's integer parameter indices.

    ``optimizer.state_dict()`` numbers parameters 0, 1, 2, ... by walking ``param_groups`` in
    order and each group's params in order; it stores no names. The parameters themselves are
    ``model.named_parameters()`` = the state_dict order minus ``lm_head.weight`` (tied to wte,
    so named_parameters yields it once, under ``transformer.wte.weight``). Which parameter sits
    in which group is the trainer's choice, so we try the groupings a GPT-2 trainer uses and
    accept the checkpoint if one of them fits:

    - ``nanogpt``: build-nanogpt's ``configure_optimizers``: group 0 = params with dim >= 2
      (weight decay), group 1 = dim < 2 (none), each in named_parameters order;
    - ``single``: all params in named_parameters order (one group, or groups that slice it).

    Returns (grouping name, list of parameter names indexed by optimizer index) for each
    grouping whose group sizes are consistent.
    """
    names = [name for name, _ in named_params]
    candidates: list[tuple[str, list[str]]] = []
    decay = [name for name, shape in named_params if len(shape) >= 2]
    no_decay = [name for name, shape in named_params if len(shape) < 2]
    if group_sizes == [len(decay), len(no_decay)]:
        candidates.append(("nanogpt", decay + no_decay))
    if sum(group_sizes) == len(names):
        candidates.append(("single", names))
    return candidates


def check_optimizer_shapes(checkpoint: dict[str, Any], torch: Any) -> str:
    optimizer = checkpoint["optimizer"]
    model = checkpoint["model"]
    named_params = [(name, _shape(t)) for name, t in model.items() if name != TIED_NAME]
    shapes = dict(named_params)
    try:
        group_indices = [list(group["params"]) for group in optimizer["param_groups"]]
    except (KeyError, TypeError):
        raise CheckFailed("optimizer param_groups lack their 'params' index lists") from None
    flat = [index for indices in group_indices for index in indices]
    if flat != list(range(len(flat))):
        raise CheckFailed("optimizer parameter indices are not 0..N-1 in group order")
    if len(flat) != len(named_params):
        raise CheckFailed(f"optimizer holds {len(flat)} parameters, the model has {len(named_params)}")
    state = optimizer["state"]
    first_problem = None
    for grouping, order in optimizer_index_orders(named_params, [len(g) for g in group_indices]):
        problem = None
        for index, moments in state.items():
            if not isinstance(index, int) or not 0 <= index < len(order):
                problem = f"optimizer state has an entry for unknown parameter index {index!r}"
                break
            name = order[index]
            for key in ("exp_avg", "exp_avg_sq"):
                value = moments.get(key) if isinstance(moments, dict) else None
                if not isinstance(value, torch.Tensor):
                    problem = f"optimizer state of {name} (index {index}) has no {key} tensor"
                    break
                if _shape(value) != shapes[name]:
                    problem = (f"optimizer {key} of {name} (index {index}) has shape "
                               f"{_fmt_shape(_shape(value))}, the parameter {_fmt_shape(shapes[name])}")
                    break
            if problem:
                break
        if problem is None:
            return f"{len(state)} AdamW states shaped like their parameters ({grouping} grouping)"
        first_problem = first_problem or problem
    raise CheckFailed(first_problem or "optimizer groups do not match any known parameter grouping")


def check_optimizer_finite(checkpoint: dict[str, Any], torch: Any) -> str:
    count = 0
    for index, moments in checkpoint["optimizer"]["state"].items():
        for key, value in moments.items():
            if isinstance(value, torch.Tensor):
                count += 1
                bad = _nonfinite(value, torch)
                if bad:
                    raise CheckFailed(f"optimizer {key} of parameter index {index} holds {bad} non-finite values")
            elif isinstance(value, float) and not math.isfinite(value):
                raise CheckFailed(f"optimizer {key} of parameter index {index} is {value}")
    return f"{count} optimizer tensors finite"


# --- generic mode: a checkpoint in a format of its own -------------------------------------------

GENERIC_FORMAT = "generic"  # ``source_format`` of every generic verdict
CANNOT_JUDGE_PREFIX = "cannot judge without loading code the file names: "


def _walk_tensors(value: Any, torch: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, tensor) for every tensor in dicts, lists and tuples, nested, in order.

    Iterative, and each container is visited once: a deep or self-referencing pickle cannot
    exhaust the recursion limit. Reads no tensor bytes.
    """
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [(prefix, value)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield key, item
            continue
        if isinstance(item, dict):
            children = [(str(k), v) for k, v in item.items()]
        elif isinstance(item, (list, tuple)):
            children = [(str(i), v) for i, v in enumerate(item)]
        else:
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        stack.extend(reversed([(f"{key}.{k}" if key else k, v) for k, v in children]))


def check_generic_step(checkpoint: Any, path: Path) -> str:
    step = checkpoint.get("step") if isinstance(checkpoint, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        return "no step to compare (no int 'step' in the file)"
    naming = naming_of(path.parent)
    if not naming.is_default:
        # A script's own naming (--checkpoint-glob): its number orders the files, but nothing says
        # it is the step the file records (an epoch, a sample count): no verdict from comparing.
        return f"step {step}; its files are named {naming.pattern}: the name's number is not compared"
    name_step = step_from_checkpoint_name(path.name)
    if name_step is None:
        return f"step {step}; no step to compare in the file name {path.name}"
    if name_step != step:
        raise CheckFailed(f"step {step} inside the file disagrees with its name {path.name} (step {name_step})")
    return f"step {step} matches the file name"


def _finite_scope(checkpoint: Any, torch: Any) -> tuple[str, Any] | None:
    """What ``--deep`` scans in generic mode: the top-level ``model`` entry, else the whole object
    when it is a flat mapping of tensors (a bare state_dict); None when neither."""
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        return "model", checkpoint["model"]
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return "", checkpoint
    return None


def check_generic_tensors(checkpoint: Any, torch: Any, deep: bool) -> str:
    count = sum(1 for _ in _walk_tensors(checkpoint, torch))
    found = f"{count} tensor{'' if count == 1 else 's'} in the file"
    if not deep:
        return found
    scope = _finite_scope(checkpoint, torch)
    if scope is None:
        return found + "; no 'model' entry or flat state_dict to check for finite values"
    prefix, value = scope
    scanned = 0
    for name, tensor in _walk_tensors(value, torch, prefix):
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        scanned += 1
        bad = _nonfinite(tensor, torch)
        if bad:
            raise CheckFailed(f"tensor {name} holds {bad} non-finite values (NaN/inf)")
    where = "under 'model'" if prefix else "of the state_dict"
    return found + f"; {scanned} floating tensor{'' if scanned == 1 else 's'} {where} finite"


def probe_generic(path: Path, *, deep: bool = False, user: UserProbe | None = None) -> dict[str, Any]:
    """Generic-mode verdict for ``path`` (module docstring, ``--generic``); ``user``: the run's
    ``--probe MODULE:FUNCTION``, run last, once the generic checks passed."""
    started = time.perf_counter()
    import torch  # inside, as in ``probe``

    from shared.checkpoint_loading import CheckpointLoadError, load_checkpoint

    verdict: dict[str, Any] = {
        "ok": False, "reason": None, "step": None, "config": None, "format_version": None,
        "has_optimizer_state": None, "deep": deep, "source_format": GENERIC_FORMAT,
        "unsupported_format_version": None, "inconclusive": False,
        "import_torch_seconds": round(time.perf_counter() - started, 4), "checks": [],
    }
    holder: dict[str, Any] = {}

    def load() -> str:
        try:
            holder["checkpoint"] = load_checkpoint(path, mmap=True)
        except CheckpointLoadError as error:
            if error.refused:  # it names code we never run: no evidence either way about the bytes
                verdict["inconclusive"] = True
                raise CheckFailed(CANNOT_JUDGE_PREFIX + str(error)) from None
            raise CheckFailed(str(error)) from None
        loaded = holder["checkpoint"]
        return f"loaded without running code (weights_only, mmap): a {type(loaded).__name__}"

    if not _run_check(verdict, "load", load):
        return verdict
    checkpoint = holder["checkpoint"]
    if isinstance(checkpoint, dict):
        step, config = checkpoint.get("step"), checkpoint.get("config")
        if isinstance(step, int) and not isinstance(step, bool):
            verdict["step"] = step
        if isinstance(config, dict):
            verdict["config"] = {str(k): v for k, v in config.items()
                                 if isinstance(v, (int, float, str, bool)) or v is None}
    steps: list[tuple[str, Callable[[], str]]] = [
        ("step", lambda: check_generic_step(checkpoint, path)),
        ("tensors", lambda: check_generic_tensors(checkpoint, torch, deep)),
    ]
    if user is not None:
        steps.append(("user-probe", lambda: user.check(path, verdict)))
    for name, check in steps:
        if not _run_check(verdict, name, check):
            return verdict
    verdict["ok"] = True
    return verdict


# Exceptions out of a user's probe that say its code is broken (a typo, a wrong signature, a
# missing import), not that the file is: the file is not judged (inconclusive), never quarantined.
_PROBE_CODE_ERRORS = (ImportError, NameError, AttributeError, SyntaxError, TypeError)


class UserProbe:
    """``--probe MODULE:FUNCTION``: the user's own restore-without-training, ``FUNCTION(path)``.

    It returns (anything) when the file restores, raises when it does not: then the file is
    invalid, with the exception as the reason. Imported once per child, from ``search_path`` (the
    directory the run was started in) first. A probe that cannot be imported, or that fails with
    an error of its own code (``_PROBE_CODE_ERRORS``), leaves every file unjudged (inconclusive).
    """

    def __init__(self, spec: str, search_path: str | None = None) -> None:
        self.spec = spec
        self.function: Callable[[str], Any] | None = None
        self.import_error: str | None = None
        module_name, _, function_name = spec.partition(":")
        if search_path and search_path not in sys.path:
            sys.path.insert(0, search_path)
        try:
            module = importlib.import_module(module_name)
            self.function = getattr(module, function_name)
            if not callable(self.function):
                raise TypeError(f"{function_name} is not a function")
        except Exception as error:  # noqa: BLE001  whatever their module raises: not the file's fault
            self.function, self.import_error = None, f"{type(error).__name__}: {error}"

    def check(self, path: Path, verdict: dict[str, Any]) -> str:
        if self.function is None:
            verdict["inconclusive"] = True
            raise CheckFailed(f"{CANNOT_JUDGE_PREFIX}--probe {self.spec} could not be imported: {self.import_error}")
        try:
            self.function(str(path))
        except _PROBE_CODE_ERRORS as error:
            verdict["inconclusive"] = True
            raise CheckFailed(f"{CANNOT_JUDGE_PREFIX}--probe {self.spec} failed in its own code: "
                              f"{type(error).__name__}: {error}") from None
        except Exception as error:  # noqa: BLE001  the restore failed on this file: the file's verdict
            raise CheckFailed(f"--probe {self.spec} could not restore it: {type(error).__name__}: {error}") from None
        return f"--probe {self.spec} restored it"


# --- driver --------------------------------------------------------------------------------------

def _run_check(verdict: dict[str, Any], name: str, check: Callable[[], str]) -> bool:
    """Run one check, append ``[name, passed, detail, seconds]`` to the verdict; a failure's detail
    becomes the verdict's reason. Any other exception is the file's fault (it broke an assumption)."""
    t0 = time.perf_counter()
    try:
        detail, passed = check(), True
    except CheckFailed as failure:
        detail, passed = str(failure), False
    except Exception as error:  # noqa: BLE001  the file's contents broke an assumption: its fault
        detail, passed = f"unexpected structure in the file ({type(error).__name__}: {error})", False
    verdict["checks"].append([name, passed, detail, round(time.perf_counter() - t0, 4)])
    if not passed:
        verdict["reason"] = detail
    return passed


def _probe_steps(checkpoint: Any, path: Path, size_bytes: int, deep: bool,
                 torch: Any) -> list[tuple[str, Callable[[], str]]]:
    """The checks after a successful load, in order; ``deep`` adds the full-tensor scans."""
    steps: list[tuple[str, Callable[[], str]]] = [
        ("keys", lambda: check_container(checkpoint)),
        ("format_version", lambda: check_format_version(checkpoint)),
        ("step", lambda: check_step(checkpoint, path)),
        ("config", lambda: check_config(checkpoint)),
        ("shapes", lambda: check_model_shapes(checkpoint, torch)),
        ("optimizer", lambda: check_optimizer_container(checkpoint)),
        ("size-floor", lambda: check_size_floor(
            checkpoint, size_bytes, optimizer_state_present(checkpoint))),
        ("state", lambda: check_other_state(checkpoint, torch)),
        ("restore", lambda: check_restore(checkpoint, torch)),
    ]
    if deep:
        steps += [
            ("model-finite", lambda: check_model_finite(checkpoint, torch)),
            ("optimizer-shapes", lambda: check_optimizer_shapes(checkpoint, torch)),
            ("optimizer-finite", lambda: check_optimizer_finite(checkpoint, torch)),
        ]
    return steps


def _record_passed_check(verdict: dict[str, Any], name: str, checkpoint: Any) -> None:
    """What a passed check lets the verdict report: the format version, step, plain config, whether
    optimizer state is present."""
    if name == "keys":
        verdict["format_version"] = checkpoint["format_version"]
    elif name == "step":
        verdict["step"] = checkpoint["step"]
    elif name == "config":
        verdict["config"] = {k: v for k, v in checkpoint["config"].items()
                             if isinstance(v, (int, float, str, bool)) or v is None}
    elif name == "optimizer":
        verdict["has_optimizer_state"] = optimizer_state_present(checkpoint)


def probe(path: Path, *, deep: bool = False, size_bytes: int | None = None) -> dict[str, Any]:
    """Load ``path`` and run every check; return the verdict dict (see the module docstring)."""
    started = time.perf_counter()
    import torch  # imported inside: exit 3 (cannot judge) needs to tell "no torch" from "bad file"

    from shared.checkpoint_loading import CheckpointLoadError, load_checkpoint

    verdict: dict[str, Any] = {
        "ok": False, "reason": None, "step": None, "config": None, "format_version": None,
        "has_optimizer_state": None, "deep": deep, "source_format": None, "unsupported_format_version": None,
        "inconclusive": False, "import_torch_seconds": round(time.perf_counter() - started, 4), "checks": [],
    }
    if size_bytes is None:
        size_bytes = path.stat().st_size

    def run(name: str, check: Callable[[], str]) -> bool:
        return _run_check(verdict, name, check)

    holder: dict[str, Any] = {}

    def load() -> str:
        try:
            holder["checkpoint"] = load_checkpoint(path, mmap=True)
        except CheckpointLoadError as error:
            raise CheckFailed(str(error)) from None
        source = holder["checkpoint"].get("source_format") if isinstance(holder["checkpoint"], dict) else None
        verdict["source_format"] = source
        return "loaded without running code (weights_only, mmap)" + (
            f"; {source} format read through stand-ins" if source else "")

    if not run("load", load):
        return verdict
    checkpoint = holder["checkpoint"]
    newer = newer_format_version(checkpoint)
    if newer is not None:  # not damage: nothing else in a newer format is judged by this install's rules
        verdict["format_version"] = verdict["unsupported_format_version"] = newer
        run("format_version", lambda: _raise(CheckFailed(unsupported_format_message(path.name, newer))))
        return verdict
    for name, check in _probe_steps(checkpoint, path, size_bytes, deep, torch):
        if not run(name, check):
            return verdict
        _record_passed_check(verdict, name, checkpoint)
    verdict["ok"] = True
    return verdict


def _raise(error: Exception) -> str:
    raise error


def _import_for_probing() -> float:
    """Import torch and the worker's model/restore code once; seconds spent (exit 3 on failure).

    Then builds a one-parameter AdamW, so whatever the first optimizer of a process costs is paid
    while starting the child, not within the first file's timeout.
    """
    started = time.perf_counter()
    import torch


    skip_compiler_import_for_optimizers(torch)
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    return time.perf_counter() - started


def serve(requests: Any, out: Any, import_seconds: float, *, generic: bool = False,
          user: UserProbe | None = None) -> None:
    """The ``--serve`` loop: one verdict line per request line (module docstring). ``generic``
    probes every request in generic mode; a request's own ``"generic": true`` does it for one."""
    out.write(json.dumps({"ready": True, "import_torch_seconds": round(import_seconds, 4)}) + "\n")
    out.flush()
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        size = request.get("size_bytes")
        if generic or request.get("generic") is True:
            verdict = probe_generic(Path(request["path"]), deep=bool(request.get("deep")), user=user)
        else:
            verdict = probe(Path(request["path"]), deep=bool(request.get("deep")),
                            size_bytes=int(size) if size is not None else None)
        verdict["import_torch_seconds"] = round(import_seconds, 4)
        out.write(json.dumps(verdict) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.checkpoint_probe",
        description="Load checkpoints without running code from them and print JSON verdicts.",
    )
    parser.add_argument("path", type=Path, nargs="?")
    parser.add_argument("--deep", action="store_true", help="also check every tensor is finite and optimizer shapes")
    parser.add_argument("--size-bytes", type=int, default=None, help="file size the caller measured")
    parser.add_argument("--serve", action="store_true", help="read one JSON request per stdin line")
    parser.add_argument("--generic", action="store_true",
                        help="a checkpoint in a format of its own: load, step vs. name, tensors (no gpt2sup format checks)")
    parser.add_argument("--user-probe", metavar="MODULE:FUNCTION", default=None,
                        help="with --generic: also run FUNCTION(path), the user's restore without training")
    parser.add_argument("--user-probe-path", metavar="DIR", default=None,
                        help="where --user-probe's module is imported from first (the run's directory)")
    args = parser.parse_args(argv)
    if args.user_probe is not None and not args.generic:
        parser.error("--user-probe needs --generic")
    if (args.path is None) == (not args.serve):
        parser.error("give either PATH or --serve")

    # Keep stdout for the verdicts alone: anything torch or a warning prints goes to stderr.
    verdict_out = sys.stdout
    sys.stdout = sys.stderr
    try:
        try:
            import_seconds = _import_for_probing()
        except Exception as error:  # noqa: BLE001  any import failure means "cannot judge", exit 3
            print(f"cannot import torch or the worker: {type(error).__name__}: {error}", file=sys.stderr)
            return ProbeExit.CANNOT_JUDGE
        user = UserProbe(args.user_probe, args.user_probe_path) if args.user_probe else None
        if args.serve:
            serve(sys.stdin, verdict_out, import_seconds, generic=args.generic, user=user)
            return ProbeExit.VERDICT
        if args.generic:
            verdict = probe_generic(args.path, deep=args.deep, user=user)
        else:
            verdict = probe(args.path, deep=args.deep, size_bytes=args.size_bytes)
        verdict["import_torch_seconds"] = round(import_seconds, 4)
    finally:
        sys.stdout = verdict_out
    verdict_out.write(json.dumps(verdict) + "\n")
    verdict_out.flush()
    return ProbeExit.VERDICT


if __name__ == "__main__":
    # os._exit skips interpreter teardown: the mmap of a damaged file is never touched again.
    code = main()
    sys.stdout.flush()
    os._exit(code)
