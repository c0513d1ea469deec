"""Tokenize text into build-nanogpt token shards: ``python -m worker.prepare``.

Shard format (what :mod:`worker.data` reads): 1-D ``uint16`` arrays saved with ``np.save``, named
``{prefix}_val_000000.npy``, ``{prefix}_train_000001.npy``, ... Shard 0 is the validation split,
every later shard is training data, and every document starts with ``<|endoftext|>`` (50256) so
the model sees document boundaries. Documents flow across shard boundaries, as in build-nanogpt.

Inputs: ``.txt`` files (one document each) and ``.jsonl`` files (one document per line, in its
``text`` field), or directories holding them (searched recursively, sorted). ``--source
fineweb-edu`` streams HuggingFace's FineWeb-Edu sample-10BT instead; that needs the optional
``datasets`` package and network access.

Shards are written to a temporary name (``.{name}.{pid}.tmp``, which no shard glob matches) and
renamed into place, so a prepare killed at any instant never leaves a half shard that looks real.

Exit codes: 0 done; 1 the output could not be written (disk full, permissions); 2 bad input
(no files, a missing path, a malformed line, an empty corpus, a missing optional dependency);
130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.tokenizer import EOT_TOKEN, get_gpt2_encoding

DEFAULT_SHARD_SIZE = 100_000_000  # build-nanogpt's 100M tokens per shard
SUPPORTED_SUFFIXES = (".txt", ".jsonl")


class PrepareError(Exception):
    """Bad input for data preparation; the message is one line meant for the user."""


# ----------------------------------------------------------------------------- tokenizing


def encode_document(text: str) -> np.ndarray:
    """``<|endoftext|>`` followed by the document's tokens, as uint16 (the vocab is < 2**16)."""
    tokens = [EOT_TOKEN]
    tokens.extend(get_gpt2_encoding().encode_ordinary(text))
    return np.asarray(tokens, dtype=np.uint16)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_all(documents: Iterable[str], num_proc: int) -> Iterator[np.ndarray]:
    """Encode documents in order; with ``num_proc > 1`` in a process pool (order preserved)."""
    if num_proc <= 1:
        for text in documents:
            yield encode_document(text)
        return
    # An exception raised by the ``documents`` iterator is re-raised from ``imap`` at its index,
    # so input errors (a malformed JSON line) surface here in order. Workers ignore SIGINT so a
    # Ctrl-C reaches only the parent (one line, no traceback per worker).
    with multiprocessing.Pool(num_proc, initializer=_ignore_sigint) as pool:
        yield from pool.imap(encode_document, documents, chunksize=16)


# ----------------------------------------------------------------------------- writing


def shard_name(prefix: str, index: int) -> str:
    split = "val" if index == 0 else "train"
    return f"{prefix}_{split}_{index:06d}.npy"


def write_shard_atomic(path: Path, tokens: np.ndarray) -> None:
    """Write ``tokens`` to ``path`` via a temporary file + fsync + rename (never a half shard)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, tokens)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class ShardWriter:
    """Packs token arrays into fixed-size shards; shard 0 is val, the rest train."""

    output_dir: Path
    prefix: str
    shard_size: int
    written: list[Path] = field(default_factory=list)
    total_tokens: int = 0

    def __post_init__(self) -> None:
        self._buffer = np.empty(self.shard_size, dtype=np.uint16)
        self._fill = 0

    def add(self, tokens: np.ndarray) -> None:
        offset = 0
        while offset < len(tokens):
            take = min(self.shard_size - self._fill, len(tokens) - offset)
            self._buffer[self._fill : self._fill + take] = tokens[offset : offset + take]
            self._fill += take
            offset += take
            if self._fill == self.shard_size:
                self._flush()
        self.total_tokens += len(tokens)

    @property
    def pending_tokens(self) -> int:
        """Tokens in the shard being filled (not yet written)."""
        return self._fill

    def end_shard(self) -> None:
        """Close the current shard early (used to end the val shard at a document boundary)."""
        if self._fill:
            self._flush()

    def finish(self) -> list[Path]:
        has_train = len(self.written) >= 2 or (len(self.written) == 1 and self._fill > 0)
        if self.total_tokens == 0:
            raise PrepareError("the corpus is empty: no documents with text were found")
        if not has_train:
            raise PrepareError(
                f"the corpus ({self.total_tokens:,} tokens) fills only the val shard (shard 0); "
                f"lower --shard_size (now {self.shard_size:,}) or leave documents for training "
                "(--val_documents)"
            )
        if self._fill:
            self._flush()
        return list(self.written)

    def _flush(self) -> None:
        path = self.output_dir / shard_name(self.prefix, len(self.written))
        write_shard_atomic(path, self._buffer[: self._fill])
        self.written.append(path)
        self._fill = 0


def _make_progress(enabled: bool | None):  # -> rich Progress or None
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]tokenizing"),
        BarColumn(),
        TextColumn("{task.fields[docs]:,} docs  {task.completed:,} tokens  {task.fields[shards]} shards"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def prepare_shards(
    documents: Iterable[str],
    output_dir: Path | str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    prefix: str = "shard",
    num_proc: int = 1,
    *,
    val_documents: int | None = None,
    progress: bool | None = None,
) -> list[Path]:
    """Tokenize ``documents`` into shards in ``output_dir``; returns the shard paths in order.

    By default shard 0 (val) is the first ``shard_size`` tokens, as in build-nanogpt. With
    ``val_documents=N`` the val shard instead holds exactly the first N documents (ended at a
    document boundary; it must fit in one shard), which suits small corpora. On any failure the
    shards written so far are removed, so the directory never holds a partial set.
    """
    if shard_size < 2:
        raise PrepareError(f"--shard_size must be at least 2 tokens (got {shard_size})")
    if val_documents is not None and val_documents < 1:
        raise PrepareError(f"--val_documents must be at least 1 (got {val_documents})")
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepareError(f"cannot create output directory {output_dir}: {exc.strerror or exc}") from None
    writer = ShardWriter(output_dir, prefix, shard_size)
    docs_done = 0
    try:
        with ExitStack() as stack:
            bar = _make_progress(progress)
            task = None
            if bar is not None:
                stack.enter_context(bar)
                task = bar.add_task("tokenize", total=None, docs=0, shards=0)
            non_empty = (text for text in documents if text)  # "" would be a lone <|endoftext|>
            for tokens in _encode_all(non_empty, num_proc):
                if val_documents is not None and docs_done < val_documents:
                    if writer.pending_tokens + len(tokens) > shard_size:
                        raise PrepareError(
                            f"the first {val_documents} documents do not fit in one shard of "
                            f"{shard_size:,} tokens; raise --shard_size or lower --val_documents"
                        )
                writer.add(tokens)
                docs_done += 1
                if val_documents is not None and docs_done == val_documents:
                    writer.end_shard()
                if bar is not None:
                    bar.update(task, advance=len(tokens), docs=docs_done, shards=len(writer.written))
            paths = writer.finish()
            if bar is not None:
                bar.update(task, docs=docs_done, shards=len(paths))
            return paths
    except BaseException:
        for path in writer.written:
            path.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- inputs


def collect_input_files(inputs: Iterable[str]) -> list[Path]:
    """Expand files and directories into the sorted list of ``.txt`` / ``.jsonl`` files."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)
            if not found:
                raise PrepareError(f"directory {path} holds no .txt or .jsonl files")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in SUPPORTED_SUFFIXES:
                raise PrepareError(f"{path}: unsupported file type (expected .txt or .jsonl)")
            files.append(path)
        else:
            raise PrepareError(f"{path}: no such file or directory")
    return files


def iter_file_documents(files: Iterable[Path]) -> Iterator[str]:
    """Yield documents: a whole ``.txt`` file, or the ``text`` field of each ``.jsonl`` line."""
    for path in files:
        try:
            if path.suffix == ".txt":
                yield path.read_text(encoding="utf-8")
                continue
            with open(path, encoding="utf-8") as handle:
                for line_number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError as exc:
                        raise PrepareError(f"{path}:{line_number}: not valid JSON ({exc})") from None
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise PrepareError(f"{path}:{line_number}: no string 'text' field")
                    yield text
        except UnicodeDecodeError as exc:
            raise PrepareError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise PrepareError(f"{path}: cannot read ({exc.strerror or exc})") from None


def iter_fineweb_edu_documents() -> Iterator[str]:
    """Stream FineWeb-Edu sample-10BT (needs ``datasets`` and network; checked by the caller)."""
    import datasets

    try:
        dataset = datasets.load_dataset(
            "HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train", streaming=True
        )
        for row in dataset:
            yield row["text"]
    except Exception as exc:  # network / hub errors: one line, not a traceback
        raise PrepareError(f"loading fineweb-edu failed: {type(exc).__name__}: {exc}") from None


def require_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise PrepareError(
            "--source fineweb-edu needs the 'datasets' package and network access: "
            "pip install datasets (or pass local .txt/.jsonl files instead)"
        ) from None


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker.prepare",
        description="Tokenize text (GPT-2 BPE) into uint16 .npy token shards for training. "
        "Shard 0 is val, the rest train; each document starts with <|endoftext|>.",
        epilog="exit codes: 0 ok, 1 output not writable, 2 bad input, 130 interrupted",
    )
    parser.add_argument("inputs", nargs="*", help=".txt / .jsonl files or directories holding them")
    parser.add_argument(
        "--source", choices=("local", "fineweb-edu"), default="local",
        help="'local' (the files given) or 'fineweb-edu' (needs `pip install datasets` + network)",
    )
    parser.add_argument("--output_dir", default=None,
                        help="where shards go (default: shards/, or edu_fineweb10B/ for fineweb-edu)")
    parser.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"tokens per shard (default {DEFAULT_SHARD_SIZE:,})")
    parser.add_argument("--prefix", default=None,
                        help="shard file name prefix (default: corpus, or edufineweb)")
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="tokenizer processes (default: half the CPUs)")
    parser.add_argument("--val_documents", type=int, default=None,
                        help="put exactly the first N documents in the val shard "
                        "(default: the first --shard_size tokens, as build-nanogpt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace shards with the same prefix already in --output_dir")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar on stderr (default: only on a terminal)")
    return parser


def run(args: argparse.Namespace) -> list[Path]:
    if args.source == "fineweb-edu":
        if args.inputs:
            raise PrepareError("--source fineweb-edu takes no input files")
        require_datasets()
        documents: Iterable[str] = iter_fineweb_edu_documents()
        output_dir = Path(args.output_dir or "edu_fineweb10B")
        prefix = args.prefix or "edufineweb"
    else:
        if not args.inputs:
            raise PrepareError(
                "no input files: pass .txt/.jsonl files or directories "
                "(or --source fineweb-edu with the 'datasets' package)"
            )
        documents = iter_file_documents(collect_input_files(args.inputs))
        output_dir = Path(args.output_dir or "shards")
        prefix = args.prefix or "corpus"
    if args.num_proc < 1:
        raise PrepareError(f"--num_proc must be at least 1 (got {args.num_proc})")
    if output_dir.is_dir():
        existing = sorted(output_dir.glob(f"{prefix}_*_*.npy"))
        if existing and not args.overwrite:
            raise PrepareError(
                f"{output_dir} already holds {len(existing)} shards named {prefix}_*.npy; "
                "pass --overwrite or choose another --output_dir / --prefix"
            )
        for path in existing:
            path.unlink()
    return prepare_shards(
        documents, output_dir, args.shard_size, prefix, args.num_proc,
        val_documents=args.val_documents, progress=args.progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = run(args)
    except PrepareError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"prepare: error: cannot write output{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare: interrupted; no partial shards were kept", file=sys.stderr)
        return 130
    n_tokens = sum(int(np.load(p, mmap_mode="r").shape[0]) for p in paths)
    print(f"wrote {len(paths)} shards ({n_tokens:,} tokens) to {paths[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
