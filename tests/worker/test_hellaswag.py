"""HellaSwag scoring (worker.hellaswag) against an independent computation, and its data handling.

In-process on a tiny seeded GPT: fast enough for the inner loop. The end-to-end checks (the
evaluation inside a real training run, never disturbing it) are in test_evaluations_e2e.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from shared.tokenizer import get_gpt2_encoding
from worker import hellaswag
from worker.data.datasets import OFFLINE_ENV
from worker.model import GPT, GPTConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "went", "to", "sleep", "quickly", "while", "dogs", "barked", "loudly", "outside", "a", "man", "is", "seen", "speaking", "to", "the", "camera", "before", "he", "picks", "up", "a", "guitar", "and", "plays"]


def write_hellaswag(path: Path, count: int, seed: int = 0, *, split_context: bool = False) -> Path:
    """A HellaSwag-format jsonl of ``count`` made-up examples (the official schema)."""
    rng = torch.Generator().manual_seed(seed)

    def words(low: int, high: int) -> str:
        n = int(torch.randint(low, high, (1,), generator=rng))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=rng))

    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            record = {"endings": [words(2, 9) for _ in range(4)], "label": int(torch.randint(0, 4, (1,), generator=rng))}
            if split_context:
                record.update(ctx_a=words(4, 12), ctx_b=words(1, 4), label=str(record["label"]))
            else:
                record["ctx"] = words(4, 20)
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(3)
    net = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32))
    net.train()  # as during training: evaluate must switch to eval and back
    return net


@pytest.fixture(scope="module")
def encode():
    return get_gpt2_encoding().encode_ordinary


def independent_prediction(model: GPT, example: hellaswag.Example, encode) -> int:
    """One row at a time, straight from the definition: the mean negative log-likelihood of the
    ending's tokens given everything before them; the lowest wins."""
    context = encode(example.context)
    scores = []
    for ending in example.endings:
        row = context + encode(" " + ending)
        with torch.no_grad():
            logits, _ = model(torch.tensor([row]))
        log_probs = F.log_softmax(logits[0].float(), dim=-1)
        nll = [-log_probs[j - 1, row[j]].item() for j in range(len(context), len(row))]
        scores.append(sum(nll) / len(nll))
    return min(range(4), key=lambda i: scores[i])


def test_predictions_match_an_independent_computation(tmp_path: Path, model: GPT, encode) -> None:
    examples = hellaswag.load_examples(write_hellaswag(tmp_path / "hs.jsonl", 16))
    model.eval()
    expected = [independent_prediction(model, e, encode) for e in examples]
    model.train()
    ours = [hellaswag.predict(model, hellaswag.render_example(e, encode, 64), "cpu", torch.no_grad) for e in examples]
    assert ours == expected
    assert len(set(expected)) > 1, "a degenerate model would make the comparison meaningless"
    result = hellaswag.evaluate(model, examples, encode, device="cpu")
    assert result.total == 16 and result.correct == sum(p == e.label for p, e in zip(expected, examples, strict=True))
    assert model.training, "evaluate must put the model back in train mode"


def test_ranks_split_the_examples_and_their_counts_add_up(tmp_path: Path, model: GPT, encode) -> None:
    examples = hellaswag.load_examples(write_hellaswag(tmp_path / "hs.jsonl", 13))
    whole = hellaswag.evaluate(model, examples, encode, device="cpu")
    parts = [hellaswag.evaluate(model, examples, encode, device="cpu", rank=r, world_size=3) for r in range(3)]
    assert [p.total for p in parts] == [5, 4, 4]
    assert sum(p.correct for p in parts) == whole.correct


def test_the_official_split_context_fields_and_string_labels_are_read(tmp_path: Path) -> None:
    examples = hellaswag.load_examples(write_hellaswag(tmp_path / "hs.jsonl", 5, split_context=True))
    assert len(examples) == 5 and all(isinstance(e.label, int) and e.context for e in examples)
    assert hellaswag.load_examples(tmp_path / "hs.jsonl", limit=2) == examples[:2]


def test_a_row_longer_than_the_context_window_keeps_its_ending(encode) -> None:
    example = hellaswag.Example(" ".join(["word"] * 100), ("one two", "three", "four five six", "seven"), 0)
    rendered = hellaswag.render_example(example, encode, block_size=16)
    assert rendered.tokens.shape[1] <= 16
    for row in range(4):
        ending = encode(" " + example.endings[row])
        kept = rendered.tokens[row][rendered.mask[row].bool()].tolist()
        assert kept == ending


@pytest.mark.parametrize("content, says", [
    ('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n', "endings"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 7}\n', "label"),
    ("not json\n", "not JSON"),
    ("", "holds no HellaSwag examples"),
])
def test_a_malformed_file_is_one_line_naming_the_problem(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(hellaswag.HellaSwagUnavailable, match=says):
        hellaswag.load_examples(path)


def test_data_comes_from_the_flag_then_the_cache_and_offline_never_downloads(tmp_path: Path, monkeypatch) -> None:
    given = write_hellaswag(tmp_path / "given.jsonl", 2)
    assert hellaswag.resolve_data(str(given), tmp_path / "cache") == given
    with pytest.raises(hellaswag.HellaSwagUnavailable, match="no such file"):
        hellaswag.resolve_data(str(tmp_path / "missing.jsonl"), tmp_path / "cache")
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(hellaswag.HellaSwagUnavailable, match="--hellaswag_path"):
        hellaswag.resolve_data(None, tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    cached = write_hellaswag(tmp_path / "cache" / hellaswag.CACHE_NAME, 2)
    assert hellaswag.resolve_data(None, tmp_path / "cache") == cached


@pytest.mark.slow
def test_the_one_off_command_scores_a_checkpoint_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    from tests.checkpoint_factory import TINY, make_checkpoint

    data = write_hellaswag(tmp_path / "hs.jsonl", 8)
    checkpoint = tmp_path / "model_00005.pt"
    make_checkpoint(checkpoint, 5, TINY)
    command = [sys.executable, "-m", "worker.hellaswag", str(checkpoint), "--hellaswag_path", str(data)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("HellaSwag accuracy: ") and "/8=" in done.stdout
    bad = subprocess.run([*command[:3], str(tmp_path / "nope.pt"), *command[4:]], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "Traceback" not in bad.stderr
