"""`kochat data build`: validated, deduplicated, prompt-split Arrow datasets and their manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

import kochat_data
from kochat_data.arrow_layout import write_dataset_dict
from kochat_data.atomic import atomic_directory, check_writable
from kochat_data.errors import UsageError
from kochat_data.pairs import expand_pairs
from kochat_data.progress import progress_bar
from kochat_data.schema import FEATURES, Kind
from kochat_data.split import SPLITS, eval_prompt_ids, shuffled
from kochat_data.columnar import folded
from kochat_data.text import prompt_ids
from kochat_data.validate import ValidatedFile, raise_for_problems, validate_file

ON_INVALID = ("fail", "skip")


@dataclass
class BuildConfig:
    out: Path
    """Output directory; replaced atomically, and only with `overwrite` when not empty."""
    sft: list[Path] = field(default_factory=list)
    """SFT inputs: KoChatGPT step-1 files or the conversation file."""
    rm: list[Path] = field(default_factory=list)
    """RM inputs: prompt, completion_0 … completion_{k-1}, ranking."""
    ppo: list[Path] = field(default_factory=list)
    """PPO prompt files."""
    seed: int = 42
    """Fixes the train/eval split of every prompt and the row order of every split."""
    eval_ratio: float = 0.1
    """Expected share of prompts held out for eval, in every kind at once."""
    on_invalid: str = "fail"
    """`fail`: any invalid record stops the build; `skip`: rejects go to rejects.jsonl."""
    overwrite: bool = False
    """Replace a non-empty `out`."""
    columns: dict[str, str] = field(default_factory=dict)
    """kochat's field ← the source's column, for every input that has those columns (`--columns`)."""

    def problems(self) -> list[str]:
        """Every invalid field, reported together."""
        found = []
        if not (self.sft or self.rm or self.ppo):
            found.append("no input: give at least one of --sft, --rm, --ppo")
        if not 0.0 <= self.eval_ratio < 1.0:
            found.append(f"--eval-ratio: expected a number in [0, 1), got {self.eval_ratio}")
        if self.on_invalid not in ON_INVALID:
            found.append(f"--on-invalid: expected one of {', '.join(ON_INVALID)}, got {self.on_invalid!r}")
        if self.seed < 0:
            found.append(f"--seed: expected an integer ≥ 0, got {self.seed}")
        return found

    def inputs(self) -> list[tuple[Kind, Path]]:
        return [(kind, Path(path)) for kind in Kind for path in getattr(self, kind.value)]


@dataclass
class KindRows:
    """The unique records of one kind with their prompt ids, and per-file duplicate counts."""

    frame: pl.DataFrame | None = None
    duplicates: dict[int, int] = field(default_factory=dict)
    """Duplicates dropped, by position of the input file in the build's file list."""

    @property
    def kept(self) -> int:
        return 0 if self.frame is None else self.frame.height


def build(config: BuildConfig) -> dict:
    """Run the build; returns the manifest it wrote to `config.out/manifest.json`."""
    problems = config.problems()
    if problems:
        raise UsageError("\n".join(problems))
    check_writable(config.out, config.overwrite)
    files = _validate_inputs(config.inputs(), config.columns)
    if config.on_invalid == "fail":
        raise_for_problems(files, "build refused: nothing written; --on-invalid skip builds from the valid records and lists "
                                  "the others in rejects.jsonl")
    rows = {kind: _unique_rows(kind, files) for kind in Kind}
    duplicates = {position: count for kind_rows in rows.values() for position, count in kind_rows.duplicates.items()}
    rows = {kind: kind_rows for kind, kind_rows in rows.items() if kind_rows.kept}
    prompt_ids = pl.concat([kind_rows.frame.get_column("prompt_id") for kind_rows in rows.values()]).unique().sort().to_list()
    eval_ids = eval_prompt_ids(prompt_ids, config.seed, config.eval_ratio)
    manifest = _manifest_header(config, files, duplicates, prompt_ids, eval_ids)
    with atomic_directory(config.out, config.overwrite) as staging, progress_bar() as progress:
        task = progress.add_task("writing datasets", total=len(rows))
        for kind, kind_rows in rows.items():
            kept, dropped = kind_rows.kept, sum(kind_rows.duplicates.values())  # read before the split releases the frame
            tables, kind_counts = _split_tables(kind, kind_rows, eval_ids, config.seed)
            _save(kind, tables, staging / kind.value, config, manifest["inputs"])
            manifest[kind.value] = _kind_summary(kind, files, kept, dropped, kind_counts, tables)
            progress.advance(task)
        _totals(manifest)
        _write_rejects(staging / "rejects.jsonl", files)
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return manifest


def _validate_inputs(inputs: list[tuple[Kind, Path]], columns: dict[str, str]) -> list[ValidatedFile]:
    with progress_bar() as progress:
        task = progress.add_task("validating", total=len(inputs))
        files = []
        for kind, path in inputs:
            progress.update(task, description=f"validating {path.name}")
            files.append(validate_file(path, kind, columnar=True, columns=columns))
            progress.advance(task)
    return files


def _unique_rows(kind: Kind, files: list[ValidatedFile]) -> KindRows:
    """The records of `kind`, less those equal (after NFC and whitespace folding) to an earlier one."""
    mine = [(position, validated.rows()) for position, validated in enumerate(files) if validated.kind is kind]
    if not any(frame.height for _, frame in mine):
        return KindRows()
    frame = pl.concat([frame.with_columns(file=pl.lit(position, pl.UInt32)) for position, frame in mine], how="vertical_relaxed")
    for validated in files:
        if validated.kind is kind:
            validated.frame, validated.records = None, []  # the concatenated frame holds them now
    prompts = folded(frame.get_column("prompt"))
    key = {"prompt": prompts, "prompt_messages": frame.get_column("prompt_messages")}
    if kind is Kind.SFT:
        key["completion"] = folded(frame.get_column("completion"))
    elif kind is Kind.RM:
        key["completions"] = _folded_lists(frame.get_column("completions"))
        key["ranking"] = frame.get_column("ranking")
    first = pl.DataFrame(key).select(pl.struct(pl.all()).is_first_distinct()).to_series()
    duplicates = frame.select("file").with_columns(dropped=~first).group_by("file").agg(pl.col("dropped").sum())
    rows = KindRows(duplicates=dict.fromkeys((position for position, _ in mine), 0))
    rows.duplicates.update(dict(duplicates.iter_rows()))
    rows.frame = frame.with_columns(prompt_id=prompt_ids(prompts)).filter(first).drop("file")
    return rows


def _folded_lists(lists: pl.Series) -> pl.Series:
    """fold() of every text of a list column."""
    arrow = lists.rechunk().to_arrow()
    texts = pl.Series(pc.list_flatten(arrow))
    folded_texts = folded(texts)
    if folded_texts is texts:  # nothing to fold, the common case
        return lists
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(pc.list_value_length(arrow).cast(pa.int64()))])
    return pl.Series(lists.name, pa.LargeListArray.from_arrays(offsets, folded_texts.to_arrow()))


def _split_tables(kind: Kind, rows: KindRows, eval_ids: list[str], seed: int) -> tuple[dict[str, pa.Table], dict]:
    """Train and eval tables of one kind (RM records expanded to pairs), each in seeded order."""
    frame, rows.frame = rows.frame, None
    counts: dict = {}
    if kind is Kind.RM:
        records = frame.with_row_index("record")
        pairs, ties = expand_pairs(records, carry=("prompt", "prompt_id", "extra", "prompt_messages"))
        possible = records.select((pl.col("completions").list.len() * (pl.col("completions").list.len() - 1) // 2).sum()).item()
        paired = pairs.get_column("record").unique()
        counts = {"possible": possible, "ties": ties, "written": pairs.height,
                  "records_without_pairs": records.height - paired.len()}
        frame, records = pairs, None  # the records' own copies of the texts go before the splits are copied out
    schema = FEATURES[kind].arrow_schema
    in_eval = pl.col("prompt_id").is_in(pl.Series(eval_ids, dtype=pl.String).implode())
    stream = list(Kind).index(kind) * len(SPLITS)
    tables = {
        split: shuffled(frame.filter(selector).select(schema.names), seed, stream + offset).to_arrow().cast(schema)
        for offset, (split, selector) in enumerate([("train", ~in_eval), ("eval", in_eval)])
    }
    return tables, counts


def _save(kind: Kind, tables: dict[str, pa.Table], out: Path, config: BuildConfig, inputs: list[dict]) -> None:
    identity = json.dumps([inputs, config.seed, config.eval_ratio, kind.value], sort_keys=True)
    fingerprints = {split: hashlib.sha256(f"{identity}:{split}".encode()).hexdigest()[:16] for split in SPLITS}
    write_dataset_dict(out, tables, FEATURES[kind].to_dict(), fingerprints)


def _manifest_header(
    config: BuildConfig, files: list[ValidatedFile], duplicates: dict[int, int], prompt_ids: list[str], eval_ids: list[str]
) -> dict:
    return {
        "kochat_version": kochat_data.__version__,
        "datasets_version": datasets.__version__,
        "seed": config.seed,
        "eval_ratio": config.eval_ratio,
        "on_invalid": config.on_invalid,
        "inputs": [
            {"path": str(f.path), "kind": f.kind.value, "format": f.file_format.value, "sha256": f.sha256,
             "records": f.total, "kept": f.total - len(f.rejects) - duplicates.get(position, 0),
             "rejected": len(f.rejects), "duplicates": duplicates.get(position, 0)}
            for position, f in enumerate(files)
        ],
        "prompts": {"unique": len(prompt_ids), "train": len(prompt_ids) - len(eval_ids), "eval": len(eval_ids)},
    }


def _kind_summary(kind: Kind, files: list[ValidatedFile], kept: int, duplicates: int, counts: dict, tables: dict) -> dict:
    mine = [f for f in files if f.kind is kind]
    summary = {
        "records": sum(f.total for f in mine),
        "kept": kept,
        "rejected": sum(len(f.rejects) for f in mine),
        "duplicates": duplicates,
        "rows": {split: table.num_rows for split, table in tables.items()},
    }
    if kind is Kind.RM:
        summary["records_without_pairs"] = counts.pop("records_without_pairs")
        summary["pairs"] = counts
    return summary


def _totals(manifest: dict) -> None:
    kinds = [manifest[kind.value] for kind in Kind if kind.value in manifest]
    manifest["rejects"] = sum(k["rejected"] for k in kinds)
    manifest["duplicates"] = sum(k["duplicates"] for k in kinds)
    manifest["ties"] = manifest.get("rm", {}).get("pairs", {}).get("ties", 0)


def _write_rejects(path: Path, files: list[ValidatedFile]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for validated in files:
            for reject in validated.rejects:
                handle.write(json.dumps(reject, ensure_ascii=False) + "\n")
