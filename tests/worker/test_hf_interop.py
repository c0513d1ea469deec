"""Hugging Face GPT-2 interop: export (``supervisor.checkpoints.hf_export``) and import (``--pretrained_checkpoint``
DIR or ``model.safetensors``), on real files.

Fast tests map real files in-process: export -> import is bitwise, OpenAI's key spelling loads,
an HF-written directory survives import + export tensor for tensor, unsupported configs and a
missing ``safetensors`` package are one line. Tests that import ``transformers`` (logits, greedy
generation, the tokenizer) or start real workers are marked slow.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.exit_codes import WorkerExit
from shared.hf_files import (
    INSTALL_HINT,
    MODEL_FILE,
    HFFileError,
    fingerprint_hf_source,
    load_tensors,
)
from shared.hf_gpt2 import (
    HF_VOCAB_SIZE,
    HFMappingError,
    from_hf_state_dict,
    gpt_config_from_hf,
    to_hf_state_dict,
)
from shared.hf_tokenizer import packaged_tokenizer_files
from supervisor.checkpoints.hf_export import ExportError, export_model
from tests.worker.helpers import FAST_ARGS, read_metrics, run_ok
from worker.checkpointing.hf_import import load_hf_pretrained
from worker.errors import WorkerError
from worker.model import GPT, GPTConfig, build_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMALL = {"block_size": 64, "vocab_size": 50304, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0}
WTE = "transformer.wte.weight"


def small_model(seed: int = 0, config: dict | None = None) -> GPT:
    """Our GPT with every parameter moved off its init (LN weights != 1, biases != 0), so a wrong
    transpose or a dropped bias changes the logits."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_dict(config or SMALL))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def save_checkpoint(path: Path, model: GPT, step: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": model.config.to_dict(), "step": step}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[GPT, Path]:
    """A small model and its export, made once for the module."""
    root = tmp_path_factory.mktemp("hf")
    model = small_model()
    export_model(model.state_dict(), model.config.to_dict(), root / "out")
    return model, root / "out"


# --- export -> import -------------------------------------------------------------------------------

def test_export_then_import_gives_every_parameter_bitwise_and_zero_padding_rows(exported) -> None:
    model, outdir = exported
    loaded = load_hf_pretrained(outdir, model.config.architecture())
    original = model.state_dict()
    assert list(loaded["model"]) == list(original)
    for name, tensor in original.items():
        if name in (WTE, "lm_head.weight"):
            assert torch.equal(loaded["model"][name][:HF_VOCAB_SIZE], tensor[:HF_VOCAB_SIZE]), name
            assert torch.count_nonzero(loaded["model"][name][HF_VOCAB_SIZE:]) == 0, name
        else:
            assert torch.equal(loaded["model"][name], tensor), name
    assert loaded["model"]["lm_head.weight"] is loaded["model"][WTE]  # tied, as in our GPT
    assert loaded["config"] == model.config.architecture() | {"dropout": 0.0}
    fresh = GPT(GPTConfig.from_dict(loaded["config"]))
    fresh.load_state_dict(loaded["model"])
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()


def test_the_exported_file_has_hf_layout_one_tied_embedding_and_no_padding(exported) -> None:
    model, outdir = exported
    tensors = load_tensors(outdir / MODEL_FILE)
    assert "lm_head.weight" not in tensors and tensors[WTE].shape == (HF_VOCAB_SIZE, 32)
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out)
    assert torch.equal(tensors["transformer.h.1.mlp.c_fc.weight"], model.transformer.h[1].mlp.c_fc.weight.detach().t())
    config = json.loads((outdir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["vocab_size"], config["n_positions"], config["n_embd"], config["n_layer"], config["n_head"]) == \
        (HF_VOCAB_SIZE, 64, 32, 2, 2)
    assert config["activation_function"] == "gelu_new" and config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == "float32" and tensors[WTE].dtype == torch.float32
    assert {p.name for p in outdir.iterdir()} == {
        "config.json", "generation_config.json", MODEL_FILE, "vocab.json", "merges.txt",
        "tokenizer_config.json", "special_tokens_map.json"}


def test_openai_style_bare_safetensors_without_prefix_with_mask_buffers_loads(tmp_path: Path, exported) -> None:
    """OpenAI's file on the Hub: no ``transformer.`` prefix, ``h.N.attn.bias`` buffers, no head, no config."""
    from safetensors.torch import save_file

    model, outdir = exported
    tensors = {name.removeprefix("transformer."): t for name, t in load_tensors(outdir / MODEL_FILE).items()}
    for layer in range(2):
        tensors[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    bare = tmp_path / "weights" / "gpt2.safetensors"
    bare.parent.mkdir()
    save_file(tensors, str(bare))
    notes: list[str] = []
    loaded = load_hf_pretrained(bare, model.config.architecture(), notes.append)
    assert torch.equal(loaded["model"]["transformer.h.1.attn.c_proj.weight"], model.transformer.h[1].attn.c_proj.weight)
    assert torch.equal(loaded["model"][WTE][:HF_VOCAB_SIZE], model.transformer.wte.weight[:HF_VOCAB_SIZE])
    assert len(notes) == 1 and "n_head" in notes[0]


@pytest.mark.slow  # importing transformers takes seconds
def test_an_hf_written_directory_imported_and_exported_again_is_tensor_identical(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=HF_VOCAB_SIZE, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    hf_model.save_pretrained(tmp_path / "hf")
    loaded = load_hf_pretrained(tmp_path / "hf", GPTConfig.from_dict(SMALL).architecture())
    export_model(loaded["model"], loaded["config"], tmp_path / "again")
    before, after = load_tensors(tmp_path / "hf" / MODEL_FILE), load_tensors(tmp_path / "again" / MODEL_FILE)
    before = {k: v for k, v in before.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name


# --- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "says"), [
    ({"activation_function": "relu"}, "activation_function"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"n_inner": 100}, "n_inner"),
    ({"tie_word_embeddings": False}, "untied"),
    ({"model_type": "llama"}, "not GPT-2"),
])
def test_a_gpt2_config_without_our_equivalent_is_refused(change: dict, says: str) -> None:
    config = {"model_type": "gpt2", "n_positions": 64, "vocab_size": HF_VOCAB_SIZE, "n_layer": 2, "n_head": 2,
              "n_embd": 32} | change
    with pytest.raises(HFMappingError, match=says):
        gpt_config_from_hf(config)


def test_an_untied_head_unknown_tensors_or_a_small_vocabulary_are_refused(exported) -> None:
    model, outdir = exported
    tensors = load_tensors(outdir / MODEL_FILE)
    hf_config = SMALL | {"vocab_size": HF_VOCAB_SIZE}
    with pytest.raises(HFMappingError, match="untied head"):
        from_hf_state_dict(tensors | {"lm_head.weight": tensors[WTE] + 1}, hf_config, 50304)
    with pytest.raises(HFMappingError, match="unexpected transformer.h.0.attn.q_proj"):
        from_hf_state_dict(tensors | {"h.0.attn.q_proj.weight": tensors[WTE]}, hf_config, 50304)
    with pytest.raises(HFMappingError, match="smaller than GPT-2"):
        small = small_model(config=SMALL | {"vocab_size": 50000})
        to_hf_state_dict(small.state_dict(), small.config.to_dict())
    state = dict(model.state_dict())
    state.pop("transformer.ln_f.bias")
    with pytest.raises(HFMappingError, match="missing transformer.ln_f.bias"):
        to_hf_state_dict(state, model.config.to_dict())


def test_a_directory_without_model_safetensors_names_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(HFFileError, match="pytorch_model.bin, a pickle"):
        load_hf_pretrained(tmp_path, SMALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HFFileError, match="without model.safetensors"):
        load_hf_pretrained(tmp_path / "empty", SMALL)


def test_without_the_safetensors_package_it_is_one_line_naming_the_extra(exported, monkeypatch, tmp_path) -> None:
    model, outdir = exported
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(WorkerError) as raised:
        load_hf_pretrained(outdir, model.config.architecture())
    assert raised.value.code == WorkerExit.USAGE and INSTALL_HINT in str(raised.value)
    with pytest.raises(ExportError) as refused:
        export_model(model.state_dict(), model.config.to_dict(), tmp_path / "x")
    assert refused.value.usage and INSTALL_HINT in str(refused.value) and not (tmp_path / "x").exists()


# --- fingerprint ---------------------------------------------------------------------------------------

def test_the_fingerprint_is_content_based_not_path_or_mtime_based(tmp_path: Path, exported) -> None:
    _, outdir = exported
    copy = tmp_path / "copy"
    shutil.copytree(outdir, copy)  # new path, new mtimes
    first, second = fingerprint_hf_source(outdir), fingerprint_hf_source(copy)
    assert first["content_digest"] == second["content_digest"] and first["path"] != second["path"]
    assert fingerprint_hf_source(copy / MODEL_FILE)["content_digest"] == first["content_digest"]  # config beside it
    other = small_model(seed=1)
    export_model(other.state_dict(), other.config.to_dict(), tmp_path / "other")
    assert fingerprint_hf_source(tmp_path / "other")["content_digest"] != first["content_digest"]
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"resid_pdrop": 0.5}))
    assert fingerprint_hf_source(copy)["content_digest"] != first["content_digest"]


# --- the tokenizer files -------------------------------------------------------------------------------

def test_the_derived_merges_rebuild_every_multi_byte_token_in_rank_order() -> None:
    files = packaged_tokenizer_files()
    assert len(files.vocab) == HF_VOCAB_SIZE and len(files.merges) == 50000 and files.vocab["<|endoftext|>"] == 50256
    assert files.merges[:3] == [("Ġ", "t"), ("Ġ", "a"), ("h", "e")]  # GPT-2's merges.txt begins so
    for index, (left, right) in enumerate(files.merges):
        assert files.vocab[left + right] == 256 + index  # merge i creates token 256 + i
        assert files.vocab[left] < 256 + index and files.vocab[right] < 256 + index


# --- transformers parity ---------------------------------------------------------------------------

TEXTS = ["Hello, I'm a language model,", "héllo wörld — 日本語 🙂 naïve café", "tabs\tand   runs of   spaces\n\n\n  ",
         "one<|endoftext|>two <|endoftext|>", "don't we'll I've 1234567 $3.50", "   leading and trailing   "]


@pytest.mark.slow
def test_the_exported_model_computes_our_logits_and_greedy_tokens(exported) -> None:
    transformers = pytest.importorskip("transformers")
    model, outdir = exported
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(outdir).eval()
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()  # loaded tied
    tokens = torch.randint(0, HF_VOCAB_SIZE, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens)[0][..., :HF_VOCAB_SIZE]
        theirs = hf_model(tokens).logits
    assert ours.dtype == theirs.dtype == torch.float32 and (ours - theirs).abs().max().item() < 1e-4

    prompt = tokens[:1, :5]
    greedy = prompt
    with torch.no_grad():
        for _ in range(20):
            logits = model(greedy)[0][:, -1, :HF_VOCAB_SIZE]  # padding ids are not tokens
            greedy = torch.cat([greedy, logits.argmax(dim=-1, keepdim=True)], dim=1)
        generated = hf_model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=50256,
                                      attention_mask=torch.ones_like(prompt))
    assert generated.tolist() == greedy.tolist()


@pytest.mark.slow
def test_the_exported_tokenizer_loads_offline_and_encodes_like_tiktoken(exported, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    from shared.tokenizer import get_gpt2_encoding

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, outdir = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(outdir)
    encoding = get_gpt2_encoding()
    assert len(tokenizer) == HF_VOCAB_SIZE and tokenizer.eos_token_id == 50256
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == encoding.encode(text, allowed_special="all"), text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("<|endoftext|>") == [50256]


# --- real workers ----------------------------------------------------------------------------------

def _worker(args: list[str], log_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.train_gpt2", "--log_dir", str(log_dir), *args],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False)


def _export_cli(checkpoint: Path, outdir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "supervisor.cli", "export", str(checkpoint), str(outdir)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_run_from_the_exported_directory_trains_from_the_original_weights(tmp_path: Path, launcher) -> None:
    """The first loss from OUTDIR equals, bit for bit, a run from the same .pt with its padding rows
    zeroed (what the import pads with), and the original's within the padding rows' share of the
    softmax; a relaunch with --auto_resume keeps the recorded HF identity."""
    args = [*FAST_ARGS, "--eval_interval", "0"]
    base = run_ok(launcher, tmp_path / "base", [*args, "--max_steps", "4"]).log_dir / "model_00003.pt"
    outdir = tmp_path / "exported"
    _export_cli(base, outdir)
    checkpoint = torch.load(base, map_location="cpu", weights_only=True)
    checkpoint["model"][WTE][HF_VOCAB_SIZE:] = 0  # lm_head is the same tensor
    zeroed = tmp_path / "zeroed.pt"
    torch.save(checkpoint, zeroed)

    runs = {}
    for name, source in (("hf", outdir), ("zeroed", zeroed), ("original", base)):
        launch = run_ok(launcher, tmp_path / name, [*args, "--max_steps", "3", "--pretrained_checkpoint", str(source)])
        assert "loaded pretrained weights" in launch.stdout()
        runs[name] = [m["loss"] for m in read_metrics(launch.log_dir)]
    assert runs["hf"] == runs["zeroed"]  # every step, bit for bit
    assert abs(runs["hf"][0] - runs["original"][0]) < 1e-2
    recorded = json.loads((tmp_path / "hf" / "run_identity.json").read_text())["pretrained"]
    assert recorded["path"] == str(outdir.resolve()) and recorded["content_digest"] == \
        fingerprint_hf_source(outdir)["content_digest"]

    again = run_ok(launcher, tmp_path / "hf", [*args, "--max_steps", "4", "--auto_resume",
                                                "--pretrained_checkpoint", str(outdir)])
    assert "resumed from" in again.stdout() and "loaded pretrained weights" not in again.stdout()


@pytest.mark.slow
def test_a_worker_refuses_an_hf_model_of_another_architecture_a_broken_or_a_missing_one(tmp_path: Path) -> None:
    model = small_model(config=SMALL)
    assert build_config("tiny").n_embd == 64 != SMALL["n_embd"]  # not --model tiny
    export_model(model.state_dict(), model.config.to_dict(), tmp_path / "small")
    done = _worker([*FAST_ARGS, "--max_steps", "2", "--pretrained_checkpoint", str(tmp_path / "small")], tmp_path / "a")
    assert done.returncode == WorkerExit.RUN_MISMATCH, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("train_gpt2: error:")]
    assert len(errors) == 1 and "different model" in errors[0] and "n_embd 32 != 64" in errors[0], done.stderr
    assert "Traceback" not in done.stderr

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "small", broken)
    (broken / MODEL_FILE).write_bytes((broken / MODEL_FILE).read_bytes()[:1000])
    done = _worker([*FAST_ARGS, "--max_steps", "2", "--pretrained_checkpoint", str(broken)], tmp_path / "b")
    assert done.returncode == WorkerExit.PRETRAINED_ERROR, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("train_gpt2: error:")]
    assert len(errors) == 1 and "cannot load pretrained weights" in errors[0] and "Traceback" not in done.stderr

    done = _worker([*FAST_ARGS, "--max_steps", "2", "--pretrained_checkpoint", str(tmp_path / "nowhere")], tmp_path / "c")
    assert done.returncode == WorkerExit.PRETRAINED_ERROR, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("train_gpt2: error:")]
    assert len(errors) == 1 and "not found" in errors[0] and "Traceback" not in done.stderr


def test_an_hf_directory_with_an_unreadable_config_is_a_pretrained_error_never_a_bad_checkpoint(
        exported, tmp_path: Path) -> None:
    """Exit 11, not 4: the supervisor must neither look for the source in the run directory to
    rename it nor relaunch it as a bad checkpoint (issue 19, section 4)."""
    from shared.run_dir import RunDir
    from worker.checkpointing.checkpoint import CheckpointManager

    model, outdir = exported
    bad = tmp_path / "bad_config"
    shutil.copytree(outdir, bad)
    (bad / "config.json").write_text("{ not json")
    manager = CheckpointManager(RunDir.at(tmp_path / "run"), interval=0)
    with pytest.raises(WorkerError) as raised:
        manager._load_pretrained(bad, model.config.architecture(), None)
    assert raised.value.code == WorkerExit.PRETRAINED_ERROR and raised.value.bad_checkpoint is None
    assert "cannot load pretrained weights" in str(raised.value) and "config.json" in str(raised.value)
