"""The GPT-2 tokenizer, built offline from the rank table shipped inside this package.

Why not ``tiktoken.get_encoding("gpt2")``: it downloads its files on first use, and training
machines are often offline (or behind a proxy that fails in the middle of a multi-day job). The
rank table is package data (``shared/data/gpt2.tiktoken``), checked against a pinned sha256 before
use so a truncated or edited copy fails loudly instead of silently tokenizing differently.

Why we parse the table ourselves instead of ``tiktoken.load.load_tiktoken_bpe``: that helper keeps
a second copy in a cache directory keyed by the *path*, and would return that copy (not the file
we verified) if the file under the same path later changed. The format is one
``base64(token) rank`` pair per line, a few lines of code.

``tiktoken`` is imported inside :func:`build_gpt2_encoding`: ``shared/`` must import fast.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tiktoken

EOT_TOKEN = 50256
ENDOFTEXT = "<|endoftext|>"
# sha256 of shared/data/gpt2.tiktoken (the same file tiktoken pins for r50k_base, whose ranks
# equal the gpt2 encoding's). See the data README.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
N_MERGEABLE_RANKS = 50256  # ranks 0..50255; <|endoftext|> = 50256 is added as a special token
# GPT-2's pre-tokenization regex (contractions, letters, digits, other symbols, whitespace).
GPT2_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


class TokenizerError(Exception):
    """The packaged rank table is missing, corrupted or unreadable."""


def packaged_rank_table_path() -> Path:
    """Path of the rank table installed with the ``shared`` package.

    The package is installed as plain files (editable or a wheel unpacked on disk), so the
    traversable is a real path; we refuse zip installs explicitly rather than extracting.
    """
    resource = importlib.resources.files("shared").joinpath("data", "gpt2.tiktoken")
    path = Path(str(resource))
    if not path.is_file():
        raise TokenizerError(
            f"GPT-2 rank table not found at {path}; reinstall gpt2sup (package data "
            "shared/data/gpt2.tiktoken is missing)"
        )
    return path


def _parse_ranks(contents: bytes, source: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(contents.splitlines(), start=1):
        if not line:
            continue
        try:
            token_b64, rank_text = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank_text)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"{source}:{line_number}: malformed rank line ({exc})") from None
    return ranks


def read_gpt2_ranks(path: Path) -> dict[bytes, int]:
    """The rank table at ``path`` (token bytes -> rank), verified against its pinned sha256.

    Shared by the tiktoken encoding and ``shared.hf_tokenizer`` (which derives Hugging Face's
    ``vocab.json``/``merges.txt`` from it), so both read exactly the bytes that were checked.
    """
    path = Path(path)
    try:
        contents = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read GPT-2 rank table {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(contents).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise TokenizerError(
            f"GPT-2 rank table {path} is corrupted: sha256 {digest[:16]}... "
            f"!= expected {GPT2_RANKS_SHA256[:16]}...; reinstall gpt2sup"
        )
    ranks = _parse_ranks(contents, path)
    if len(ranks) != N_MERGEABLE_RANKS:  # unreachable with the right hash; cheap insurance
        raise TokenizerError(f"GPT-2 rank table {path} has {len(ranks)} ranks, expected 50256")
    return ranks


def build_gpt2_encoding(path: Path) -> tiktoken.Encoding:
    """Build the GPT-2 ``tiktoken.Encoding`` from a rank table file, verifying its sha256 first.

    Uncached: :func:`get_gpt2_encoding` is the cached entry point; this one exists so a test can
    prove a corrupted copy is rejected.
    """
    ranks = read_gpt2_ranks(path)

    import tiktoken  # local import: shared/ must import fast

    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT_TOKEN},
        explicit_n_vocab=N_MERGEABLE_RANKS + 1,
    )


@functools.lru_cache(maxsize=1)
def get_gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding from the packaged rank table (built once per process, no network)."""
    return build_gpt2_encoding(packaged_rank_table_path())
