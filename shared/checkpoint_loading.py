"""Load a checkpoint file without ever running code from it, in our format or build-nanogpt's.

One job: ``load_checkpoint(path) -> dict`` for every reader (the worker's resume and
``--pretrained_checkpoint``, the load-probe behind ``gpt2sup verify``, ``gpt2sup convert``).

Our own checkpoints hold only tensors, dicts, lists, strings and numbers, so
``torch.load(weights_only=True)`` reads them as they are. Checkpoints written by the
build-nanogpt trainer exactly as docs/checkpoints.md shows its dict also pickle three things
torch's safe unpickler refuses: the model config as a ``GPTConfig`` dataclass
(``"config": model.config``), numpy's RNG state (``np.random.get_state()``: a numpy array and a
dtype) and, harmlessly, Python's RNG tuple. We still load them with ``weights_only=True``, but
with an allowlist of *stand-ins*: small classes of ours registered under the pickled names
(``numpy.ndarray``, ``numpy.dtype``, ``numpy._core.multiarray._reconstruct``,
``__main__.GPTConfig``, ...). The file can only make those stand-ins record plain data; the
real numpy array is then built by us, from raw bytes, for numeric dtypes only. No function or
class from the file's pickle is ever called.

Before loading, the pickle's global names are listed (cheap: ``data.pkl`` only). A name that is
neither torch's nor on our allowlist refuses the file with one line naming what it asks for and
what to do; torch's own advice to switch safe loading off is never passed on.

The result is normalised to our format (docs/checkpoints.md): ``config`` a plain dict, the numpy RNG state
``[str, int64 tensor, int, int, float]``, the Python RNG state ``[int, list, float | None]``,
and, for a guide file, ``format_version`` added and ``source_format`` = ``"build-nanogpt"``.

torch and numpy are imported inside the functions: ``shared/`` stays light.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from shared.checkpoint_format import FORMAT_VERSION

GUIDE_FORMAT = "build-nanogpt"  # value of ``source_format`` in a dict normalised from build-nanogpt's format
# Pickled names a GPTConfig dataclass gets when the trainer ran as a script or as a module.
_CONFIG_NAME = re.compile(r"^(?:[A-Za-z_][\w]*\.)*GPTConfig$")
_NUMPY_MODULES = ("numpy._core.multiarray", "numpy.core.multiarray")  # numpy 2 / numpy 1 spellings
_MAX_NAMES_SHOWN = 4
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CheckpointLoadError(Exception):
    """The file cannot be loaded; the message is the one line a user sees.

    ``refused`` is True when the file asks for something we never load (its pickle names code, or
    a numpy array of a type gpt2sup does not rebuild, e.g. strings or objects): no evidence of
    damage. False when it is unreadable (cut short, not a torch.save file, damaged pickle).
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


# --- stand-ins: what the pickle may build instead of numpy objects and the config dataclass ------

class ConfigStandIn:
    """Receives a pickled config dataclass's fields; nothing else. Becomes a plain dict."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.fields: dict[str, Any] = dict(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) from dataclass(slots=True)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.fields = dict(state) if isinstance(state, dict) else {}


class DtypeStandIn:
    """``numpy.dtype('u4', False, True)`` + its BUILD state: remembers the type string only."""

    def __init__(self, spec: Any = None, *args: Any) -> None:
        self.spec = spec if isinstance(spec, str) else None
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str):
            self.byteorder = state[1]

    def real(self) -> Any:
        """The numpy dtype, for plain numeric types only (never ``object``: no pickled objects)."""
        import numpy as np

        if self.spec is None or not re.fullmatch(r"[biuf][1248]|f2|c8|c16", self.spec):
            raise CheckpointLoadError(f"the file holds a numpy array of type {self.spec!r}, which gpt2sup does not load",
                                      refused=True)  # our choice, not damage
        order = self.byteorder if self.byteorder in "<>" else "="
        return np.dtype(self.spec).newbyteorder(order)


class ArrayStandIn:
    """``numpy.ndarray`` rebuilt by pickle: keeps shape, dtype and raw bytes until ``real()``."""

    def __init__(self, *args: Any) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: DtypeStandIn | None = None
        self.fortran = False
        self.raw: Any = None

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw bytes)
        if isinstance(state, tuple) and len(state) == 5:
            _, self.shape, self.dtype, self.fortran, self.raw = state

    def real(self) -> Any:
        import numpy as np

        if not isinstance(self.dtype, DtypeStandIn) or not isinstance(self.raw, (bytes, bytearray)):
            raise CheckpointLoadError("the file holds a numpy array gpt2sup cannot rebuild from plain bytes", refused=True)
        dtype = self.dtype.real()
        shape = tuple(int(d) for d in self.shape)
        count = 1
        for dim in shape:
            count *= dim
        if count * dtype.itemsize != len(self.raw):
            raise CheckpointLoadError("a numpy array in the file holds fewer bytes than its shape needs")
        array = np.frombuffer(bytes(self.raw), dtype=dtype, count=count)
        return array.reshape(shape, order="F" if self.fortran else "C").copy()


def _reconstruct(subtype: Any = None, shape: Any = None, dtype: Any = None) -> ArrayStandIn:
    """Stand-in for ``numpy._core.multiarray._reconstruct``: an empty array to BUILD into."""
    return ArrayStandIn()


def _scalar(dtype: Any, raw: Any = None) -> Any:
    """Stand-in for ``numpy._core.multiarray.scalar`` (e.g. a ``np.float64`` val_loss)."""
    if not isinstance(dtype, DtypeStandIn) or not isinstance(raw, (bytes, bytearray)):
        raise CheckpointLoadError("the file holds a numpy scalar gpt2sup cannot rebuild from plain bytes", refused=True)
    import numpy as np

    return np.frombuffer(bytes(raw), dtype=dtype.real(), count=1)[0].item()


def _allowlist(config_names: list[str]) -> list[tuple[Any, str]]:
    allowed: list[tuple[Any, str]] = [(ArrayStandIn, "numpy.ndarray"), (DtypeStandIn, "numpy.dtype")]
    for module in _NUMPY_MODULES:
        allowed += [(_reconstruct, f"{module}._reconstruct"), (_scalar, f"{module}.scalar")]
    allowed += [(ConfigStandIn, name) for name in config_names]
    return allowed


# --- loading ---------------------------------------------------------------------------------------

def _describe_refusal(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_SHOWN]) + (f" and {len(names) - _MAX_NAMES_SHOWN} more" if len(names) > _MAX_NAMES_SHOWN else "")
    return (f"refused: the file's pickle asks for {shown}, which safe loading does not execute (no "
            "checkpoint needs it, and it could run code from the file); if you wrote this file, re-save it "
            "holding only tensors, dicts, lists, strings and numbers (see docs/checkpoints.md)")


def _clean(text: str) -> str:
    """One line of torch's error text: no colour codes, no advice to switch safe loading off."""
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and "weights_only" not in line and "trust" not in line]
    return (lines[0] if lines else "unreadable")[:300]


def _pickled_globals(path: Path, torch: Any) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as error:  # noqa: BLE001  not a zip, no data.pkl, a damaged pickle: torch says which
        raise CheckpointLoadError(f"not a readable torch.save file: {type(error).__name__}: {_clean(str(error))}") from None


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load ``path`` on CPU with ``weights_only=True`` (+ stand-ins) and normalise it (module doc).

    Raises :class:`CheckpointLoadError` with one line for anything unusable.
    """
    import torch

    path = Path(path)
    unsafe = _pickled_globals(path, torch)
    stand_in_names = {name for _, name in _allowlist([])}
    config_names = [name for name in unsafe if _CONFIG_NAME.match(name)]
    refused = [name for name in unsafe if name not in stand_in_names and name not in config_names]
    if refused:
        raise CheckpointLoadError(_describe_refusal(refused), refused=True)
    try:
        with torch.serialization.safe_globals(_allowlist(config_names)):
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except CheckpointLoadError:
        raise
    except Exception as error:  # noqa: BLE001  torch raises many types for damaged files; all mean "unusable"
        raise CheckpointLoadError(f"cannot load: {type(error).__name__}: {_clean(str(error))}",
                                  refused="Unsupported" in str(error)) from None
    if not isinstance(loaded, dict):
        return loaded  # callers say "not a checkpoint: holds a list"; nothing to normalise
    try:
        return normalise(loaded, guide_format=bool(unsafe))
    except (TypeError, ValueError) as error:  # stand-ins holding nonsense (a shape of strings, ...)
        raise CheckpointLoadError(f"cannot read the file's numpy or config objects: {error}") from None


# --- normalising build-nanogpt's format into ours ------------------------------------------------------

def _plain(value: Any, torch: Any) -> Any:
    """Stand-ins -> our types anywhere in the dict: arrays become tensors, configs dicts."""
    if isinstance(value, ArrayStandIn):
        return torch.from_numpy(value.real())
    if isinstance(value, ConfigStandIn):
        return {k: _plain(v, torch) for k, v in value.fields.items()}
    if isinstance(value, DtypeStandIn):
        return value.spec
    if isinstance(value, dict):
        return {k: _plain(v, torch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, torch) for v in value)
    return value


def _numpy_rng_to_list(state: Any) -> Any:
    """``np.random.get_state()`` -> ``[name, int64 keys tensor, pos, has_gauss, cached]``."""
    import numpy as np
    import torch

    if not isinstance(state, (list, tuple)) or len(state) != 5:
        return state  # the worker's restore reports what is wrong with it
    name, keys, pos, has_gauss, cached = state
    if isinstance(keys, ArrayStandIn):
        keys = torch.from_numpy(np.asarray(keys.real(), dtype=np.int64).copy())
    return [name, keys, pos, has_gauss, cached]


def _python_rng_to_list(state: Any) -> Any:
    """``random.getstate()`` -> ``[version, [internal ints], gauss_next]``."""
    if isinstance(state, tuple) and len(state) == 3 and isinstance(state[1], (tuple, list)):
        return [state[0], list(state[1]), state[2]]
    return state


def _loader_state(state: Any) -> Any:
    """build-nanogpt's DataLoaderLite names its position ``current_shard``/``current_position``.

    Rank 0 saves the checkpoint, and rank 0's ``current_position`` is the global position of the
    next step's first token, which is exactly what our loader stores; so the names map one to one.
    Anything else is passed through for the worker's loader to accept or refuse.
    """
    if isinstance(state, dict) and {"current_shard", "current_position"} <= set(state) \
            and not {"shard_index", "position"} & set(state):
        return {"shard_index": state["current_shard"], "position": state["current_position"]}
    return state


def normalise(checkpoint: dict[str, Any], *, guide_format: bool) -> dict[str, Any]:
    """Our format from either format (a dict already in ours passes through unchanged)."""
    if not guide_format:
        return checkpoint
    import torch

    result = {key: (value if key in ("model", "optimizer") else _plain(value, torch))
              for key, value in checkpoint.items()}
    if "numpy_rng_state" in checkpoint:
        result["numpy_rng_state"] = _numpy_rng_to_list(checkpoint["numpy_rng_state"])
    if "python_rng_state" in result:
        result["python_rng_state"] = _python_rng_to_list(result["python_rng_state"])
    if "train_loader_state" in result:
        result["train_loader_state"] = _loader_state(result["train_loader_state"])
    result.setdefault("format_version", FORMAT_VERSION)
    result["source_format"] = GUIDE_FORMAT
    return result
