"""``python -m worker.prepare`` and ``prepare_shards``: real files in, real shards out."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.tokenizer import EOT_TOKEN, get_gpt2_encoding
from worker.prepare import PrepareError, prepare_shards

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_prepare(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "worker.prepare", *args],
        capture_output=True, text=True, env=env, cwd=cwd or REPO_ROOT, timeout=120,
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
                         "--num_proc", str(num_proc), "--prefix", "tst")
    assert result.returncode == 0, result.stderr
    shards = sorted(out.glob("*.npy"), key=lambda p: p.name.rsplit("_", 1)[1])
    names = [p.name for p in shards]
    assert names[0] == "tst_val_000000.npy"
    assert names[1:] == [f"tst_train_{i:06d}.npy" for i in range(1, len(names))]
    arrays = [np.load(p) for p in shards]
    assert all(a.dtype == np.uint16 and a.ndim == 1 for a in arrays)
    assert all(len(a) == 200 for a in arrays[:-1]) and 0 < len(arrays[-1]) <= 200
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
        prepare_shards(["tiny corpus"], tmp_path, shard_size=1000, prefix="p", num_proc=1)
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
    (tmp_path / "notes.md").write_text("x")
    assert_one_line_error(run_prepare(str(tmp_path / "notes.md")), "unsupported file type")
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
        for i in range(4000):
            handle.write(json.dumps({"text": f"Document {i}. " + "lorem ipsum dolor sit amet " * 40}) + "\n")
    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    shard_size = 50_000
    child = subprocess.Popen(
        [sys.executable, "-m", "worker.prepare", str(src), "--output_dir", str(out),
         "--shard_size", str(shard_size), "--num_proc", "1"],
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
