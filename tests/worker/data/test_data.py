"""The token loader (global position, resumable across world sizes) and data-dir resolution."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.tokenizer import EOT_TOKEN
from worker.data.shards import (
    DataError,
    ShardedTokenLoader,
    default_corpus_documents,
    resolve_data_dir,
    validate_loader_state,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def write_shards(directory: Path, train_sizes: list[int], val_size: int = 300) -> list[np.ndarray]:
    """Shards whose tokens encode (shard, offset) so any read can be checked against the source."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = []
    for index, size in enumerate([val_size, *train_sizes]):
        split = "val" if index == 0 else "train"
        tokens = ((index * 5000 + np.arange(size)) % 50000).astype(np.uint16)
        np.save(directory / f"syn_{split}_{index:06d}.npy", tokens)
        arrays.append(tokens)
    return arrays[1:]  # train shards, in order


def read_step(loaders: list[ShardedTokenLoader]) -> list[torch.Tensor]:
    """One optimizer step across all ranks, x tensors ordered by global chunk index j."""
    world = loaders[0].world_size
    accum = loaders[0].grad_accum_steps
    chunks: dict[int, torch.Tensor] = {}
    for k in range(accum):
        for loader in loaders:
            x, _ = loader.next_batch()
            chunks[k * world + loader.rank] = x
    return [chunks[j] for j in sorted(chunks)]


def make_loaders(data_dir: Path, B: int, T: int, world: int, accum: int) -> list[ShardedTokenLoader]:
    return [ShardedTokenLoader(data_dir, "train", B, T, r, world, accum) for r in range(world)]


def test_shapes_dtypes_and_shift(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, [1000])
    loader = ShardedTokenLoader(tmp_path, "train", 2, 8)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (2, 8)
    assert x.dtype == y.dtype == torch.int64
    assert x.device.type == "cpu"
    assert torch.equal(x.flatten(), torch.from_numpy(shard[0:16].astype(np.int64)))
    assert torch.equal(y.flatten(), torch.from_numpy(shard[1:17].astype(np.int64)))
    x2, _ = loader.next_batch()
    assert torch.equal(x2.flatten(), torch.from_numpy(shard[16:32].astype(np.int64)))


def test_each_rank_reads_its_global_chunk(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, [2000])
    B, T, world, accum = 2, 4, 2, 3
    chunk = B * T
    for rank in range(world):
        loader = ShardedTokenLoader(tmp_path, "train", B, T, rank, world, accum)
        for step in range(2):
            for k in range(accum):
                x, y = loader.next_batch()
                start = step * chunk * world * accum + (k * world + rank) * chunk
                assert torch.equal(x.flatten(), torch.from_numpy(shard[start : start + chunk].astype(np.int64)))
                assert torch.equal(y.flatten(), torch.from_numpy(shard[start + 1 : start + chunk + 1].astype(np.int64)))


def test_shards_are_memory_mapped(tmp_path: Path) -> None:
    write_shards(tmp_path, [1000])
    loader = ShardedTokenLoader(tmp_path, "train", 2, 8)
    loader.next_batch()
    assert isinstance(loader._current_tokens(), np.memmap)


@pytest.mark.parametrize("accum", [1, 3])
def test_two_ranks_read_the_same_tokens_per_step_as_one_rank(tmp_path: Path, accum: int) -> None:
    # Shard sizes chosen so the run crosses shard boundaries and wraps into a second epoch.
    write_shards(tmp_path, [500, 333, 260])
    B, T = 2, 8
    two = make_loaders(tmp_path, B, T, world=2, accum=accum)
    one = make_loaders(tmp_path, B, T, world=1, accum=2 * accum)
    seen_shards = set()
    for _ in range(40):
        assert [c.tolist() for c in read_step(two)] == [c.tolist() for c in read_step(one)]
        states = {json.dumps(loader.state_dict(), sort_keys=True) for loader in two + one}
        assert len(states) == 1  # every rank (and the 1-process run) holds the same state
        seen_shards.add(one[0].state_dict()["shard_index"])
    assert seen_shards == {0, 1, 2}


def test_state_round_trip_reproduces_next_batches_across_world_sizes(tmp_path: Path) -> None:
    write_shards(tmp_path, [700, 400])
    B, T = 2, 8
    original = make_loaders(tmp_path, B, T, world=2, accum=2)
    for _ in range(7):
        read_step(original)
    state = original[0].state_dict()
    assert all(type(v) is int for v in state.values())

    # Through a real weights_only checkpoint round trip, as the trainer does it.
    torch.save({"train_loader_state": state}, tmp_path / "ckpt.pt")
    restored_state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["train_loader_state"]
    assert restored_state == state

    expected = [read_step(original) for _ in range(12)]
    for world, accum in [(2, 2), (1, 4), (4, 1)]:
        resumed = make_loaders(tmp_path, B, T, world=world, accum=accum)
        for loader in resumed:
            loader.load_state_dict(restored_state)
        got = [read_step(resumed) for _ in range(12)]
        assert [[c.tolist() for c in s] for s in got] == [[c.tolist() for c in s] for s in expected]


def test_shard_switch_and_wrap(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, [100, 70, 50])
    loader = ShardedTokenLoader(tmp_path, "train", 2, 4, grad_accum_steps=4)  # 32 tokens per step
    starts = []
    for _ in range(8):
        first, last = None, None
        for _ in range(4):
            x, y = loader.next_batch()
            first = x if first is None else first
            last = y
        starts.append((loader.shard_index, int(first[0, 0]), int(last[-1, -1])))
    expected_positions = [(0, 0), (0, 32), (0, 64), (1, 0), (1, 32), (2, 0), (0, 0), (0, 32)]
    for (shard_index, first_tok, last_tok), (want_shard, want_pos) in zip(starts, expected_positions):
        assert shard_index == want_shard
        assert first_tok == shards[want_shard][want_pos]
        assert last_tok == shards[want_shard][want_pos + 32]  # y reaches one token further
    assert loader.state_dict() == {"shard_index": 0, "position": 64}


def test_state_dict_mid_step_is_refused(tmp_path: Path) -> None:
    write_shards(tmp_path, [1000])
    loader = ShardedTokenLoader(tmp_path, "train", 2, 8, grad_accum_steps=2)
    loader.next_batch()
    with pytest.raises(AssertionError, match="mid-step"):
        loader.state_dict()
    loader.next_batch()
    assert loader.state_dict() == {"shard_index": 0, "position": 32}


def test_load_state_dict_tells_a_malformed_state_from_other_data(tmp_path: Path) -> None:
    write_shards(tmp_path, [1000, 800])
    loader = ShardedTokenLoader(tmp_path, "train", 2, 8)
    with pytest.raises(DataError, match="shard 2"):
        loader.load_state_dict({"shard_index": 2, "position": 0})
    with pytest.raises(DataError, match="outside"):
        loader.load_state_dict({"shard_index": 1, "position": 801})
    with pytest.raises(ValueError, match="invalid"):  # malformed: the checkpoint is bad, not the data
        loader.load_state_dict({"position": 0})
    loader.load_state_dict({"shard_index": 1, "position": 800})  # end of shard: next step moves on
    x, _ = loader.next_batch()
    assert loader.shard_index == 0 and int(x[0, 0]) == 5000  # wrapped to shard 0 (file index 1)


def test_reset_returns_to_start(tmp_path: Path) -> None:
    write_shards(tmp_path, [200, 200], val_size=100)
    val = ShardedTokenLoader(tmp_path, "val", 2, 8)
    first = [val.next_batch()[0] for _ in range(3)]
    val.reset()
    again = [val.next_batch()[0] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert int(first[0][0, 0]) == 0  # the val shard is file index 0


def test_shard_smaller_than_a_step_is_a_clear_error(tmp_path: Path) -> None:
    write_shards(tmp_path, [1000, 60])
    with pytest.raises(DataError, match="reduce --total_batch_size"):
        ShardedTokenLoader(tmp_path, "train", 2, 8, world_size=2, grad_accum_steps=2)  # 64 + 1


def test_resolve_data_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")
    a_file = tmp_path / "file.npy"
    a_file.write_bytes(b"x")
    with pytest.raises(DataError, match="not a directory"):
        resolve_data_dir(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="_train_"):
        resolve_data_dir(empty)
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    np.save(only_train / "x_train_000001.npy", np.zeros(10, dtype=np.uint16))
    with pytest.raises(DataError, match="_val_"):
        resolve_data_dir(only_train)
    good = tmp_path / "good"
    write_shards(good, [100])
    assert resolve_data_dir(str(good)) == good


def _hash_dir(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.npy"))}


def test_default_corpus_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2SUP_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = resolve_data_dir(None)
    assert data_dir == tmp_path / "cache" / "pydoc_topics_v1"
    names = sorted(p.name for p in data_dir.glob("*.npy"))
    assert names[-1] == "pydoc_val_000000.npy"
    train = [n for n in names if "_train_" in n]
    assert len(train) >= 2  # the multi-shard path is exercised by every default run
    val_tokens = np.load(data_dir / "pydoc_val_000000.npy", mmap_mode="r")
    train_tokens = np.concatenate([np.load(data_dir / n) for n in train])
    val_docs, train_docs = default_corpus_documents()
    # Every document starts with <|endoftext|>; the val shard is exactly the val topics.
    assert int(np.count_nonzero(val_tokens == EOT_TOKEN)) == len(val_docs)
    assert int(np.count_nonzero(train_tokens == EOT_TOKEN)) == len(train_docs)
    assert val_tokens[0] == EOT_TOKEN and train_tokens[0] == EOT_TOKEN
    assert 0.05 < len(val_tokens) / (len(val_tokens) + len(train_tokens)) < 0.2
    assert len(train_tokens) > 80_000
    # A loader with a CPU-sized batch works on it.
    loader = ShardedTokenLoader(data_dir, "train", 4, 64, grad_accum_steps=2)
    x, _ = loader.next_batch()
    assert x.shape == (4, 64)

    before = {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()}
    assert resolve_data_dir(None) == data_dir
    assert {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()} == before
    leftovers = [p.name for p in data_dir.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []

    (data_dir / "pydoc_val_000000.npy").unlink()  # a hand-damaged cache is reported, not used
    with pytest.raises(DataError, match="delete .* to rebuild"):
        resolve_data_dir(None)


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.data.shards import cache_root

    monkeypatch.delenv("GPT2SUP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "gpt2sup"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "gpt2sup"
    monkeypatch.setenv("GPT2SUP_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"


def test_unwritable_cache_dir_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("GPT2SUP_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(DataError, match="GPT2SUP_CACHE_DIR"):
        resolve_data_dir(None)


CONCURRENT_CHILD = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    from pathlib import Path
    import worker.data.shards as data

    builds = []
    real_build = data._build_default_corpus
    def counting_build(output_dir):
        builds.append(os.getpid())
        time.sleep(0.5)  # widen the window in which the other process must wait on the lock
        real_build(output_dir)
    data._build_default_corpus = counting_build

    go = Path(sys.argv[1])
    Path(sys.argv[2]).touch()  # ready: imports done
    while not go.exists():
        time.sleep(0.005)
    path = data.resolve_data_dir(None)
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("*.npy"))}
    print(json.dumps({"path": str(path), "built": len(builds), "hashes": hashes}))
    """
)


def test_concurrent_default_corpus_builds(tmp_path: Path) -> None:
    env = dict(os.environ, GPT2SUP_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_CHILD, str(go), str(tmp_path / f"ready{i}")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "children never became ready"
        assert all(child.poll() is None for child in children), "a child exited early"
        time.sleep(0.01)
    go.touch()  # both start resolving within milliseconds of each other
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["built"] for r in results) == [0, 1]  # exactly one process built it
    assert results[0]["hashes"] == results[1]["hashes"]
    assert results[0]["hashes"] == _hash_dir(Path(results[0]["path"]))
    assert len(results[0]["hashes"]) >= 3
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow  # seconds of torch.load / probe children: CI runs it, the inner loop does not
def test_a_full_pass_gives_read_pages_back(tmp_path):
    """Reading a whole mapped shard must not leave it all resident: the loader releases the pages
    it has consumed (MADV_DONTNEED), so RSS stays bounded on 100M-token shards."""
    tokens = 48 * 1024 * 1024  # 96 MiB of uint16
    np.save(tmp_path / "big_val_000000.npy", np.zeros(1024, dtype=np.uint16))
    np.save(tmp_path / "big_train_000001.npy", np.arange(tokens, dtype=np.uint64).astype(np.uint16))
    script = textwrap.dedent(
        f"""
        from worker.data.shards import ShardedTokenLoader

        def rss_file_kb():
            for line in open("/proc/self/status"):
                if line.startswith("RssFile:"):
                    return int(line.split()[1])

        import torch  # its shared libraries are file-backed too: map them before measuring

        loader = ShardedTokenLoader({str(tmp_path)!r}, "train", 16, 1024)
        loader.next_batch()
        before = rss_file_kb()
        for _ in range({tokens} // (16 * 1024) - 2):
            loader.next_batch()
        print(rss_file_kb() - before)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    grown_mib = int(result.stdout.strip()) / 1024
    # Without the release the whole 96 MiB shard stays resident; with it, at most ~one 32 MiB window.
    assert grown_mib < 60, f"RssFile grew {grown_mib:.0f} MiB over a 96 MiB shard"


@pytest.mark.parametrize("state", [None, [0, 0], {"position": 0}, {"shard_index": "0", "position": 0},
                                   {"shard_index": 0, "position": -1}, {"shard_index": True, "position": 0},
                                   {"shard_index": 0, "position": 1.5}])
def test_validate_loader_state_rejects_malformed_states_without_any_data(state) -> None:
    with pytest.raises(ValueError, match="invalid data-loader state"):
        validate_loader_state(state)
    validate_loader_state({"shard_index": 3, "position": 128})  # well-formed: fine without data
