"""worker.finetune_dolly and worker.data.finetune_data: template, loss mask, split, loader state; then
real processes: a supervised fine-tune killed mid-way resumes bit for bit, and a pretrained file of
another architecture is refused with one line.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from shared.exit_codes import WorkerExit
from shared.tokenizer import get_gpt2_encoding
from worker.data.finetune_data import (
    IGNORE_INDEX,
    InstructionExample,
    PackedExamplesLoader,
    load_dolly,
    pack,
    prompt_text,
    split_train_val,
)
from worker.data.shards import DataError
from worker.model import GPT, build_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORDS = ["what", "is", "the", "capital", "of", "france", "paris", "a", "city", "in", "europe", "answer",
         "please", "explain", "why", "sky", "blue", "light", "scatters", "simple"]


def write_dolly(path: Path, count: int, seed: int = 0) -> Path:
    """A Dolly-15k-format jsonl of ``count`` made-up records (a third without context)."""
    rng = torch.Generator().manual_seed(seed)

    def words(low: int, high: int) -> str:
        n = int(torch.randint(low, high, (1,), generator=rng))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=rng))

    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"instruction": words(3, 9), "context": words(2, 10) if i % 3 else "",
                                     "response": words(4, 20), "category": "open_qa"}) + "\n" for i in range(count))
    return path


@pytest.fixture(scope="module")
def encoding():
    return get_gpt2_encoding()


def test_the_template_and_the_mask_train_on_response_tokens_only(encoding) -> None:
    examples = [InstructionExample("Name a city.", "", "Paris."), InstructionExample("Why?", "The sky.", "Light.")]
    assert prompt_text(examples[0]) == "### Instruction:\nName a city.\n\n### Response:\n"
    assert prompt_text(examples[1]) == "### Instruction:\nWhy?\n\n### Context:\nThe sky.\n\n### Response:\n"
    packed = pack(examples, encoding.encode_ordinary, encoding.eot_token)
    expected: list[tuple[int, bool]] = []
    for example, response in zip(examples, ("Paris.", "Light."), strict=True):
        expected += [(t, False) for t in encoding.encode_ordinary(prompt_text(example))]
        expected += [(t, True) for t in [*encoding.encode_ordinary(response), encoding.eot_token]]
    assert list(zip(packed.tokens.tolist(), packed.trained.tolist(), strict=True)) == expected

    n = len(expected)
    loader = PackedExamplesLoader(packed, "train", 1, n - 1)
    x, y = loader.next_batch()
    assert x[0].tolist() == [t for t, _ in expected[:-1]]
    assert y[0].tolist() == [t if trained else IGNORE_INDEX for t, trained in expected[1:]]


def test_the_loss_ignores_prompt_tokens_changing_one_changes_nothing(tmp_path: Path, encoding) -> None:
    """A window ending in the next example's prompt: rewriting those prompt tokens (inputs and
    targets) must leave the loss alone; were their targets not masked, it would change."""
    examples = [InstructionExample("Say hi.", "", "Hi there, friend."), InstructionExample("Count to three.", "", "1 2 3")]
    packed = pack(examples, encoding.encode_ordinary, encoding.eot_token)
    first_len = len(encoding.encode_ordinary(prompt_text(examples[0]))) + len(encoding.encode_ordinary("Hi there, friend.")) + 1
    window = first_len + 4  # four tokens into the second example's prompt
    x, y = PackedExamplesLoader(packed, "train", 1, window).next_batch()
    torch.manual_seed(0)
    model = GPT(build_config("tiny"))
    model.eval()
    with torch.no_grad():
        _, loss = model(x, y)
        changed_x, changed_y = x.clone(), y.clone()
        changed_x[0, first_len:] = 999
        changed_y[0, first_len - 1:] = torch.where(changed_y[0, first_len - 1:] == IGNORE_INDEX, IGNORE_INDEX, 999)
        _, changed = model(changed_x, changed_y)
        logits, _ = model(x)
        trained = y[0] != IGNORE_INDEX
        independent = F.cross_entropy(logits[0][trained], y[0][trained])
    assert torch.equal(loss, changed)
    assert torch.allclose(loss, independent)
    assert 0 < int(trained.sum()) < window


def test_the_split_is_fixed_whatever_the_seed_and_holds_out_at_least_one(tmp_path: Path) -> None:
    examples = load_dolly(write_dolly(tmp_path / "d.jsonl", 40))
    train, val = split_train_val(examples, 0.1)
    assert (len(train), len(val)) == (36, 4)
    assert split_train_val(examples, 0.1) == (train, val)
    assert not set(train) & set(val)
    assert len(split_train_val(examples[:3], 0.01)[1]) == 1


@pytest.mark.parametrize("content, says", [
    ('{"instruction": "a"}\n', "'instruction' and 'response'"),
    ("not json\n", "not JSON"),
    ('{"instruction": "a", "response": "b", "context": 3}\n', "'context'"),
])
def test_a_malformed_dolly_file_is_one_line_naming_the_line(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok", "response": "ok"}\n' + content)
    with pytest.raises(DataError, match=says) as caught:
        load_dolly(path)
    assert ":2:" in str(caught.value)


def test_the_loader_state_resumes_the_same_batches(tmp_path: Path, encoding) -> None:
    packed = pack(load_dolly(write_dolly(tmp_path / "d.jsonl", 30)), encoding.encode_ordinary, encoding.eot_token)
    loader = PackedExamplesLoader(packed, "train", 2, 16, grad_accum_steps=2)
    for _ in range(6):
        loader.next_batch()
    state = loader.state_dict()
    ahead = [loader.next_batch() for _ in range(40)]  # wraps around the stream too
    again = PackedExamplesLoader(packed, "train", 2, 16, grad_accum_steps=2)
    again.load_state_dict(state)
    for (x, y), (x2, y2) in zip(ahead, (again.next_batch() for _ in range(40)), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert set(state) == {"shard_index", "position"}


# --- real processes ----------------------------------------------------------------------------

FT_ARGS = ["--model", "tiny", "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", "128",
           "--max_steps", "10", "--checkpoint_interval", "3", "--eval_interval", "5", "--val_steps", "1",
           "--val_fraction", "0.2",
           "--hellaswag_interval", "0", "--generate_interval", "0", "--dropout", "0.1"]


def pretrained(path: Path, model: str = "tiny") -> Path:
    from tests.checkpoint_factory import make_checkpoint

    config = {**build_config(model).to_dict(), "dropout": 0.0}
    return make_checkpoint(path, 7, config)


@pytest.mark.slow
def test_a_supervised_finetune_killed_mid_way_resumes_bitwise(tmp_path: Path) -> None:
    from tests.supervisor.helpers import (
        assert_same_weights,
        child_env,
        console_text,
        events_named,
        start_supervisor,
        wait_exit,
    )

    data, base = write_dolly(tmp_path / "dolly.jsonl", 50), pretrained(tmp_path / "pre" / "model_00007.pt")
    args = [*FT_ARGS, "--pretrained_checkpoint", str(base), "--data_path", str(data)]
    reference = tmp_path / "reference"
    # One process (two accumulation steps per step): the recovery, not the rank count, is the point.
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           "-m", "worker.finetune_dolly", "--log_dir", str(reference), *args],
                          cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "supervised"
    crash = {"GPT2SUP_INJECT_CRASH_AT_STEP": "7", "GPT2SUP_INJECT_CRASH_ONCE_FILE": str(tmp_path / "crashed-once")}
    proc = start_supervisor(run, "--worker", "worker.finetune_dolly", nproc=1, worker_args=args, env=crash)
    assert wait_exit(proc, run, timeout=600) == 0, console_text(run)[-3000:]
    assert len(events_named(run, "restarted")) == 1
    assert_same_weights(run / "model_00009.pt", reference / "model_00009.pt")
    # The relaunch resumed the run's own checkpoint (step 6), not the pretrained weights.
    launches = (run / "attempts" / "002.log").read_text()
    assert "resumed from" in launches and "model_00006.pt" in launches, launches[-2000:]
    assert "loaded pretrained weights" not in launches


@pytest.mark.slow
def test_a_pretrained_checkpoint_of_another_architecture_is_refused_in_one_line(tmp_path: Path) -> None:
    data, base = write_dolly(tmp_path / "dolly.jsonl", 20), pretrained(tmp_path / "model_00007.pt", "mini")
    done = subprocess.run([sys.executable, "-m", "worker.finetune_dolly", "--log_dir", str(tmp_path / "run"),
                           *FT_ARGS, "--pretrained_checkpoint", str(base), "--data_path", str(data)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == WorkerExit.RUN_MISMATCH, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("finetune_dolly: error:")]
    assert len(errors) == 1 and "different model" in errors[0] and "Traceback" not in done.stderr


def test_without_a_pretrained_checkpoint_it_is_a_usage_error_before_anything_is_written(tmp_path: Path, capsys) -> None:
    from worker import finetune_dolly

    with pytest.raises(SystemExit) as exited:
        finetune_dolly.main(["--log_dir", str(tmp_path / "run"), "--data_path", str(tmp_path / "d.jsonl")])
    assert exited.value.code == 2
    assert "--pretrained_checkpoint" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


# --- issue 19 §6: Dolly on a small file, and samples in the instruction template --------------------


def test_the_working_val_fraction_holds_out_one_batch_of_tokens(tmp_path: Path, encoding) -> None:
    from worker.data.finetune_data import working_val_fraction

    examples = load_dolly(write_dolly(tmp_path / "d.jsonl", 200))
    needed = 8 * 64 + 1
    fraction = working_val_fraction(examples, encoding.encode_ordinary, needed)
    assert fraction is not None and 0.05 < fraction < 0.5
    held_out = split_train_val(examples, fraction)[1]
    assert pack(held_out, encoding.encode_ordinary, encoding.eot_token).tokens.size >= needed
    assert pack(split_train_val(examples, 0.05)[1], encoding.encode_ordinary, encoding.eot_token).tokens.size < needed
    assert working_val_fraction(examples, encoding.encode_ordinary, 10) == 0.05  # the default when it fits
    assert working_val_fraction(examples[:4], encoding.encode_ordinary, 10**6) is None  # nothing fits


def test_finetune_samples_use_the_instruction_template() -> None:
    from worker.finetune_dolly import build_finetune_parser

    prompt = build_finetune_parser().parse_args(["--pretrained_checkpoint", "x.pt"]).generate_prompt
    assert prompt.startswith("### Instruction:\n") and prompt.endswith("### Response:\n"), prompt
    assert "language model" not in prompt


@pytest.mark.slow
def test_a_small_dolly_file_fine_tunes_with_the_default_val_fraction_and_samples_an_instruction(tmp_path: Path) -> None:
    from tests.supervisor.helpers import child_env

    data, base = write_dolly(tmp_path / "dolly.jsonl", 200), pretrained(tmp_path / "pre" / "model_00007.pt")
    log_dir = tmp_path / "ft"
    args = ["--model", "tiny", "--micro_batch_size", "8", "--seq_len", "64", "--total_batch_size", "512",
            "--max_steps", "2", "--checkpoint_interval", "0", "--eval_interval", "1", "--val_steps", "1",
            "--hellaswag_interval", "0", "--generate_interval", "1", "--pretrained_checkpoint", str(base),
            "--data_path", str(data), "--log_dir", str(log_dir)]
    done = subprocess.run([sys.executable, "-m", "worker.finetune_dolly", *args], cwd=PROJECT_ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "--val_fraction 0." in done.stdout + done.stderr  # the value it used, said once
    samples = (log_dir / "samples.txt").read_text()
    assert "### Instruction" in samples and "language model" not in samples, samples[:500]
