"""Run identity: fingerprints of data and checkpoint files, and the classification of differences
between a recorded run and a relaunch (math-changing: refused; the rest: allowed and noted).
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.run_identity import (
    SHARD_EDGE_BYTES,
    RunIdentity,
    compare,
    fingerprint_checkpoint_file,
    fingerprint_data,
    read_identity_file,
)


def cosine(step: int, max_lr: float, warmup: int, max_steps: int) -> float:
    """The worker's schedule, restated so this test does not import torch."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    ratio = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return max_lr * 0.1 + 0.5 * (1 + math.cos(math.pi * ratio)) * max_lr * 0.9


def write_shards(directory: Path, train_tokens: int = 1000, val_tokens: int = 500, prefix: str = "toy") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(directory / f"{prefix}_val_000000.npy", rng.integers(0, 50000, val_tokens, dtype=np.uint16))
    for index in (1, 2):
        np.save(directory / f"{prefix}_train_{index:06d}.npy", rng.integers(0, 50000, train_tokens, dtype=np.uint16))
    return directory


def identity(tmp_path: Path, **changes) -> RunIdentity:
    data_dir = tmp_path / "data"
    if not data_dir.exists():
        write_shards(data_dir)
    base = RunIdentity(
        identity_version=1, model="tiny",
        model_config={"block_size": 128, "vocab_size": 50304, "n_layer": 2, "n_head": 2, "n_embd": 64},
        total_batch_size=1024, micro_batch_size=8, seq_len=64, max_steps=60, warmup_steps=10,
        max_lr=6e-4, weight_decay=0.1, seed=1337, dropout=0.0, world_size=1,
        data=fingerprint_data(data_dir), pretrained=None,
        settings={"checkpoint_interval": 20, "eval_interval": 250, "keep_last_n_checkpoints": -1},
        argv=["--max_steps", "60"],
    )
    return replace(base, **changes)


# ----------------------------------------------------------------------------- fingerprints


def test_data_fingerprint_lists_every_shard_with_size_and_edge_hash(tmp_path):
    data = write_shards(tmp_path / "d")
    fingerprint = fingerprint_data(data)
    assert [s["name"] for s in fingerprint["shards"]["train"]] == ["toy_train_000001.npy", "toy_train_000002.npy"]
    assert [s["name"] for s in fingerprint["shards"]["val"]] == ["toy_val_000000.npy"]
    assert fingerprint["shards"]["val"][0]["bytes"] == (data / "toy_val_000000.npy").stat().st_size
    assert fingerprint["path"] == str(data.resolve())
    assert fingerprint_data(data) == fingerprint  # deterministic


def test_a_moved_copy_of_the_data_has_the_same_digest(tmp_path):
    import shutil

    first = write_shards(tmp_path / "a")
    shutil.copytree(first, tmp_path / "b")
    assert fingerprint_data(tmp_path / "b")["digest"] == fingerprint_data(first)["digest"]


def test_one_changed_byte_at_either_end_of_a_large_shard_changes_the_digest(tmp_path):
    data = write_shards(tmp_path / "d", train_tokens=3 * SHARD_EDGE_BYTES)  # 6 MiB: ends hashed only
    shard = data / "toy_train_000002.npy"
    original = fingerprint_data(data)["digest"]
    for offset in (200, shard.stat().st_size - 1):
        blob = bytearray(shard.read_bytes())
        blob[offset] ^= 0xFF
        shard.write_bytes(bytes(blob))
        assert fingerprint_data(data)["digest"] != original, offset
        blob[offset] ^= 0xFF
        shard.write_bytes(bytes(blob))
    assert fingerprint_data(data)["digest"] == original
    # The middle of a large shard is not read (that is the point: a few MiB, not 200 MB).
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    assert fingerprint_data(data)["digest"] == original


def test_checkpoint_file_fingerprint_comes_from_the_zip_crcs(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"weights v1")
    first = fingerprint_checkpoint_file(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"weights v2")
    second = fingerprint_checkpoint_file(path)
    assert first["content_digest"] != second["content_digest"]
    assert first["path"] == str(path.resolve()) and first["bytes"] > 0
    not_zip = tmp_path / "legacy.pt"
    not_zip.write_bytes(b"not a zip")
    assert fingerprint_checkpoint_file(not_zip)["content_digest"]


# ----------------------------------------------------------------------------- round trips


def test_identity_round_trips_through_a_plain_dict(tmp_path):
    recorded = identity(tmp_path)
    assert RunIdentity.from_dict(recorded.to_dict()) == recorded
    assert compare(recorded, RunIdentity.from_dict(recorded.to_dict())).differences == ()


def test_the_identity_file_is_absent_readable_or_unreadable_with_a_reason(tmp_path):
    import json

    path = tmp_path / "run_identity.json"
    assert read_identity_file(path).identity is None and read_identity_file(path).unreadable is None
    recorded = identity(tmp_path)
    path.write_text(json.dumps(recorded.to_dict()))
    assert read_identity_file(path).identity == recorded
    for text, reason in (("{torn", "not JSON"), ("[1]", "not a JSON object"), ('{"argv": ["x"]}', "records no identity")):
        path.write_text(text)
        assert read_identity_file(path).unreadable == reason, text


def test_the_checkpoint_record_leaves_out_only_the_command_line(tmp_path):
    recorded = identity(tmp_path)
    train_config = recorded.to_train_config()
    assert "argv" not in train_config
    assert RunIdentity.from_dict(train_config) == replace(recorded, argv=[])
    assert compare(RunIdentity.from_dict(train_config), recorded).differences == ()


def test_an_older_checkpoint_is_compared_on_what_it_records_with_a_note(tmp_path):
    current = identity(tmp_path)
    legacy_checkpoint = {
        "train_config": {"max_steps": 60, "warmup_steps": 10, "max_lr": 6e-4, "weight_decay": 0.1,
                         "total_batch_size": 1024, "micro_batch_size": 8, "seq_len": 64, "seed": 1337,
                         "world_size": 1},
        "config": {**current.model_config, "dropout": 0.1},
    }
    recorded = RunIdentity.from_checkpoint(legacy_checkpoint)
    assert recorded.is_legacy and recorded.dropout == 0.1 and recorded.model_config == current.model_config
    diff = compare(recorded, current)
    assert diff.lines() == ["dropout: 0.1 -> 0.0"]
    assert diff.changes_math
    assert len(diff.notes) == 1 and "data" in diff.notes[0] and "pretrained" in diff.notes[0]
    # No train_config at all: only the model config is compared.
    bare = compare(RunIdentity.from_checkpoint({"config": legacy_checkpoint["config"]}), current)
    assert [d.key for d in bare.differences] == ["dropout"] and "max_lr" in bare.notes[0]


def test_values_of_the_wrong_type_read_as_not_recorded_never_as_a_crash(tmp_path):
    junk = {"identity_version": 1, "max_steps": "sixty", "model_config": [1, 2], "data": "D", "seed": True,
            "settings": None, "argv": "x", "max_lr": 6e-4, "pretrained": 7}
    recorded = RunIdentity.from_dict(junk)
    assert recorded.max_steps is None and recorded.model_config is None and recorded.seed is None
    assert recorded.max_lr == 6e-4 and recorded.settings == {} and recorded.argv == []
    diff = compare(recorded, identity(tmp_path))
    assert "max_steps" in diff.notes[0] and "seed" in diff.notes[0]
    assert [d.key for d in diff.math_changes] == ["data"]  # recorded as none by a versioned identity


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("key, value, expected_line", [
    ("max_lr", 0.5, "max_lr: 0.0006 -> 0.5"),
    ("seed", 2, "seed: 1337 -> 2"),
    ("total_batch_size", 2048, "total_batch_size: 1024 -> 2048"),
    ("seq_len", 32, "seq_len: 64 -> 32"),
    ("warmup_steps", 0, "warmup_steps: 10 -> 0"),
    ("weight_decay", 0.0, "weight_decay: 0.1 -> 0.0"),
    ("dropout", 0.1, "dropout: 0.0 -> 0.1"),
])
def test_a_change_of_the_training_math_is_classified_as_such(tmp_path, key, value, expected_line):
    diff = compare(identity(tmp_path), identity(tmp_path, **{key: value}))
    assert diff.changes_math and diff.overridable
    assert diff.lines() == [expected_line]


def test_a_shorter_max_steps_changes_the_math(tmp_path):
    diff = compare(identity(tmp_path), identity(tmp_path, max_steps=40))
    assert diff.changes_math
    assert diff.lines()[0].startswith("max_steps: 60 -> 40 (")


def test_a_longer_max_steps_is_an_allowed_extension_that_prints_the_lr_change(tmp_path):
    diff = compare(identity(tmp_path), identity(tmp_path, max_steps=300), resumed_step=40, lr_schedule=cosine)
    assert not diff.changes_math
    (line,) = diff.lines()
    before, after = cosine(41, 6e-4, 10, 60), cosine(41, 6e-4, 10, 300)
    assert line.startswith("max_steps: 60 -> 300 (a longer run: allowed;")
    assert f"lr at step 41 {before:.4g} -> {after:.4g}" in line
    without_schedule = compare(identity(tmp_path), identity(tmp_path, max_steps=300)).lines()[0]
    assert "decays over 300 steps instead of 60" in without_schedule


def test_other_data_is_a_math_change_that_names_the_first_differing_shard(tmp_path):
    other = write_shards(tmp_path / "other", prefix="pydoc")
    diff = compare(identity(tmp_path), identity(tmp_path, data=fingerprint_data(other)))
    assert diff.changes_math
    (line,) = diff.lines()
    assert line.startswith(f"data: {(tmp_path / 'data').resolve()} (2 train, 1 val shards, fingerprint ")
    assert f"-> {other.resolve()} (2 train, 1 val shards" in line
    assert "gone: toy_train_000001.npy" in line and "new: pydoc_train_000001.npy" in line


def test_a_regrown_shard_is_named_with_both_sizes(tmp_path):
    recorded = identity(tmp_path)
    write_shards(tmp_path / "data", train_tokens=1200)
    diff = compare(recorded, identity(tmp_path, data=fingerprint_data(tmp_path / "data")))
    assert "toy_train_000001.npy: 2,128 -> 2,528 bytes" in diff.lines()[0]


def test_the_same_data_in_another_directory_is_only_noted(tmp_path):
    import shutil

    recorded = identity(tmp_path)
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    diff = compare(recorded, identity(tmp_path, data=fingerprint_data(tmp_path / "moved")))
    assert not diff.changes_math
    moved = f"data directory: {(tmp_path / 'data').resolve()} -> {(tmp_path / 'moved').resolve()}"
    assert diff.lines() == [f"{moved} (same shards, same contents)"]


def test_another_model_architecture_cannot_be_overridden(tmp_path):
    mini = {"block_size": 256, "vocab_size": 50304, "n_layer": 4, "n_head": 4, "n_embd": 128}
    diff = compare(identity(tmp_path), identity(tmp_path, model="mini", model_config=mini))
    assert diff.changes_math and not diff.overridable
    assert diff.lines()[0].startswith(
        "model: tiny (block_size=128, n_layer=2, n_head=2, n_embd=64) -> mini (block_size=256, n_layer=4, n_head=4, n_embd=128)")
    renamed = compare(identity(tmp_path), identity(tmp_path, model="alias"))
    assert not renamed.changes_math and renamed.lines() == ["model: tiny -> alias (same architecture)"]


def test_micro_batch_and_process_count_at_equal_total_batch_are_allowed(tmp_path):
    diff = compare(identity(tmp_path, world_size=2, micro_batch_size=8),
                   identity(tmp_path, world_size=1, micro_batch_size=4))
    assert not diff.changes_math
    assert [d.key for d in diff.differences] == ["micro_batch_size", "world_size"]
    assert "world_size: 2 -> 1 (same total batch: the same tokens per step)" in diff.lines()


def test_intervals_and_keep_last_n_are_allowed_and_listed(tmp_path):
    changed = identity(tmp_path, settings={"checkpoint_interval": 5, "eval_interval": 250,
                                           "keep_last_n_checkpoints": 3})
    diff = compare(identity(tmp_path), changed)
    assert not diff.changes_math
    assert diff.lines() == ["checkpoint_interval: 20 -> 5", "keep_last_n_checkpoints: -1 -> 3"]


def test_another_pretrained_file_changes_the_math_and_none_versus_one_too(tmp_path):
    a = {"path": "/p/a.pt", "bytes": 10, "content_digest": "aaaa", "step": 100}
    b = {"path": "/p/b.pt", "bytes": 10, "content_digest": "bbbb", "step": 100}
    assert compare(identity(tmp_path, pretrained=a), identity(tmp_path, pretrained=b)).changes_math
    dropped = compare(identity(tmp_path, pretrained=a), identity(tmp_path))
    assert dropped.changes_math and dropped.lines() == [
        "pretrained_checkpoint: /p/a.pt (step 100, content aaaa) -> none"]
    moved = compare(identity(tmp_path, pretrained=a), identity(tmp_path, pretrained={**a, "path": "/q/a.pt"}))
    assert not moved.changes_math


def test_math_changes_are_listed_before_allowed_ones(tmp_path):
    diff = compare(identity(tmp_path), identity(tmp_path, max_lr=0.5, seed=2, world_size=2,
                                                settings={**identity(tmp_path).settings, "eval_interval": 10}))
    assert diff.lines() == ["max_lr: 0.0006 -> 0.5", "seed: 1337 -> 2",
                            "world_size: 1 -> 2 (same total batch: the same tokens per step)",
                            "eval_interval: 250 -> 10"]
    assert [d.key for d in diff.math_changes] == ["max_lr", "seed"]
