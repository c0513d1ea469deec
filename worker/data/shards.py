"""Token data for training: locating shards (or building the default corpus) and the loader.

Shards are build-nanogpt's format (see :mod:`worker.prepare`): uint16 ``.npy`` files whose names
contain ``_val_`` / ``_train_``.

The loader differs from build-nanogpt's in one deliberate way: its state is a *global* token
position (the start of the current optimizer step in the current shard), and every rank derives
its micro-batch from that position, its rank and the micro-step index. The shard-advance rule
depends only on the tokens per optimizer step, so a run saved on 2 processes x k accumulation
steps and resumed on 1 process x 2k steps reads exactly the same tokens per step.

torch is imported where a tensor is made, so resolving or building data (which every rank does
at start-up, and ``worker.prepare`` reuses) does not pay for importing it.
"""
from __future__ import annotations

import fcntl
import json
import mmap
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

SPLITS = ("train", "val")
# Give already-read shard pages back every this many tokens (32 MB of uint16) to bound RSS.
_RELEASE_EVERY_TOKENS = 16 * 1024 * 1024
DEFAULT_CORPUS_NAME = "pydoc_topics_v1"
DEFAULT_CORPUS_PREFIX = "pydoc"
# Every VAL_EVERY-th topic (sorted by name) goes to val: ~10% of topics spread over the alphabet.
VAL_EVERY = 10
DEFAULT_CORPUS_TRAIN_SHARDS = 2  # two balanced train shards, so every default run crosses a shard


class DataError(Exception):
    """Missing or unusable data; the message is one line meant for the user."""


# ----------------------------------------------------------------------------- locating shards


def list_shards(data_dir: Path | str, split: str) -> list[Path]:
    """The ``split`` shards in ``data_dir``, sorted by name (= by shard index)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return sorted(Path(data_dir).glob(f"*_{split}_*.npy"))


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The directory to train from: ``data_dir`` checked, or the built-in corpus when ``None``.

    With ``None`` the default corpus (Python's own ``pydoc_data.topics``) is tokenized once into
    the cache directory and reused by every later run; concurrent callers (all torchrun ranks
    start at once) serialize on a file lock and all get the same files.
    """
    if data_dir is None:
        built = ensure_default_corpus()
        try:
            return _check_shard_dir(built)
        except DataError as exc:  # someone edited the cache by hand
            raise DataError(f"{exc}; delete {built} to rebuild the default corpus") from None
    return _check_shard_dir(Path(data_dir))


def _check_shard_dir(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"data directory {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data directory {path} is not a directory")
    for split in SPLITS:
        if not list_shards(path, split):
            raise DataError(
                f"data directory {path} has no *_{split}_*.npy shards "
                "(make them with: python -m worker.prepare FILES --output_dir DIR)"
            )
    return path


# ----------------------------------------------------------------------------- default corpus


def cache_root() -> Path:
    """``$GPT2SUP_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpt2sup``, else ``~/.cache/gpt2sup``."""
    explicit = os.environ.get("GPT2SUP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "gpt2sup"


def default_corpus_documents() -> tuple[list[str], list[str]]:
    """(val, train) documents of the built-in corpus, split deterministically by topic name."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    val = [topics[name] for i, name in enumerate(names) if i % VAL_EVERY == 0]
    train = [topics[name] for i, name in enumerate(names) if i % VAL_EVERY != 0]
    return val, train


def _build_default_corpus(output_dir: Path) -> None:
    from worker.prepare import encode_document, prepare_shards

    val, train = default_corpus_documents()
    val_tokens = sum(len(encode_document(text)) for text in val)
    train_tokens = sum(len(encode_document(text)) for text in train)
    # The val shard is exactly the val topics; the train topics split into balanced shards.
    shard_size = max(val_tokens, -(-train_tokens // DEFAULT_CORPUS_TRAIN_SHARDS))
    paths = prepare_shards(
        val + train, output_dir, shard_size, DEFAULT_CORPUS_PREFIX, num_proc=1,
        val_documents=len(val), progress=False,
    )
    # For people wondering what is in their cache; the loader never reads it.
    manifest = {
        "source": "pydoc_data.topics",
        "python_version": platform.python_version(),
        "val_topics": len(val),
        "train_topics": len(train),
        "shards": {path.name: int(np.load(path, mmap_mode="r").shape[0]) for path in paths},
    }
    (output_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def ensure_default_corpus() -> Path:
    """Build the default corpus into the cache once (lock + temp dir + rename) and return it."""
    root = cache_root()
    target = root / DEFAULT_CORPUS_NAME
    if target.is_dir():  # fast path: only ever created complete, by a rename
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_handle = open(root / f"{DEFAULT_CORPUS_NAME}.lock", "a+")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(
            f"cannot use cache directory {root} for the default corpus ({exc.strerror or exc}); "
            "set GPT2SUP_CACHE_DIR or pass --data_dir"
        ) from None
    with lock_handle:
        fcntl.flock(lock_handle.fileno(), fcntl.LOCK_EX)  # released when the handle closes
        if target.is_dir():  # another process built it while we waited
            return target
        # Leftovers of a build that was killed mid-way; safe to remove while we hold the lock.
        for stale in root.glob(f".{DEFAULT_CORPUS_NAME}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_CORPUS_NAME}.", suffix=".tmp", dir=root))
        try:
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is ordinary data
            _build_default_corpus(staging)
            os.rename(staging, target)
            dir_fd = os.open(root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise DataError(f"cannot build the default corpus in {root}: {exc.strerror or exc}") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- the loader


def validate_loader_state(state: object) -> None:
    """Raise ``ValueError`` unless ``state`` has the shape :meth:`ShardedTokenLoader.state_dict`
    writes: ``{"shard_index": int >= 0, "position": int >= 0}``. Needs no data directory, so the
    checkpoint probe can judge a file's loader state on its own."""
    if not isinstance(state, dict):
        raise ValueError(f"invalid data-loader state: a {type(state).__name__}, not a dict")  # noqa: TRY004 - one error type for "malformed" (the probe's contract)
    for key in ("shard_index", "position"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"invalid data-loader state {state!r}: {key} must be an int")  # noqa: TRY004
        if value < 0:
            raise ValueError(f"invalid data-loader state {state!r}: {key} is negative")


@dataclass(frozen=True)
class _Shard:
    path: Path
    num_tokens: int


def _read_shard_header(path: Path) -> _Shard:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from None
    if array.dtype != np.uint16 or array.ndim != 1:
        raise DataError(f"shard {path} is {array.dtype} with shape {array.shape}; expected 1-D uint16")
    num_tokens = int(array.shape[0])
    del array  # drops the mapping; we only needed the header
    return _Shard(path, num_tokens)


class ShardedTokenLoader:
    """Per-rank ``(x, y)`` micro-batches from memory-mapped shards, addressed by a global position.

    ``total = B * T * world_size * grad_accum_steps`` tokens make one optimizer step. Call ``k``
    of a step (``0 <= k < grad_accum_steps``) on rank ``r`` reads global chunk
    ``j = k * world_size + r``: tokens ``[position + j*B*T, position + (j+1)*B*T + 1)``. After the
    step's last call, ``position += total``. Before a step starts, if ``position + total + 1``
    exceeds the shard, the loader moves to the start of the next shard (wrapping to shard 0, the
    next epoch). Shards stay memory-mapped; only the slice of one micro-batch becomes int64.
    """

    def __init__(
        self,
        data_dir: Path | str,
        split: str,
        micro_batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum_steps: int = 1,
    ) -> None:
        self._configure(split, micro_batch_size, seq_len, rank, world_size, grad_accum_steps)
        paths = list_shards(data_dir, split)
        if not paths:
            raise DataError(f"no *_{split}_*.npy shards in {data_dir}")
        self._use_shards([_read_shard_header(path) for path in paths])

    def _configure(self, split: str, micro_batch_size: int, seq_len: int, rank: int, world_size: int,
                   grad_accum_steps: int) -> None:
        if micro_batch_size < 1 or seq_len < 1 or world_size < 1 or grad_accum_steps < 1:
            raise ValueError("micro_batch_size, seq_len, world_size, grad_accum_steps must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.split = split
        self.B, self.T = micro_batch_size, seq_len
        self.rank, self.world_size, self.grad_accum_steps = rank, world_size, grad_accum_steps
        self.tokens_per_step = self.B * self.T * world_size * grad_accum_steps

    def _use_shards(self, shards: list[_Shard]) -> None:
        self.shards = shards
        for shard in self.shards:
            if shard.num_tokens < self.tokens_per_step + 1:
                raise DataError(
                    f"{self.split} shard {shard.path.name} has {shard.num_tokens:,} tokens but one "
                    f"optimizer step needs {self.tokens_per_step + 1:,} (B*T*world*accum + 1); "
                    "reduce --total_batch_size (or --micro_batch_size / --seq_len) or use larger shards"
                )
        self._tokens: np.ndarray | None = None  # memmap of the current shard
        self._mapped_index = -1
        self.reset()

    # -- state ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the first token of shard 0 (the val loader does this before every eval)."""
        self.shard_index = 0
        self.position = 0
        self._micro_step = 0
        self._released_up_to = 0

    def state_dict(self) -> dict[str, int]:
        """Plain ints, safe for ``torch.load(weights_only=True)``; only legal between steps."""
        if self._micro_step != 0:
            raise AssertionError(
                f"state_dict() called mid-step ({self._micro_step}/{self.grad_accum_steps} "
                "micro-batches read); the checkpoint must be taken at a step boundary"
            )
        return {"shard_index": int(self.shard_index), "position": int(self.position)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict` (possibly saved with another world size).

        A malformed state is a bad checkpoint (``ValueError``); a well-formed one that names a
        shard or position this data directory does not have is a data mismatch (``DataError``).
        """
        validate_loader_state(state)
        shard_index, position = int(state["shard_index"]), int(state["position"])
        if shard_index >= len(self.shards):
            raise DataError(
                f"data-loader state names {self.split} shard {shard_index} but the data directory "
                f"has {len(self.shards)} {self.split} shards (was the checkpoint made on other data?)"
            )
        if position > self.shards[shard_index].num_tokens:
            raise DataError(
                f"data-loader position {position:,} is outside {self.split} shard {shard_index} "
                f"({self.shards[shard_index].num_tokens:,} tokens)"
            )
        self.shard_index, self.position, self._micro_step = shard_index, position, 0
        self._released_up_to = position

    # -- reading ----------------------------------------------------------------------------

    def _current_tokens(self) -> np.ndarray:
        if self._mapped_index != self.shard_index:
            self._tokens = None  # unmap the previous shard before mapping the next
            self._tokens = np.load(self.shards[self.shard_index].path, mmap_mode="r")
            self._mapped_index = self.shard_index
        assert self._tokens is not None
        return self._tokens

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next ``(x, y)``, int64 CPU tensors of shape (B, T); y is x shifted by one."""
        if self._micro_step == 0 and (
            self.position + self.tokens_per_step + 1 > self.shards[self.shard_index].num_tokens
        ):
            self.shard_index = (self.shard_index + 1) % len(self.shards)
            self.position = 0
            self._released_up_to = 0
        chunk = self.B * self.T
        j = self._micro_step * self.world_size + self.rank
        start = self.position + j * chunk
        window = np.array(self._current_tokens()[start : start + chunk + 1], dtype=np.int64)
        import torch  # already loaded in any training process; a dict lookup after the first

        buf = torch.from_numpy(window)
        x = buf[:-1].view(self.B, self.T)
        y = self._targets(buf, start).view(self.B, self.T)
        self._micro_step += 1
        if self._micro_step == self.grad_accum_steps:
            self._micro_step = 0
            self.position += self.tokens_per_step
            if self.position - self._released_up_to >= _RELEASE_EVERY_TOKENS:
                self._release_consumed_pages()
        return x, y

    def _targets(self, window: torch.Tensor, start: int) -> torch.Tensor:
        """What ``x = window[:-1]`` is trained to predict: the next tokens (``start`` is the
        window's offset in the shard, for a subclass that masks some of them out)."""
        return window[1:]

    def _release_consumed_pages(self) -> None:
        """Drop the pages of the current shard before ``position`` from this process's RSS.

        Reading a mapped shard faults its pages in and they stay counted in RSS until unmapped: a
        pass over a 100M-token shard would grow RSS by 200 MB. They are clean page cache, so
        ``MADV_DONTNEED`` just unmaps them (the kernel still caches the file; a re-read, e.g. the
        val loader's reset, faults them back in).
        """
        self._released_up_to = self.position
        memmap = self._tokens
        mapping = getattr(memmap, "_mmap", None)
        if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        # numpy maps from the allocation-granularity boundary below the array's file offset.
        array_start = memmap.offset % mmap.ALLOCATIONGRANULARITY
        consumed = array_start + self.position * memmap.itemsize
        length = (consumed // mmap.PAGESIZE) * mmap.PAGESIZE
        if length > 0:
            try:
                mapping.madvise(mmap.MADV_DONTNEED, 0, length)
            except (OSError, ValueError):
                pass  # an optimisation only
