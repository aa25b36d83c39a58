"""Whole-file columnar reading: a file whose every record is clean is parsed and checked by polars.

The located reader (`reading` + `schema`) walks a file one record at a time so it can name
the line of every problem; on a clean file that care costs ~30 µs a record. Here polars
parses the whole file at once, and vectorised checks decide whether every record is one
the located path would accept unchanged. Only then are its rows used; anything unusual
returns None and the caller takes the located path, which stays the authority on what is
wrong and where. The guards below are conservative: a false alarm costs speed, never a
different result (`tests/test_columnar.py` builds both ways and compares).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import polars as pl

from kochat_data.reading import FileFormat
from kochat_data.schema import Kind
from kochat_data.text import fold, normalize

# Python's str.isspace counts \x1c-\x1f as whitespace; Rust's \s (Unicode White_Space) does not.
_SPACE = r"\s\x1c-\x1f"
_BLANK = rf"^[{_SPACE}]*$"
# A string made only of these characters is its own NFC form (each is NFC_Quick_Check=Yes
# and none composes with a neighbour from this set); \r is left out because normalize()
# turns CRLF into LF. Other strings go through normalize() itself, one by one.
_NFC_STABLE = r"^[\x00-\x0c\x0e-\x7f\x{3130}-\x{318f}\x{4e00}-\x{9fff}\x{ac00}-\x{d7a3}]*$"
# Whitespace that fold() would change: any but a single inner space.
_NEEDS_FOLD = rf"[{_SPACE}&&[^ ]]|  |^ | $"
# polars turns a number or boolean read into a text column into its digits or true/false;
# the located path rejects those, so a text of that shape is left to it.
_COERCED_SCALAR = r"^(-?[0-9][0-9.eE+-]*|true|false)$"
_RECORD_BOUNDARY = re.compile(rb"\}[ \t\r]*(,)[ \t\r]*\n[ \t\r]*\{")
_PIECE_BYTES = 32 * 2**20
# polars and Python disagree on lone surrogate escapes.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def expected_columns(kind: Kind, names: list[str]) -> list[str] | None:
    """The text columns of a clean file of `kind` with these fields, or None when it has others."""
    if kind is Kind.SFT:
        return ["prompt", "completion"] if set(names) == {"prompt", "completion"} else None
    if kind is Kind.PPO:
        return ["prompt"] if names == ["prompt"] else None
    completions = [f"completion_{n}" for n in range(len(names) - 2)]
    if len(completions) < 2 or set(names) != {"prompt", "ranking", *completions}:
        return None
    return ["prompt", *completions]


def read_clean_frame(raw: bytes, file_format: FileFormat, kind: Kind) -> pl.DataFrame | None:
    """The normalised rows of a file with no invalid record (as `validate_file` would keep them), else None.

    Columns: `prompt`, then `completion` (SFT) or `completions` + `ranking` (RM), `extra` and `prompt_messages`.
    """
    if file_format not in (FileFormat.JSON_ARRAY, FileFormat.JSON_LINES):
        return None
    if (b"\\u" in raw and _SURROGATE_ESCAPE.search(raw)) or b"true" in raw or b"false" in raw:  # booleans would be read as ranks 1/0
        return None
    try:
        frame = _read_array(raw) if file_format is FileFormat.JSON_ARRAY else _read_json(raw, pl.read_ndjson)
    except (pl.exceptions.PolarsError, ValueError):
        return None
    texts = expected_columns(kind, frame.columns)
    if texts is None or frame.height == 0 or not _exact_keys(raw, frame):
        return None
    if any(frame.schema[name] != pl.String for name in texts):
        return None
    if kind is Kind.RM and not _rankings_ok(frame, len(texts) - 1):
        return None
    rejected = pl.any_horizontal(
        pl.col(name).is_null() | pl.col(name).str.contains(_BLANK) | pl.col(name).str.contains(_COERCED_SCALAR)
        for name in texts
    )
    if frame.select(rejected.any()).item():
        return None
    frame = frame.with_columns(_apply_where(frame.get_column(name), _NFC_STABLE, normalize, negate=True) for name in texts)
    if kind is Kind.RM:
        frame = frame.select("prompt", completions=pl.concat_list(texts[1:]), ranking="ranking")
    return frame.select(*frame.columns, extra=pl.lit("{}"), prompt_messages=pl.lit(""))


def _read_json(raw: bytes, reader=pl.read_json) -> pl.DataFrame:
    # Every row decides the schema, so an odd value cannot hide behind the first rows.
    return reader(io.BytesIO(raw), infer_schema_length=None)


def _read_array(raw: bytes) -> pl.DataFrame:
    """A JSON array parsed in pieces of ~32 MiB on two threads.

    Parsing a whole file at once peaks at ~4.5× its size (polars' parse tape); in pieces the
    tapes stay small and both cores parse. A piece ends where a line starts with the next
    record: JSON texts cannot hold a raw newline, and a cut inside a nested value leaves
    unbalanced brackets that polars rejects (and the caller falls back).
    """
    start, end = raw.index(b"[") + 1, raw.rindex(b"]")
    if raw[end + 1 :].strip():
        raise ValueError("text after the closing ']'")
    pieces, position = [], start
    while (boundary := _RECORD_BOUNDARY.search(raw, position + _PIECE_BYTES, end)) is not None:
        pieces.append((position, boundary.start() + 1))
        position = boundary.end(1)
    pieces.append((position, end))
    with ThreadPoolExecutor(max_workers=2) as pool:
        return pl.concat(list(pool.map(lambda piece: _read_json(b"[" + raw[piece[0] : piece[1]] + b"]"), pieces)))


def _exact_keys(raw: bytes, frame: pl.DataFrame) -> bool:
    """Every record spells every key once, literally: no duplicate key (polars keeps the first,
    json the last) and no escaped key; a key inside a text trips this too, harmlessly."""
    return all(raw.count(f'"{name}"'.encode()) == frame.height for name in frame.columns)


def _rankings_ok(frame: pl.DataFrame, count: int) -> bool:
    if frame.schema["ranking"] != pl.List(pl.Int64):
        return False
    ranks = pl.col("ranking")
    checks = ranks.is_not_null() & (ranks.list.drop_nulls().list.len() == count) & (ranks.list.min() >= 0)
    return frame.select(checks.all()).item()


def _apply_where(texts: pl.Series, pattern: str, function: Callable[[str], str], negate: bool = False) -> pl.Series:
    """`function` on the texts matching `pattern` (or not matching, with `negate`), the rest as they are.

    The rare texts that need Python's own normalize()/fold() get exactly them; the vectorised
    test spares the rest a trip through Python.
    """
    matches = texts.str.contains(pattern)
    rows = (~matches if negate else matches).arg_true()
    if rows.len() == 0:
        return texts
    return texts.clone().scatter(rows, [function(text) for text in texts.gather(rows).to_list()])


def folded(texts: pl.Series) -> pl.Series:
    """fold() of every text (already normalised): whitespace runs to one space, ends stripped."""
    return _apply_where(texts, _NEEDS_FOLD, fold)
