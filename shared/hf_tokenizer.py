"""Hugging Face's GPT-2 tokenizer files, derived from the rank table shipped in this package.

Why derive them instead of shipping or downloading them: an exported model directory must load
with ``AutoTokenizer.from_pretrained(DIR)`` on an offline machine, and the only GPT-2 tokenizer
we have (and verify by sha256) is ``shared/data/gpt2.tiktoken``. It holds the same vocabulary in
another form:

* tiktoken: ``token bytes -> rank``; merging is implicit (the pair whose concatenation has the
  lowest rank merges first).
* Hugging Face (``vocab.json`` + ``merges.txt``): tokens are *strings*, each byte written as one
  printable character (GPT-2's "bytes to unicode" table below), and the merges are listed
  explicitly, in priority order.

The merge that creates a token is recovered by running BPE on the token's own bytes with only
lower-ranked tokens allowed: it stops with exactly two parts, and those two parts are the merge.
Listing the merges by the rank of the token they create gives the order GPT-2's ``merges.txt``
has. No torch, no network; tests check the result against tiktoken on real text.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.tokenizer import (
    ENDOFTEXT,
    EOT_TOKEN,
    packaged_rank_table_path,
    read_gpt2_ranks,
)

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
MERGES_HEADER = "#version: 0.2"


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, every other
    byte (controls, space, soft hyphen...) gets a character from 256 upwards, in byte order. It
    makes every token a printable string with no whitespace, which ``merges.txt`` needs (its two
    parts are separated by a space)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def token_text(token: bytes) -> str:
    """A token's bytes as Hugging Face's vocabulary string."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts whose merge creates ``token`` (a multi-byte token of the table).

    BPE on the token's bytes, allowing only merges into tokens ranked below ``token`` itself:
    the lowest-ranked adjacent pair merges first, as tiktoken does, until two parts remain.
    """
    rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best_index, best_rank = -1, rank
        for index in range(len(parts) - 1):
            pair_rank = ranks.get(parts[index] + parts[index + 1])
            if pair_rank is not None and pair_rank < best_rank:
                best_index, best_rank = index, pair_rank
        if best_index < 0:  # cannot happen for a consistent BPE table; never guess a merge
            raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked tokens")
        parts[best_index:best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} is a single byte; it has no merge")
    return parts[0], parts[1]


@dataclass(frozen=True)
class HFTokenizerFiles:
    """The vocabulary and merges in Hugging Face's form."""

    vocab: dict[str, int]  # token string -> id, <|endoftext|> included
    merges: list[tuple[str, str]]  # in priority order

    def merges_text(self) -> str:
        return "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in self.merges)]) + "\n"


def derive_tokenizer_files(ranks: dict[bytes, int]) -> HFTokenizerFiles:
    """``vocab.json`` and ``merges.txt`` contents from a tiktoken rank table (module doc)."""
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[token_text(token)] = rank
        if len(token) > 1:
            left, right = merge_of(token, ranks)
            merges.append((token_text(left), token_text(right)))
    vocab[ENDOFTEXT] = EOT_TOKEN
    return HFTokenizerFiles(vocab=vocab, merges=merges)


@functools.lru_cache(maxsize=1)
def packaged_tokenizer_files() -> HFTokenizerFiles:
    """The files for the packaged (sha256-verified) GPT-2 table, derived once per process."""
    return derive_tokenizer_files(read_gpt2_ranks(packaged_rank_table_path()))


def tokenizer_config(model_max_length: int) -> dict[str, Any]:
    """``tokenizer_config.json``: GPT-2's own settings (no prefix space, ``<|endoftext|>`` as bos,
    eos and unk), with <|endoftext|> declared as a special added token so it encodes to 50256."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "unk_token": ENDOFTEXT,
        "added_tokens_decoder": {
            str(EOT_TOKEN): {"content": ENDOFTEXT, "lstrip": False, "normalized": True, "rstrip": False,
                             "single_word": False, "special": True},
        },
    }


def special_tokens_map() -> dict[str, str]:
    return {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}


def write_tokenizer_files(directory: Path, model_max_length: int) -> list[str]:
    """Write the four tokenizer files into ``directory``; returns their names."""
    files = packaged_tokenizer_files()
    directory = Path(directory)
    (directory / VOCAB_FILE).write_text(json.dumps(files.vocab, ensure_ascii=False), encoding="utf-8")
    (directory / MERGES_FILE).write_text(files.merges_text(), encoding="utf-8")
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tokenizer_config(model_max_length), indent=2) + "\n",
                                                   encoding="utf-8")
    (directory / SPECIAL_TOKENS_FILE).write_text(json.dumps(special_tokens_map(), indent=2) + "\n", encoding="utf-8")
    return [VOCAB_FILE, MERGES_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE]
