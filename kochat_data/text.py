"""Text normalisation and the keys that identify a prompt across files and kinds."""

from __future__ import annotations

import hashlib
import unicodedata

import polars as pl

# Rust-regex patterns (polars), so the metrics run over many rows at once.
_HANGUL = r"\p{Hangul}"
_LETTER = r"\p{L}"
# Keys of the KoChatGPT files written inside a text: the mark of a record that was
# serialised into a string field (the real PPO file has prompts like `…?", 'completion': …`).
_LEAKED_FIELD = r"""["'](?:prompt|completion(?:_\d+)?|ranking|tokens?)["']\s*:"""


def normalize(text: str) -> str:
    """NFC (never NFKC: it would rewrite full-width and compatibility characters) and LF line ends."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n"))


def fold(text: str) -> str:
    """The comparison form of a text: NFC with every whitespace run folded to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def prompt_id(prompt: str) -> str:
    """A stable id of the folded prompt, shared by every file and kind it appears in."""
    return _folded_prompt_id(fold(prompt))


def _folded_prompt_id(folded_prompt: str) -> str:
    return hashlib.blake2b(folded_prompt.encode("utf-8"), digest_size=8).hexdigest()


def prompt_ids(folded_prompts: pl.Series) -> pl.Series:
    """prompt_id() of each already folded prompt."""
    return pl.Series([_folded_prompt_id(text) for text in folded_prompts.to_list()], dtype=pl.String)


def hangul_ratio(texts: pl.Expr) -> pl.Expr:
    """Hangul letters over all letters of each text; 0.0 for a text without letters."""
    letters = texts.str.count_matches(_LETTER)
    return pl.when(letters > 0).then(texts.str.count_matches(_HANGUL) / letters).otherwise(0.0)


def looks_serialised(texts: pl.Expr) -> pl.Expr:
    """True where a text contains a quoted record key such as `'completion':`."""
    return texts.str.contains(_LEAKED_FIELD)


def hangul_shares(texts: list[str]) -> list[float]:
    """hangul_ratio() of each text, for a list of texts in hand."""
    return pl.DataFrame({"text": texts}, schema={"text": pl.String}).select(hangul_ratio(pl.col("text")))["text"].to_list()
