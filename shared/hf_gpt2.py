"""Our GPT's weights <-> Hugging Face's ``GPT2LMHeadModel``: the pure mapping, both ways.

Both models are the same network (pre-LN blocks, learned positions, tanh GELU, tied embeddings),
stored differently:

* HF's attention and MLP projections are ``Conv1D`` modules whose weight is ``(in, out)``; ours
  are ``nn.Linear``, ``(out, in)``. The four matrices ``attn.c_attn``, ``attn.c_proj``,
  ``mlp.c_fc`` and ``mlp.c_proj`` are transposed on the way; biases, layer norms and embeddings
  are not.
* Our vocabulary is padded from 50257 to a multiple of 128 (50304) for fast kernels. HF's GPT-2
  has exactly 50257 rows. Export drops the padding rows; import pads them back **with zeros**
  (those ids are never inputs, and as output rows a zero row gives logit 0; training moves them
  like any other row). So a model imported from HF computes the same logits for the 50257 real
  tokens, and its loss differs from the original checkpoint's only by the padding rows' share
  of the softmax.
* The head is tied to ``wte``: HF's own files store ``transformer.wte.weight`` only (safetensors
  cannot hold one tensor under two names), and so do we. OpenAI's published file has no
  ``transformer.`` prefix and carries ``h.N.attn.bias`` causal-mask buffers: both are accepted,
  the buffers ignored.

Everything here works on tensors through their own methods, so ``shared/`` still imports no torch.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.checkpoint_format import MODEL_CONFIG_KEYS, expected_model_shapes
from shared.tokenizer import EOT_TOKEN

HF_VOCAB_SIZE = 50257  # GPT-2's real vocabulary: 50256 BPE tokens + <|endoftext|>
LAYER_NORM_EPSILON = 1e-5  # nn.LayerNorm's default, and GPT-2's
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_BUFFERS = re.compile(r"^(?:transformer\.)?h\.\d+\.attn\.(?:bias|masked_bias)$")
_TIED_HEAD = "lm_head.weight"
_WTE = "transformer.wte.weight"


class HFMappingError(ValueError):
    """The weights or config have no exact equivalent on the other side; the message is one line."""


# --- config ---------------------------------------------------------------------------------------

def hf_config_dict(config: Mapping[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """``config.json`` of a ``GPT2LMHeadModel`` with our model's architecture (``config``: our dict;
    ``dtype``: the stored tensors' type, ``float32`` for everything the worker saves)."""
    dropout = float(config.get("dropout", 0.0) or 0.0)
    block_size = int(config["block_size"])
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": HF_VOCAB_SIZE,
        "n_positions": block_size,
        "n_ctx": block_size,
        "n_embd": int(config["n_embd"]),
        "n_layer": int(config["n_layer"]),
        "n_head": int(config["n_head"]),
        "n_inner": None,
        "activation_function": "gelu_new",  # the tanh approximation, = nn.GELU(approximate="tanh")
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "layer_norm_epsilon": LAYER_NORM_EPSILON,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "summary_activation": None,
        "summary_proj_to_labels": True,
        "summary_first_dropout": 0.1,
        "use_cache": True,
        "bos_token_id": EOT_TOKEN,
        "eos_token_id": EOT_TOKEN,
        "tie_word_embeddings": True,
        "torch_dtype": dtype,
    }


def generation_config_dict() -> dict[str, Any]:
    """``generation_config.json``: GPT-2's special ids, so ``generate`` needs no extra arguments."""
    return {"bos_token_id": EOT_TOKEN, "eos_token_id": EOT_TOKEN, "pad_token_id": EOT_TOKEN}


def gpt_config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """Our config dict (``vocab_size`` = the file's, unpadded) from a GPT-2 ``config.json``.

    Refuses settings our GPT does not compute: another activation, layer-norm epsilon, MLP width,
    attention scaling, an untied head, cross-attention.
    """
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise HFMappingError(f"config.json describes a {model_type!r} model, not GPT-2")
    config = _hf_core_config(hf)
    unsupported = _hf_unsupported_settings(hf, config)
    if unsupported:
        raise HFMappingError("the GPT-2 config has no gpt2sup equivalent: " + "; ".join(unsupported))
    return config


def _hf_setting_differs(hf: Mapping[str, Any], key: str, wanted: Any, default: Any) -> bool:
    """Whether ``hf[key]`` (``default`` when absent) is not ``wanted``; floats compare within 1e-12."""
    value = hf.get(key, default)
    if isinstance(wanted, float):
        return not isinstance(value, (int, float)) or abs(float(value) - wanted) > 1e-12
    return value != wanted


def _hf_core_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The shape settings of a GPT-2 ``config.json`` as our config dict; a missing or unusable one is an error."""
    try:
        return {
            "block_size": int(hf["n_positions"]),
            "vocab_size": int(hf["vocab_size"]),
            "n_layer": int(hf["n_layer"]),
            "n_head": int(hf["n_head"]),
            "n_embd": int(hf["n_embd"]),
            "dropout": float(hf.get("resid_pdrop", 0.0) or 0.0),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise HFMappingError(f"config.json lacks a usable GPT-2 setting ({error})") from None


def _hf_unsupported_settings(hf: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """One phrase per setting of ``hf`` that our GPT does not compute (empty when all map)."""
    def differs(key: str, wanted: Any, default: Any) -> bool:
        return _hf_setting_differs(hf, key, wanted, default)

    unsupported = []
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        unsupported.append(f"activation_function {hf.get('activation_function')!r} (ours is gelu_new, tanh GELU)")
    if differs("layer_norm_epsilon", LAYER_NORM_EPSILON, LAYER_NORM_EPSILON):
        unsupported.append(f"layer_norm_epsilon {hf.get('layer_norm_epsilon')} (ours is 1e-05)")
    if hf.get("n_inner") not in (None, 4 * config["n_embd"]):
        unsupported.append(f"n_inner {hf.get('n_inner')} (ours is 4 x n_embd)")
    if differs("scale_attn_weights", True, True) or differs("scale_attn_by_inverse_layer_idx", False, False):
        unsupported.append("another attention scaling")
    if differs("tie_word_embeddings", True, True):
        unsupported.append("an untied lm_head (ours is tied to wte)")
    if differs("add_cross_attention", False, False):
        unsupported.append("cross-attention")
    if config["n_head"] <= 0 or config["n_embd"] % config["n_head"]:
        unsupported.append(f"n_embd {config['n_embd']} not divisible by n_head {config['n_head']}")
    return unsupported


# --- weights ---------------------------------------------------------------------------------------

def check_our_state_dict(state: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """``state`` must be exactly build-nanogpt's GPT for ``config`` (names and shapes), tied."""
    missing = [k for k in MODEL_CONFIG_KEYS if k not in config]
    if missing:
        raise HFMappingError(f"the checkpoint's model config lacks {', '.join(missing)}")
    if int(config["vocab_size"]) < HF_VOCAB_SIZE:
        raise HFMappingError(f"vocab_size {config['vocab_size']} is smaller than GPT-2's {HF_VOCAB_SIZE}")
    expected = expected_model_shapes(config)
    extra = sorted(set(state) - set(expected))
    absent = sorted(set(expected) - set(state))
    if extra or absent:
        what = "; ".join(part for part in (
            f"unexpected {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else "") if extra else "",
            f"missing {', '.join(absent[:3])}" + (" ..." if len(absent) > 3 else "") if absent else "") if part)
        raise HFMappingError(f"the weights are not a GPT-2 of this config ({what})")
    wrong = [f"{k} {tuple(state[k].shape)} != {shape}" for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        raise HFMappingError(f"the weights do not have GPT-2's shapes ({'; '.join(wrong[:3])})")
    if not state[_TIED_HEAD].equal(state[_WTE]):
        raise HFMappingError("lm_head.weight is not tied to transformer.wte.weight; GPT-2 ties them")


def to_hf_state_dict(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Our state dict -> HF ``GPT2LMHeadModel`` tensors as HF saves them: Conv1D matrices
    transposed, vocabulary padding removed, the tied head stored once (as ``transformer.wte``).
    Each tensor is a fresh contiguous copy (safetensors refuses views and shared storage)."""
    check_our_state_dict(state, config)
    hf: dict[str, Any] = {}
    for name, tensor in state.items():
        if name == _TIED_HEAD:
            continue
        if name == _WTE:
            tensor = tensor[:HF_VOCAB_SIZE]
        elif name.endswith(_TRANSPOSED):
            tensor = tensor.t()
        hf[name] = tensor.detach().contiguous().clone()
    return hf


def _our_name(hf_name: str) -> str:
    return hf_name if hf_name.startswith("transformer.") or hf_name == _TIED_HEAD else "transformer." + hf_name


def infer_hf_architecture(hf_state: Mapping[str, Any]) -> dict[str, Any]:
    """What the tensors alone say (a bare ``model.safetensors`` with no ``config.json``): every
    size but ``n_head``, which no shape records (``None`` here; the caller decides)."""
    names = {_our_name(k): v for k, v in hf_state.items() if not _BUFFERS.match(k)}
    try:
        vocab, n_embd = (int(d) for d in names[_WTE].shape)
        block_size = int(names["transformer.wpe.weight"].shape[0])
    except (KeyError, ValueError) as error:
        raise HFMappingError(f"the file holds no GPT-2 embeddings ({error})") from None
    layers = {int(m.group(1)) for k in names if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    return {"block_size": block_size, "vocab_size": vocab, "n_layer": len(layers), "n_head": None, "n_embd": n_embd}


def from_hf_state_dict(hf_state: Mapping[str, Any], config: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """HF ``GPT2LMHeadModel`` tensors -> our state dict for ``config`` (HF's vocabulary), with
    the vocabulary padded by zero rows to ``vocab_size`` and ``lm_head.weight`` the same tensor
    as ``transformer.wte.weight`` (tied). Accepts names with or without ``transformer.``, ignores
    the attention-mask buffers, refuses anything else that is not GPT-2's."""
    names: dict[str, Any] = {}
    for hf_name, tensor in hf_state.items():
        if _BUFFERS.match(hf_name):
            continue
        names[_our_name(hf_name)] = tensor
    head = names.pop(_TIED_HEAD, None)
    hf_vocab = int(config["vocab_size"])
    if vocab_size < hf_vocab:
        raise HFMappingError(f"the file's vocabulary ({hf_vocab}) is larger than the model's vocab_size {vocab_size}")
    ours: dict[str, Any] = {}
    for name, tensor in names.items():
        ours[name] = tensor.t().contiguous() if name.endswith(_TRANSPOSED) else tensor
    expected = expected_model_shapes({**config, "vocab_size": hf_vocab})
    expected.pop(_TIED_HEAD)
    extra = sorted(set(ours) - set(expected))
    absent = sorted(set(expected) - set(ours))
    if extra or absent:
        parts = ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + \
                ([f"missing {', '.join(absent[:3])}"] if absent else [])
        raise HFMappingError(f"the file is not a GPT-2 of its config ({'; '.join(parts)})")
    wrong = [f"{k} {tuple(ours[k].shape)} != {s}" for k, s in expected.items() if tuple(ours[k].shape) != s]
    if wrong:
        raise HFMappingError(f"the file's tensors do not have GPT-2's shapes ({'; '.join(wrong[:3])})")
    wte = ours[_WTE]
    if head is not None and (tuple(head.shape) != tuple(wte.shape) or not head.equal(wte)):
        raise HFMappingError("the file's lm_head.weight differs from wte: an untied head has no gpt2sup equivalent")
    if vocab_size > hf_vocab:  # zero rows for the padding ids (module doc)
        padded = wte.new_zeros((vocab_size, wte.shape[1]))
        padded[:hf_vocab] = wte
        wte = padded
    ours[_WTE] = wte
    result = {name: ours[name] for name in expected}  # our state_dict's order
    result[_TIED_HEAD] = wte
    return result
