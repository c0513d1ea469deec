"""The checkpoint dict (docs/checkpoints.md) as a contract both sides can check.

The worker writes it; ``gpt2sup verify`` and the supervisor's pre-restart validation read it.
Everything here is plain Python so it imports without torch.
"""
from __future__ import annotations

from typing import Any

FORMAT_VERSION = 1
# Every format_version this install reads. A file with a higher one was written by a newer
# gpt2sup: that is a property of this install, not damage, so it is never quarantined.
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION,)

# build-nanogpt's keys (docs/checkpoints.md), plus our own ``format_version`` and ``train_config``.
REQUIRED_KEYS = (
    "model",
    "optimizer",
    "config",
    "step",
    "val_loss",
    "train_loader_state",
    "rng_state",
    "cuda_rng_state",
    "numpy_rng_state",
    "python_rng_state",
    "format_version",
)

MODEL_CONFIG_KEYS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")


def newer_format_version(checkpoint: Any) -> int | None:
    """The file's ``format_version`` when it is newer than every version this install reads.

    Checked before anything else in the file is looked at: a newer format may have other keys, and
    judging it by this install's rules would call a sound file damaged.
    """
    if not isinstance(checkpoint, dict):
        return None
    version = checkpoint.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > max(SUPPORTED_FORMAT_VERSIONS):
        return version
    return None


def unsupported_format_message(name: str, version: int) -> str:
    """One line naming the file's version and the versions this install reads."""
    readable = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
    return (f"{name} has checkpoint format_version {version}, newer than this gpt2sup reads "
            f"(format_version {readable}): a newer gpt2sup wrote it, it is not damaged; upgrade gpt2sup to use it")


def expected_model_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the build-nanogpt GPT for ``config``.

    ``lm_head.weight`` is tied to ``transformer.wte.weight``; both names appear in
    ``state_dict()`` and both are listed here.
    """
    v, t, c, n_layer = (int(config[k]) for k in ("vocab_size", "block_size", "n_embd", "n_layer"))
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (v, c),
        "transformer.wpe.weight": (t, c),
    }
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (c,),
                p + "ln_1.bias": (c,),
                p + "attn.c_attn.weight": (3 * c, c),
                p + "attn.c_attn.bias": (3 * c,),
                p + "attn.c_proj.weight": (c, c),
                p + "attn.c_proj.bias": (c,),
                p + "ln_2.weight": (c,),
                p + "ln_2.bias": (c,),
                p + "mlp.c_fc.weight": (4 * c, c),
                p + "mlp.c_fc.bias": (4 * c,),
                p + "mlp.c_proj.weight": (c, 4 * c),
                p + "mlp.c_proj.bias": (c,),
            }
        )
    shapes["transformer.ln_f.weight"] = (c,)
    shapes["transformer.ln_f.bias"] = (c,)
    shapes["lm_head.weight"] = (v, c)
    return shapes


def parameter_count(config: dict[str, Any]) -> int:
    """Number of distinct parameters (the tied head counted once)."""
    total = 0
    for name, shape in expected_model_shapes(config).items():
        if name == "lm_head.weight":
            continue
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def minimum_checkpoint_bytes(config: dict[str, Any], *, has_optimizer_state: bool = True) -> int:
    """A floor for the file size: fp32 weights, plus AdamW's two fp32 moments once stepped.

    A file smaller than this cannot hold the tensors its own config promises (truncated).
    """
    per_copy = parameter_count(config) * 4
    return per_copy * (3 if has_optimizer_state else 1)
