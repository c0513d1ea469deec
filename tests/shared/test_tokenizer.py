"""The offline GPT-2 tokenizer encodes exactly like GPT-2 and refuses a corrupted rank table."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.tokenizer import (
    EOT_TOKEN,
    TokenizerError,
    build_gpt2_encoding,
    get_gpt2_encoding,
    packaged_rank_table_path,
)

# Contractions, digits, unicode, code, runs of whitespace and newlines: the regex's every branch.
VARIED_TEXT = (
    "Hello world! It's 2024; we'll train GPT-2 (124M) on 10,000,000,000 tokens.\n\n"
    "  Indented   spaces\tand\ttabs   \n"
    "Ünïcödé — café, naïve, 日本語のテキスト, emoji 🚀🔥, Ελληνικά.\n"
    "def f(x):\n    return x**2 + 3.14159  # comment\n"
    "They're, I've, you'd, she's, I'm, THEY'RE!!! ???\n"
    "<|endoftext|> appears here as ordinary text.   "
)


def test_hello_world_matches_gpt2() -> None:
    assert get_gpt2_encoding().encode("Hello world") == [15496, 995]


def test_endoftext_is_50256() -> None:
    enc = get_gpt2_encoding()
    assert EOT_TOKEN == 50256
    assert enc.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    assert enc.eot_token == EOT_TOKEN
    assert enc.n_vocab == 50257


def test_round_trip_of_varied_text() -> None:
    enc = get_gpt2_encoding()
    tokens = enc.encode_ordinary(VARIED_TEXT)
    assert enc.decode(tokens) == VARIED_TEXT
    assert max(tokens) < EOT_TOKEN  # ordinary text never yields the special token


def test_encoding_is_cached() -> None:
    assert get_gpt2_encoding() is get_gpt2_encoding()


def test_corrupted_table_is_rejected(tmp_path: Path) -> None:
    original = packaged_rank_table_path().read_bytes()
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0x01  # one flipped bit in the middle
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(bytes(corrupted))
    with pytest.raises(TokenizerError, match="corrupted"):
        build_gpt2_encoding(bad)

    truncated = tmp_path / "truncated.tiktoken"
    truncated.write_bytes(original[: len(original) // 2])
    with pytest.raises(TokenizerError, match="corrupted"):
        build_gpt2_encoding(truncated)

    with pytest.raises(TokenizerError, match="cannot read"):
        build_gpt2_encoding(tmp_path / "missing.tiktoken")

    # The genuine file still builds through the same uncached path.
    good = tmp_path / "good.tiktoken"
    good.write_bytes(original)
    assert build_gpt2_encoding(good).encode("Hello world") == [15496, 995]


def test_importing_shared_tokenizer_does_not_import_tiktoken_or_torch() -> None:
    code = (
        "import sys, shared.tokenizer; "
        "print('tiktoken' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_agrees_with_tiktoken_gpt2_where_available() -> None:
    """Only where tiktoken can load its own gpt2 files (network or a warm cache)."""
    child = textwrap.dedent(
        """
        import json, sys, tiktoken
        enc = tiktoken.get_encoding("gpt2")
        text = sys.stdin.read()
        print(json.dumps({"ordinary": enc.encode_ordinary(text),
                          "special": enc.encode(text, allowed_special="all")}))
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", child],
            input=VARIED_TEXT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("tiktoken.get_encoding('gpt2') timed out (no network?)")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        pytest.skip(f"tiktoken.get_encoding('gpt2') unavailable offline: {last[:200]}")
    reference = json.loads(result.stdout)
    enc = get_gpt2_encoding()
    assert enc.encode_ordinary(VARIED_TEXT) == reference["ordinary"]
    assert enc.encode(VARIED_TEXT, allowed_special="all") == reference["special"]


def test_pattern_matches_tiktokens_own_gpt2_pattern() -> None:
    """Offline cross-check of the one thing we wrote ourselves, the split regex: tokenizing with
    tiktoken's own r50k/gpt2 pattern over the same ranks gives identical tokens."""
    try:
        from tiktoken_ext.openai_public import r50k_pat_str
    except ImportError as exc:  # internal module; absent in some tiktoken builds
        pytest.skip(f"tiktoken_ext.openai_public not importable: {exc}")
    import tiktoken

    ours = get_gpt2_encoding()
    reference = tiktoken.Encoding(
        name="gpt2-reference",
        pat_str=r50k_pat_str,
        mergeable_ranks=ours._mergeable_ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN},
    )
    text = VARIED_TEXT * 3 + "\n\n\n   trailing   \n"
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
