"""Tokenize text into build-nanogpt token shards: ``python -m worker.prepare``.

Shard format (what :mod:`worker.data.shards` reads): 1-D ``uint16`` arrays saved with ``np.save``, named
``{prefix}_val_000000.npy``, ``{prefix}_train_000001.npy``, ... Shard 0 is the validation split,
every later shard is training data, and every document starts with ``<|endoftext|>`` (50256) so
the model sees document boundaries. Documents flow across shard boundaries, as in build-nanogpt.

Inputs: any text file (``.txt``, ``.md``, ``.rst``, ``.py``, other source code, ...; one document
each), ``.jsonl`` (one document per line, in its ``text`` field), ``.json`` (an object with a
``text`` field, or a list of them), and, with the optional ``pyarrow`` package, ``.parquet`` (a
``text`` column: FineWeb's own format). Directories are searched recursively in sorted order,
skipping hidden files and directories. A file that is not UTF-8 text (a latin-1 file, an image) is
skipped and counted, not fatal. ``--source fineweb-edu`` streams HuggingFace's FineWeb-Edu
sample-10BT instead; that needs the optional ``datasets`` package and network access.

The validation shard is sized from the corpus unless ``--val_tokens`` / ``--val_documents`` say
otherwise: 1% of it, but at least 100,000 tokens (never more than a tenth of a small corpus, or
2,048 tokens of a tiny one) and at most one shard. So a small corpus works with the default
100M-token ``--shard_size``, and a FineWeb-sized one gets build-nanogpt's 100M-token val shard.
A last train shard shorter than half a shard is appended to the one before it, so no shard is too
short to hold a training step.

Shards are written to a temporary name (``.{name}.{pid}.tmp``, which no shard glob matches) and
renamed into place, so a prepare killed at any instant never leaves a half shard that looks real.
A prepare that fails removes the shards it wrote, and the output directory if it created it.

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

from shared.exit_codes import PrepareExit, exit_status_epilog
from shared.tokenizer import EOT_TOKEN, get_gpt2_encoding

DEFAULT_SHARD_SIZE = 100_000_000  # build-nanogpt's 100M tokens per shard
# The validation split when not given: build-nanogpt's share (100M of FineWeb's 10B tokens) ...
VAL_FRACTION = 0.01
# ... with a floor, so the val loss of a mid-sized corpus is not measured on a handful of batches,
VAL_MIN_TOKENS = 100_000
# ... that never takes more than this share of a small corpus,
VAL_MAX_FRACTION = 0.1
# ... except that a tiny corpus still gets enough for one val batch of the CPU demo profile
# (8 x 64 tokens per micro-batch), up to half of it.
VAL_SMALLEST_TOKENS = 2048
# For the size estimate behind the progress bar and the val split of a large corpus: GPT-2's BPE
# averages about four bytes of English text per token.
BYTES_PER_TOKEN = 4.0
# Below this (estimated) size the work takes seconds and a progress bar would only flicker.
PROGRESS_MIN_TOKENS = 1_000_000
SKIPPED_NAMES_SHOWN = 3


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


def default_val_tokens(total_tokens: int, shard_size: int) -> int:
    """The val split of a corpus of ``total_tokens``: a fraction with a floor, at most one shard,
    and always leaving at least one token for training."""
    floor = min(VAL_MIN_TOKENS, max(int(total_tokens * VAL_MAX_FRACTION), min(VAL_SMALLEST_TOKENS, total_tokens // 2)))
    wanted = max(floor, int(total_tokens * VAL_FRACTION), 1)
    return max(1, min(wanted, shard_size, total_tokens - 1))


@dataclass
class ShardWriter:
    """Packs token arrays into shards; shard 0 is val, the rest train.

    ``val_tokens`` fixes the size of shard 0; ``None`` sizes it from the corpus. A corpus that
    fits in one shard is split exactly (its size is known at the end); for a larger one the split
    is made when the first shard is full, from ``estimated_tokens`` (no estimate: one whole shard,
    as build-nanogpt).
    """

    output_dir: Path
    prefix: str
    shard_size: int
    val_tokens: int | None = None
    estimated_tokens: int | None = None
    written: list[Path] = field(default_factory=list)
    total_tokens: int = 0

    def __post_init__(self) -> None:
        self._buffer = np.empty(max(self.shard_size, self.val_tokens or 0), dtype=np.uint16)
        self._fill = 0

    def _capacity(self) -> int:
        if not self.written and self.val_tokens is not None:
            return self.val_tokens
        return self.shard_size

    def add(self, tokens: np.ndarray) -> None:
        offset = 0
        while offset < len(tokens):
            take = min(self._capacity() - self._fill, len(tokens) - offset)
            self._buffer[self._fill : self._fill + take] = tokens[offset : offset + take]
            self._fill += take
            offset += take
            self.total_tokens += take
            if self._fill == self._capacity():
                if not self.written and self.val_tokens is None:
                    self._split_off_val(self._large_corpus_val_tokens())
                else:
                    self._flush()

    @property
    def pending_tokens(self) -> int:
        """Tokens in the shard being filled (not yet written)."""
        return self._fill

    def end_shard(self) -> None:
        """Close the current shard early (used to end the val shard at a document boundary)."""
        if self._fill:
            self._flush()

    def finish(self) -> list[Path]:
        if self.total_tokens == 0:
            raise PrepareError("the corpus is empty: no documents with text were found")
        if not self.written and self.val_tokens is None and self.total_tokens >= 2:
            self._split_off_val(default_val_tokens(self.total_tokens, self.shard_size))
        has_train = len(self.written) >= 2 or (len(self.written) == 1 and self._fill > 0)
        if not has_train:
            raise PrepareError(
                f"the corpus ({self.total_tokens:,} tokens) fills only the val shard (shard 0); "
                "give it more text, or a smaller --val_tokens / --val_documents"
            )
        if self._fill:
            if len(self.written) >= 2 and self._fill < self.shard_size // 2:
                self._append_to_last_shard()
            else:
                self._flush()
        return list(self.written)

    def _large_corpus_val_tokens(self) -> int:
        if self.estimated_tokens is None:
            return self._fill  # unknown size (a stream): one whole shard, as build-nanogpt
        return default_val_tokens(max(self.estimated_tokens, self.total_tokens + 1), self.shard_size)

    def _split_off_val(self, val_tokens: int) -> None:
        """Write the first ``val_tokens`` buffered tokens as shard 0; keep the rest for training."""
        rest = self._buffer[val_tokens : self._fill].copy()
        self._fill = val_tokens
        self._flush()
        self._buffer[: len(rest)] = rest
        self._fill = len(rest)

    def _append_to_last_shard(self) -> None:
        # A short last shard could not hold one training step; the one before it takes its tokens.
        last = self.written[-1]
        merged = np.concatenate([np.load(last), self._buffer[: self._fill]])
        write_shard_atomic(last, merged)
        self._fill = 0

    def _flush(self) -> None:
        path = self.output_dir / shard_name(self.prefix, len(self.written))
        write_shard_atomic(path, self._buffer[: self._fill])
        self.written.append(path)
        self._fill = 0


def _make_progress(enabled: bool | None, estimated_tokens: int | None):  # -> rich Progress or None
    if enabled is None:
        large = estimated_tokens is None or estimated_tokens >= PROGRESS_MIN_TOKENS
        enabled = sys.stderr.isatty() and large
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]tokenizing"),
        BarColumn(),
        TextColumn("{task.fields[docs]:,} docs  {task.completed:,} tokens  {task.fields[shards]} shards"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _created_directories(path: Path) -> list[Path]:
    """The directories ``mkdir(parents=True)`` would create for ``path``, deepest first."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    return missing


def prepare_shards(
    documents: Iterable[str],
    output_dir: Path | str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    prefix: str = "shard",
    num_proc: int = 1,
    *,
    val_documents: int | None = None,
    val_tokens: int | None = None,
    estimated_tokens: int | None = None,
    progress: bool | None = None,
) -> list[Path]:
    """Tokenize ``documents`` into shards in ``output_dir``; returns the shard paths in order.

    The val shard (shard 0) holds exactly the first ``val_tokens`` tokens, or exactly the first
    ``val_documents`` documents (ended at a document boundary; they must fit in one shard), or,
    with neither, a share of the corpus (:func:`default_val_tokens`; ``estimated_tokens`` is used
    only for a corpus larger than one shard). On any failure the shards written so far are removed,
    and so are the directories this call created, so nothing half-made is left behind.
    """
    _check_shard_arguments(shard_size, val_documents, val_tokens)
    output_dir = Path(output_dir)
    created = _created_directories(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepareError(f"cannot create output directory {output_dir}: {exc.strerror or exc}") from None
    fixed_val = val_tokens if val_tokens is not None else shard_size if val_documents is not None else None
    writer = ShardWriter(output_dir, prefix, shard_size, fixed_val, estimated_tokens)
    docs_done = 0
    try:
        with ExitStack() as stack:
            bar = _make_progress(progress, estimated_tokens)
            task = None
            if bar is not None:
                stack.enter_context(bar)
                task = bar.add_task("tokenize", total=estimated_tokens, docs=0, shards=0)
            non_empty = (text for text in documents if text)  # "" would be a lone <|endoftext|>
            for tokens in _encode_all(non_empty, num_proc):
                val_overflows = writer.pending_tokens + len(tokens) > shard_size
                if val_documents is not None and docs_done < val_documents and val_overflows:
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
                bar.update(task, total=writer.total_tokens, completed=writer.total_tokens,
                           docs=docs_done, shards=len(paths))
            return paths
    except BaseException:
        _remove_partial_output(writer.written, created)
        raise


def _check_shard_arguments(shard_size: int, val_documents: int | None, val_tokens: int | None) -> None:
    """Refuse impossible sizes before anything is created (one-line ``PrepareError``)."""
    if shard_size < 2:
        raise PrepareError(f"--shard_size must be at least 2 tokens (got {shard_size})")
    if val_documents is not None and val_documents < 1:
        raise PrepareError(f"--val_documents must be at least 1 (got {val_documents})")
    if val_tokens is not None and val_tokens < 1:
        raise PrepareError(f"--val_tokens must be at least 1 (got {val_tokens})")
    if val_documents is not None and val_tokens is not None:
        raise PrepareError("give --val_tokens or --val_documents, not both")


def _remove_partial_output(written: list[Path], created: list[Path]) -> None:
    """After a failure: remove the shards written so far, then the directories this call created
    (deepest first), so nothing half-made is left behind."""
    for path in written:
        path.unlink(missing_ok=True)
    for directory in created:  # deepest first; rmdir refuses a directory that is not empty
        try:
            directory.rmdir()
        except OSError:
            break


# ----------------------------------------------------------------------------- inputs


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def collect_input_files(inputs: Iterable[str]) -> list[Path]:
    """Expand files and directories (recursively, sorted, hidden entries skipped) into files."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not _is_hidden(p, path))
            if not found:
                raise PrepareError(f"directory {path} holds no files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise PrepareError(f"{path}: no such file or directory")
    if any(p.suffix == ".parquet" for p in files):
        require_pyarrow()
    return files


def require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise PrepareError(
            "parquet input needs the 'pyarrow' package: pip install pyarrow "
            "(or pip install 'gpt2sup[parquet]')"
        ) from None


def estimate_tokens(files: Iterable[Path]) -> int:
    """About how many tokens ``files`` hold, from their sizes (parquet: its uncompressed text)."""
    total_bytes = 0
    for path in files:
        try:
            if path.suffix == ".parquet":
                total_bytes += _parquet_text_bytes(path)
            else:
                total_bytes += path.stat().st_size
        except OSError:
            continue  # reading it will report the problem
    return int(total_bytes / BYTES_PER_TOKEN)


def _parquet_text_bytes(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
    except Exception:  # noqa: BLE001 - pyarrow raises its own error types; reading reports them
        return 0
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            if chunk.path_in_schema == "text":
                total += chunk.total_uncompressed_size
    return total


@dataclass
class CorpusReader:
    """Yields the documents of local files; files that are not UTF-8 text are skipped and named
    in ``skipped`` (a corpus directory often holds a stray binary or latin-1 file)."""

    files: list[Path]
    skipped: list[str] = field(default_factory=list)

    def documents(self) -> Iterator[str]:
        for path in self.files:
            try:
                if path.suffix == ".parquet":
                    yield from _parquet_documents(path)
                elif path.suffix == ".jsonl":
                    yield from self._jsonl_documents(path)
                elif path.suffix == ".json":
                    yield from self._json_documents(path)
                else:
                    text = self._decode(path, path.read_bytes())
                    if text is not None:
                        yield text
            except OSError as exc:
                raise PrepareError(f"{path}: cannot read ({exc.strerror or exc})") from None

    def skipped_line(self) -> str | None:
        """One line naming the skipped files (the first few), or None."""
        if not self.skipped:
            return None
        shown = ", ".join(self.skipped[:SKIPPED_NAMES_SHOWN])
        more = len(self.skipped) - SKIPPED_NAMES_SHOWN
        tail = f" and {more} more" if more > 0 else ""
        count = len(self.skipped)
        return f"skipped {count} file{'s' if count != 1 else ''} that {'are' if count != 1 else 'is'} not UTF-8 text: {shown}{tail}"

    def _decode(self, path: Path, raw: bytes) -> str | None:
        if b"\0" in raw:  # valid UTF-8 may hold NULs, but text never does: a binary file
            self.skipped.append(str(path))
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.skipped.append(str(path))
            return None

    def _jsonl_documents(self, path: Path) -> Iterator[str]:
        with open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    # Lines before this one were good documents and stay; the rest of the file
                    # is skipped like any other file that is not UTF-8.
                    self.skipped.append(f"{path} (from line {line_number})" if line_number > 1 else str(path))
                    return
                if line.strip():
                    yield _record_text(json_loads(line, path, line_number), path, line_number)

    def _json_documents(self, path: Path) -> Iterator[str]:
        text = self._decode(path, path.read_bytes())
        if text is None:
            return
        try:
            data = json.loads(text)
        except ValueError as exc:
            if "Extra data" not in str(exc):
                raise PrepareError(f"{path}: not valid JSON ({exc})") from None
            # JSON Lines under a .json name (common in dataset dumps).
            for line_number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    yield _record_text(json_loads(line, path, line_number), path, line_number)
            return
        records = data if isinstance(data, list) else [data]
        for index, record in enumerate(records, start=1):
            yield _record_text(record, path, None, index)


def json_loads(line: str, path: Path, line_number: int) -> object:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise PrepareError(f"{path}:{line_number}: not valid JSON ({exc})") from None


def _record_text(record: object, path: Path, line_number: int | None, index: int | None = None) -> str:
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        where = f"{path}:{line_number}" if line_number is not None else f"{path}: record {index}"
        raise PrepareError(f"{where}: no string 'text' field")
    return text


def _parquet_documents(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        if "text" not in parquet.schema_arrow.names:
            raise PrepareError(f"{path}: no 'text' column (columns: {', '.join(parquet.schema_arrow.names)})")
        for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str):
                    yield text
    except PrepareError:
        raise
    except OSError as exc:
        raise PrepareError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow's own errors (ArrowInvalid, ...): one line
        raise PrepareError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None


def iter_fineweb_edu_documents() -> Iterator[str]:
    """Stream FineWeb-Edu sample-10BT (needs ``datasets`` and network; checked by the caller)."""
    import datasets

    try:
        dataset = datasets.load_dataset(
            "HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train", streaming=True
        )
        for row in dataset:
            yield row["text"]
    except Exception as exc:  # noqa: BLE001 - network / hub errors: one line, not a traceback
        raise PrepareError(f"loading fineweb-edu failed: {type(exc).__name__}: {exc}") from None


def require_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise PrepareError(
            "--source fineweb-edu needs the 'datasets' package and network access: "
            "pip install datasets (or pass local files instead)"
        ) from None


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker.prepare",
        description="Tokenize text (GPT-2 BPE) into uint16 .npy token shards for training. "
        "Shard 0 is val, the rest train; each document starts with <|endoftext|>.",
        epilog="examples:\n"
        "  python -m worker.prepare notes/ README.md --output_dir my_corpus\n"
        "  python -m worker.prepare data.jsonl --output_dir my_corpus --shard_size 10000000\n"
        "  python -m worker.prepare --source fineweb-edu\n"
        + exit_status_epilog(PrepareExit, "exit codes:").removeprefix("\b\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "inputs", nargs="*",
        help="text files (.txt, .md, .py, ...), .jsonl / .json (a 'text' field), .parquet (a 'text' "
        "column; needs pyarrow), or directories holding them (recursive)",
    )
    parser.add_argument(
        "--source", choices=("local", "fineweb-edu"), default="local",
        help="'local' (the files given) or 'fineweb-edu' (needs `pip install datasets` + network)",
    )
    parser.add_argument("--output_dir", default=None,
                        help="where shards go (default: shards/, or edu_fineweb10B/ for fineweb-edu)")
    parser.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"tokens per shard (default {DEFAULT_SHARD_SIZE:,}, as build-nanogpt)")
    parser.add_argument("--prefix", default=None,
                        help="shard file name prefix (default: corpus, or edufineweb)")
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="tokenizer processes (default: half the CPUs)")
    parser.add_argument("--val_tokens", type=int, default=None,
                        help="tokens in the val shard (default: 1%% of the corpus, at least 100,000 "
                        "but at most a tenth of a small corpus, at most one shard)")
    parser.add_argument("--val_documents", type=int, default=None,
                        help="put exactly the first N documents in the val shard instead")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace shards with the same prefix already in --output_dir")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar on stderr (default: on a terminal, for large inputs)")
    return parser


def run(args: argparse.Namespace, reader_out: list[CorpusReader] | None = None) -> list[Path]:
    """Prepare what ``args`` asks for; the local corpus reader is appended to ``reader_out`` so the
    caller can report skipped files even when preparing fails."""
    estimated: int | None = None
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
                "no input files: pass text / .jsonl / .json / .parquet files or directories "
                "(or --source fineweb-edu with the 'datasets' package)"
            )
        files = collect_input_files(args.inputs)
        reader = CorpusReader(files)
        if reader_out is not None:
            reader_out.append(reader)
        documents = reader.documents()
        estimated = estimate_tokens(files)
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
        val_documents=args.val_documents, val_tokens=args.val_tokens,
        estimated_tokens=estimated, progress=args.progress,
    )


def _skipped_note(readers: list[CorpusReader]) -> str:
    line = readers[0].skipped_line() if readers else None
    return line or ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    readers: list[CorpusReader] = []
    try:
        paths = run(args, readers)
    except PrepareError as exc:
        # Skipped files are named on the same line: when the corpus came out empty because
        # every file was skipped, that is the cause.
        note = _skipped_note(readers)
        print(f"prepare: error: {exc}{f' ({note})' if note else ''}", file=sys.stderr)
        return PrepareExit.BAD_INPUT
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"prepare: error: cannot write output{where}: {exc.strerror or exc}", file=sys.stderr)
        return PrepareExit.OUTPUT_NOT_WRITABLE
    except KeyboardInterrupt:
        print("prepare: interrupted; no partial shards were kept", file=sys.stderr)
        return PrepareExit.INTERRUPTED
    note = _skipped_note(readers)
    if note:
        print(f"prepare: warning: {note}", file=sys.stderr)
    sizes = [int(np.load(p, mmap_mode="r").shape[0]) for p in paths]
    print(f"wrote {len(paths)} shards ({sum(sizes):,} tokens; val {sizes[0]:,}) to {paths[0].parent}")
    return PrepareExit.DONE


if __name__ == "__main__":
    sys.exit(main())
