"""``python -m worker.prepare`` and ``prepare_shards``: real files in, real shards out."""
from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.tokenizer import EOT_TOKEN, get_gpt2_encoding
from worker.prepare import (
    DEFAULT_SHARD_SIZE,
    PrepareError,
    _make_progress,
    default_val_tokens,
    prepare_shards,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_prepare(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "worker.prepare", *args],
        capture_output=True, text=True, env=env, cwd=cwd or REPO_ROOT, timeout=120, check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def expected_stream(documents: list[str]) -> np.ndarray:
    enc = get_gpt2_encoding()
    tokens: list[int] = []
    for text in documents:
        tokens.append(EOT_TOKEN)
        tokens.extend(enc.encode_ordinary(text))
    return np.asarray(tokens, dtype=np.uint16)


DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 30,
    "Ünïcödé text, numbers 12345 and code: def f(x): return x * 2\n" * 20,
    "A third document.\n\nWith paragraphs.\n" * 25,
    "short",
]


def write_corpus(root: Path) -> list[str]:
    """a.txt, b.jsonl (two docs + a blank line), sub/c.txt; returns documents in sorted-file order."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text(DOCS[0], encoding="utf-8")
    with open(root / "b.jsonl", "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": DOCS[1], "id": 1}) + "\n\n")
        handle.write(json.dumps({"text": DOCS[2]}) + "\n")
    (root / "sub").mkdir()
    (root / "sub" / "c.txt").write_text(DOCS[3], encoding="utf-8")
    return DOCS


@pytest.mark.parametrize("num_proc", [1, 2])
def test_cli_writes_nanogpt_shards(tmp_path: Path, num_proc: int) -> None:
    documents = write_corpus(tmp_path / "in")
    out = tmp_path / "out"
    result = run_prepare(str(tmp_path / "in"), "--output_dir", str(out), "--shard_size", "200",
                         "--val_tokens", "200", "--num_proc", str(num_proc), "--prefix", "tst")
    assert result.returncode == 0, result.stderr
    shards = sorted(out.glob("*.npy"), key=lambda p: p.name.rsplit("_", 1)[1])
    names = [p.name for p in shards]
    assert names[0] == "tst_val_000000.npy"
    assert names[1:] == [f"tst_train_{i:06d}.npy" for i in range(1, len(names))]
    arrays = [np.load(p) for p in shards]
    assert all(a.dtype == np.uint16 and a.ndim == 1 for a in arrays)
    # Full shards, and a last one of at least half a shard (a shorter tail joins the one before).
    assert all(len(a) == 200 for a in arrays[:-1]) and 100 <= len(arrays[-1]) < 300
    stream = np.concatenate(arrays)
    # Each .txt is one document, each jsonl line one; every document starts with <|endoftext|>.
    assert np.array_equal(stream, expected_stream(documents))
    assert int(np.count_nonzero(stream == EOT_TOKEN)) == len(documents)
    assert "Traceback" not in result.stderr
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_library_val_documents_end_the_val_shard(tmp_path: Path) -> None:
    paths = prepare_shards(DOCS, tmp_path, shard_size=400, prefix="p", num_proc=1, val_documents=1)
    val = np.load(paths[0])
    assert paths[0].name == "p_val_000000.npy"
    assert np.array_equal(val, expected_stream(DOCS[:1]))  # exactly the first document
    train = np.concatenate([np.load(p) for p in paths[1:]])
    assert np.array_equal(train, expected_stream(DOCS[1:]))


def test_library_refuses_a_corpus_that_only_fills_val(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="only the val shard"):
        prepare_shards(["tiny corpus"], tmp_path, shard_size=1000, prefix="p", num_proc=1, val_tokens=1000)
    with pytest.raises(PrepareError, match="empty"):
        prepare_shards(["", ""], tmp_path, shard_size=1000, prefix="p", num_proc=1)
    # A failure after the val shard was written removes it again: no partial set is left.
    with pytest.raises(PrepareError, match="only the val shard"):
        prepare_shards(DOCS, tmp_path, shard_size=10_000, prefix="p", num_proc=1,
                       val_documents=len(DOCS))
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_inputs_get_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(run_prepare(), "no input files")
    assert_one_line_error(run_prepare(str(tmp_path / "nope.txt")), "no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(run_prepare(str(empty), "--output_dir", str(tmp_path / "o1")), "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    result = run_prepare(str(bad), "--output_dir", str(tmp_path / "o2"), "--num_proc", "2")
    assert_one_line_error(result, "bad.jsonl:2")
    no_text = tmp_path / "notext.jsonl"
    no_text.write_text(json.dumps({"body": "x"}) + "\n")
    assert_one_line_error(run_prepare(str(no_text), "--output_dir", str(tmp_path / "o3")), "'text'")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    assert_one_line_error(run_prepare(str(latin1), "--output_dir", str(tmp_path / "o4")), "UTF-8")
    for out in ("o1", "o2", "o3", "o4"):
        assert not list((tmp_path / out).glob("*.npy"))


def test_cli_refuses_to_mix_with_existing_shards(tmp_path: Path) -> None:
    write_corpus(tmp_path / "in")
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "--output_dir", str(out), "--shard_size", "300"]
    assert run_prepare(*args).returncode == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.npy")}
    assert_one_line_error(run_prepare(*args), "--overwrite")
    assert run_prepare(*args, "--overwrite", "--shard_size", "500").returncode == 0
    second = {p.name for p in out.glob("*.npy")}
    assert second and len(second) < len(first)  # old shards were replaced, not mixed in


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None,
                    reason="datasets is installed; the missing-dependency message cannot be shown")
def test_fineweb_without_datasets_says_what_to_install(tmp_path: Path) -> None:
    result = run_prepare("--source", "fineweb-edu", "--output_dir", str(tmp_path / "fw"))
    assert_one_line_error(result, "pip install datasets")
    assert not (tmp_path / "fw").exists()


def test_killed_prepare_never_leaves_a_half_shard(tmp_path: Path) -> None:
    """SIGKILL mid-run: every file named like a shard is complete (atomic tmp + rename)."""
    src = tmp_path / "big.jsonl"
    with open(src, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": f"Document {i}. " + "lorem ipsum dolor sit amet " * 40}) + "\n" for i in range(4000))
    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    shard_size = 50_000
    child = subprocess.Popen(
        [sys.executable, "-m", "worker.prepare", str(src), "--output_dir", str(out),
         "--shard_size", str(shard_size), "--val_tokens", str(shard_size), "--num_proc", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not list(out.glob("*_train_*.npy")) and child.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    shards = sorted(out.glob("*_*_*.npy"), key=lambda p: p.stem.rsplit("_", 1)[1])
    assert shards, "no shard was written before the kill"
    assert [p.stem.rsplit("_", 1)[1] for p in shards] == [f"{i:06d}" for i in range(len(shards))]
    for path in shards:
        tokens = np.load(path)  # a truncated .npy would raise here
        # Only a run that finished before the kill may have a short (final) shard.
        assert len(tokens) == shard_size or (path == shards[-1] and child.returncode == 0)


# --- real corpora: any text file, JSON, parquet, directories, stray binary files ------------------
def read_stream(out: Path) -> np.ndarray:
    shards = sorted(out.glob("*.npy"), key=lambda p: p.stem.rsplit("_", 1)[1])
    return np.concatenate([np.load(p) for p in shards])


def test_any_text_file_and_json_records_become_documents(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "pkg").mkdir(parents=True)
    docs = {
        "a.md": "# Title\n\nSome *markdown* text.\n" * 20,
        "b.rst": "Heading\n=======\n\nreStructuredText body.\n" * 20,
        "pkg/c.py": "def add(a, b):\n    return a + b\n" * 20,
        "pkg/d.c": "int main(void) { return 0; }\n" * 20,
    }
    for name, text in docs.items():
        (src / name).write_text(text, encoding="utf-8")
    (src / "e.json").write_text(json.dumps([{"text": "first json record " * 10}, {"text": "second " * 10}]))
    (src / "f.json").write_text(json.dumps({"text": "a single json object " * 10, "url": "x"}))
    # JSON Lines saved under a .json name, as many dataset dumps are.
    (src / "g.json").write_text(json.dumps({"text": "line one " * 10}) + "\n" + json.dumps({"text": "line two " * 10}) + "\n")
    (src / ".hidden").mkdir()
    (src / ".hidden" / "secret.txt").write_text("never read")
    out = tmp_path / "out"
    result = run_prepare(str(src), "--output_dir", str(out), "--num_proc", "1")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing skipped, nothing to warn about
    # Sorted order: a.md, b.rst, e.json (2 records), f.json, g.json (2 lines), pkg/c.py, pkg/d.c.
    expected = [docs["a.md"], docs["b.rst"], "first json record " * 10, "second " * 10,
                "a single json object " * 10, "line one " * 10, "line two " * 10, docs["pkg/c.py"], docs["pkg/d.c"]]
    assert np.array_equal(read_stream(out), expected_stream(expected))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_text_column_is_read_like_fineweb(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"FineWeb-style document number {i}. " * 15 for i in range(40)]
    table = pa.table({"text": texts, "id": [f"<urn:{i}>" for i in range(40)], "score": [3.5] * 40})
    pq.write_table(table, tmp_path / "000_00000.parquet", row_group_size=16)
    out = tmp_path / "out"
    result = run_prepare(str(tmp_path / "000_00000.parquet"), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read_stream(out), expected_stream(texts))

    pq.write_table(pa.table({"body": ["no text column"]}), tmp_path / "other.parquet")
    assert_one_line_error(run_prepare(str(tmp_path / "other.parquet"), "--output_dir", str(tmp_path / "o2")),
                          "no 'text' column")
    assert not (tmp_path / "o2").exists()


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_bytes(b"PAR1 not really")
    blocker = (
        "import sys\n"
        "class NoArrow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'pyarrow': raise ImportError('no pyarrow here')\n"
        "sys.meta_path.insert(0, NoArrow())\n"
        "from worker.prepare import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", blocker, str(tmp_path / "data.parquet"), "--output_dir",
                             str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert_one_line_error(result, "pip install pyarrow")
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_utf8_text_are_skipped_counted_and_named(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = ["plain UTF-8 text, café included. " * 20, "another good file " * 20]
    (src / "a_good.txt").write_text(good[0], encoding="utf-8")
    (src / "b_latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (src / "c_logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    (src / "d_nul.txt").write_bytes(b"looks like text\0but holds NUL bytes")
    (src / "e_cp1252.md").write_bytes("\u201csmart quotes\u201d".encode("cp1252"))
    (src / "f_good.txt").write_text(good[1], encoding="utf-8")
    out = tmp_path / "out"
    result = run_prepare(str(src), "--output_dir", str(out), "--num_proc", "2")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read_stream(out), expected_stream(good))
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1, result.stderr
    assert "skipped 4 files that are not UTF-8 text:" in warning[0]
    # The first few are named, the rest counted.
    assert "b_latin1.txt" in warning[0] and "c_logo.png" in warning[0] and "d_nul.txt" in warning[0]
    assert "e_cp1252.md" not in warning[0] and warning[0].endswith("and 1 more")


def test_a_jsonl_file_that_turns_non_utf8_keeps_its_good_lines(tmp_path: Path) -> None:
    src = tmp_path / "mixed.jsonl"
    with open(src, "wb") as handle:
        handle.write(json.dumps({"text": "good line one " * 20}).encode() + b"\n")
        handle.write(b'{"text": "caf\xe9"}\n')
        handle.write(json.dumps({"text": "never reached"}).encode() + b"\n")
    (tmp_path / "more.txt").write_text("more text " * 50)
    out = tmp_path / "out"
    result = run_prepare(str(src), str(tmp_path / "more.txt"), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read_stream(out), expected_stream(["good line one " * 20, "more text " * 50]))
    assert "mixed.jsonl (from line 2)" in result.stderr


def test_a_small_corpus_works_with_the_default_shard_size(tmp_path: Path) -> None:
    """The 100M-token default used to put a small corpus wholly into val and fail."""
    src = tmp_path / "notes.md"
    text = "A small corpus of notes, a few thousand tokens long. " * 400
    src.write_text(text)
    out = tmp_path / "out"
    result = run_prepare(str(src), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    val, train = np.load(out / "corpus_val_000000.npy"), np.load(out / "corpus_train_000001.npy")
    total = len(val) + len(train)
    assert np.array_equal(np.concatenate([val, train]), expected_stream([text]))
    # A tenth of a small corpus (the floor), exactly: its size is known when it fits in one shard.
    assert len(val) == default_val_tokens(total, DEFAULT_SHARD_SIZE) == max(total // 10, 2048)
    assert f"val {len(val):,}" in result.stdout


def test_val_split_is_a_share_with_a_floor_and_at_most_one_shard() -> None:
    assert default_val_tokens(10_000_000_000, 100_000_000) == 100_000_000  # FineWeb: 1%, one shard
    assert default_val_tokens(50_000_000, 100_000_000) == 500_000  # 1%
    assert default_val_tokens(2_000_000, 100_000_000) == 100_000  # the floor
    assert default_val_tokens(130_000, 100_000_000) == 13_000  # a tenth of a small corpus
    assert default_val_tokens(3_000, 100_000_000) == 1_500  # half of a tiny one
    assert default_val_tokens(2, 100_000_000) == 1  # one token left for training


def test_a_corpus_larger_than_a_shard_sizes_val_from_its_estimate(tmp_path: Path) -> None:
    docs = [f"document {i} " + "word " * 300 for i in range(40)]  # ~12k tokens
    paths = prepare_shards(docs, tmp_path, shard_size=5_000, prefix="p", num_proc=1,
                           estimated_tokens=30_000)
    sizes = [len(np.load(p)) for p in paths]
    assert sizes[0] == default_val_tokens(30_000, 5_000) == 3_000  # a tenth of the estimate
    assert all(size == 5_000 for size in sizes[1:-1]) and 2_500 <= sizes[-1]
    assert np.array_equal(np.concatenate([np.load(p) for p in paths]), expected_stream(docs))


def test_a_short_last_train_shard_joins_the_one_before(tmp_path: Path) -> None:
    tokens = expected_stream(DOCS)
    n = len(tokens)
    shard = (n - 50) // 3  # val + 2 full train shards + a 50-ish token tail (< half a shard)
    paths = prepare_shards(DOCS, tmp_path, shard_size=shard, prefix="p", num_proc=1, val_tokens=shard)
    sizes = [len(np.load(p)) for p in paths]
    assert len(paths) == 3 and sizes[:2] == [shard, shard] and sizes[2] == n - 2 * shard
    assert np.array_equal(np.concatenate([np.load(p) for p in paths]), tokens)


def test_a_failed_run_leaves_no_output_directory_behind(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "new" / "nested" / "out"
    assert_one_line_error(run_prepare(str(tmp_path / "empty.txt"), "--output_dir", str(out)), "empty")
    assert not (tmp_path / "new").exists()
    # A directory that existed before is left alone (and empty of shards).
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "README").write_text("mine")
    assert_one_line_error(run_prepare(str(tmp_path / "empty.txt"), "--output_dir", str(existing)), "empty")
    assert [p.name for p in existing.iterdir()] == ["README"]


def test_progress_bar_only_on_a_terminal_and_for_large_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

    assert _make_progress(None, 50_000_000) is None  # pytest's stderr is no terminal
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert _make_progress(None, 50_000_000) is not None
    assert _make_progress(None, None) is not None  # a stream of unknown size
    assert _make_progress(None, 10_000) is None  # seconds of work: no bar
    assert _make_progress(False, 50_000_000) is None


def test_progress_bar_draws_on_a_real_terminal(tmp_path: Path) -> None:
    import pty

    (tmp_path / "a.txt").write_text("some text " * 500)
    master, slave = pty.openpty()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(COLUMNS="120", TERM="xterm")
    try:
        child = subprocess.run(
            [sys.executable, "-m", "worker.prepare", str(tmp_path / "a.txt"), "--output_dir",
             str(tmp_path / "out"), "--progress"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env, timeout=120, check=False,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert child.returncode == 0
    assert "tokenizing" in screen and "shards" in screen
