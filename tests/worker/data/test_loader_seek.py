"""Restoring the loader's position costs the same at token 100 as at token 10**8: nothing before
the position is read or skipped, and the resumed batches are bit for bit the uninterrupted ones."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.data.shards import ShardedTokenLoader


class RecordingTokens:
    """A shard stand-in that records every slice read from it."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, index: slice) -> np.ndarray:
        self.reads.append((index.start, index.stop))
        return self.tokens[index]


def _shards(directory: Path, sizes: list[int]) -> None:
    for index, size in enumerate([300, *sizes]):
        split = "val" if index == 0 else "train"
        np.save(directory / f"s_{split}_{index:06d}.npy", ((index * 7919 + np.arange(size)) % 50000).astype(np.uint16))


def test_a_late_position_is_restored_without_reading_what_came_before(tmp_path):
    _shards(tmp_path, [2_000_000, 50_000])
    B, T, world, accum = 4, 16, 2, 2
    loader = ShardedTokenLoader(tmp_path, "train", B, T, 1, world, accum)
    position = 1_999_000 - (1_999_000 % loader.tokens_per_step)
    recorder = RecordingTokens(np.load(loader.shards[0].path, mmap_mode="r"))
    loader._current_tokens = lambda: recorder  # type: ignore[method-assign]
    loader.load_state_dict({"shard_index": 0, "position": position})
    assert recorder.reads == []  # the seek itself touches no token
    loader.next_batch()
    assert recorder.reads == [(position + 1 * B * T, position + 2 * B * T + 1)]  # rank 1's chunk, nothing else


def test_resumed_batches_are_bit_identical_early_and_late_and_across_a_shard_switch(tmp_path):
    _shards(tmp_path, [3_000, 1_500])
    B, T, world, accum = 2, 8, 2, 2

    def loaders() -> list[ShardedTokenLoader]:
        return [ShardedTokenLoader(tmp_path, "train", B, T, r, world, accum) for r in range(world)]

    def step(group: list[ShardedTokenLoader]) -> list[list[int]]:
        return [loader.next_batch()[0].flatten().tolist() + loader.next_batch()[1].flatten().tolist()
                for loader in group for _ in range(1)]

    for steps_before in (1, 40, 90):  # early, late in shard 0, past the switch to shard 1
        uninterrupted = loaders()
        for _ in range(steps_before):
            step(uninterrupted)
        state = uninterrupted[0].state_dict()
        resumed = loaders()
        for loader in resumed:
            loader.load_state_dict(state)
        expected = [step(uninterrupted) for _ in range(30)]
        assert [step(resumed) for _ in range(30)] == expected, steps_before
