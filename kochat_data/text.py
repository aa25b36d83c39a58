"""Text normalisation and the keys that identify a prompt across files and kinds."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence

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


def hangul_shares(texts: Sequence[str]) -> list[float]:
    """hangul_ratio() of each text, for a list of texts in hand."""
    return pl.DataFrame({"text": list(texts)}, schema={"text": pl.String}).select(hangul_ratio(pl.col("text")))["text"].to_list()


MOSTLY_HANGUL = 0.5  # an answer with a smaller share of Hangul letters is a non-Hangul answer


def non_hangul_share(texts: Sequence[str]) -> float:
    """Share of the texts whose letters are less than half Hangul (a text without letters counts as non-Hangul)."""
    return sum(share < MOSTLY_HANGUL for share in hangul_shares(texts)) / len(texts) if texts else float("nan")


def char_ngrams(text: str, n: int) -> set[str]:
    """Distinct character n-grams of a text with its whitespace removed."""
    letters = "".join(text.split())
    return {letters[i : i + n] for i in range(len(letters) - n + 1)}


def prompt_overlap(prompt: str, response: str, n: int = 2) -> float:
    """Share of the prompt's character n-grams that the response contains (0 for a prompt without any)."""
    asked = char_ngrams(prompt, n)
    return len(asked & char_ngrams(response, n)) / len(asked) if asked else 0.0
