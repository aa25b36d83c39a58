"""`kochat data build`: validated, deduplicated, prompt-split Arrow datasets and their manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa

import kochat_data
from kochat_data.atomic import atomic_directory, check_writable
from kochat_data.errors import UsageError
from kochat_data.pairs import expand_pairs
from kochat_data.progress import progress_bar
from kochat_data.schema import FEATURES, Kind
from kochat_data.split import SPLITS, is_eval, shuffled
from kochat_data.text import fold, prompt_id
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
    """The unique records of one kind, as columns, with per-file duplicate counts."""

    columns: dict[str, list] = field(default_factory=dict)
    kept: int = 0
    duplicates: dict[int, int] = field(default_factory=dict)
    """Duplicates dropped, by position of the input file in the build's file list."""


def build(config: BuildConfig) -> dict:
    """Run the build; returns the manifest it wrote to `config.out/manifest.json`."""
    problems = config.problems()
    if problems:
        raise UsageError("\n".join(problems))
    check_writable(config.out, config.overwrite)
    files = _validate_inputs(config.inputs())
    if config.on_invalid == "fail":
        raise_for_problems(files)
    rows = {kind: _unique_rows(kind, files) for kind in Kind}
    duplicates = {position: count for kind_rows in rows.values() for position, count in kind_rows.duplicates.items()}
    rows = {kind: kind_rows for kind, kind_rows in rows.items() if kind_rows.columns}
    prompt_ids = sorted({pid for kind_rows in rows.values() for pid in kind_rows.columns["prompt_id"]})
    eval_ids = [pid for pid in prompt_ids if is_eval(pid, config.seed, config.eval_ratio)]
    manifest = _manifest_header(config, files, duplicates, prompt_ids, eval_ids)
    with atomic_directory(config.out, config.overwrite) as staging, progress_bar() as progress:
        task = progress.add_task("writing datasets", total=len(rows))
        for kind, kind_rows in rows.items():
            tables, kind_counts = _split_tables(kind, kind_rows, eval_ids, config.seed)
            _save(kind, tables, staging / kind.value, config, manifest["inputs"])
            manifest[kind.value] = _kind_summary(kind, files, kind_rows, kind_counts, tables)
            progress.advance(task)
        _totals(manifest)
        _write_rejects(staging / "rejects.jsonl", files)
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return manifest


def _validate_inputs(inputs: list[tuple[Kind, Path]]) -> list[ValidatedFile]:
    with progress_bar() as progress:
        task = progress.add_task("validating", total=len(inputs))
        files = []
        for kind, path in inputs:
            progress.update(task, description=f"validating {path.name}")
            files.append(validate_file(path, kind))
            progress.advance(task)
    return files


def _dedup_key(kind: Kind, record: dict) -> bytes:
    """A digest of the folded record: 16 bytes to remember per record instead of its texts."""
    if kind is Kind.SFT:
        parts = [record["prompt"], record["completion"]]
    elif kind is Kind.RM:
        parts = [record["prompt"], *record["completions"], json.dumps(record["ranking"])]
    else:
        parts = [record["prompt"]]
    return hashlib.blake2b("\x00".join(map(fold, parts)).encode("utf-8"), digest_size=16).digest()


def _unique_rows(kind: Kind, files: list[ValidatedFile]) -> KindRows:
    """The records of `kind`, less those equal (after NFC and whitespace folding) to an earlier one."""
    value_fields = {Kind.SFT: ["prompt", "completion"], Kind.RM: ["prompt", "completions", "ranking"], Kind.PPO: ["prompt"]}[kind]
    rows = KindRows()
    if not any(f.records for f in files if f.kind is kind):
        return rows
    rows.columns = {name: [] for name in [*value_fields, "prompt_id", "extra"]}
    seen: set[bytes] = set()
    for position, validated in enumerate(files):
        if validated.kind is not kind:
            continue
        duplicates = 0
        for record in validated.records:
            key = _dedup_key(kind, record)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            for name in value_fields:
                rows.columns[name].append(record[name])
            rows.columns["prompt_id"].append(prompt_id(record["prompt"]))
            rows.columns["extra"].append(json.dumps(record["extra"], ensure_ascii=False, sort_keys=True))
        rows.duplicates[position] = duplicates
        validated.records.clear()  # the columns hold what is kept; free the per-record dicts
    rows.kept = len(rows.columns["prompt"])
    return rows


def _split_tables(kind: Kind, rows: KindRows, eval_ids: list[str], seed: int) -> tuple[dict[str, pa.Table], dict]:
    """Train and eval tables of one kind (RM records expanded to pairs), each in seeded order."""
    # pyarrow converts the Python lists in C++; pl.DataFrame(dict of lists) peaks at ~3× the
    # size of the data on the nested `completions` column.
    frame = pl.from_arrow(pa.table(rows.columns))
    rows.columns.clear()
    counts: dict = {}
    if kind is Kind.RM:
        records = frame.with_row_index("record")
        pairs, ties = expand_pairs(records, carry=("prompt", "prompt_id", "extra"))
        possible = records.select((pl.col("completions").list.len() * (pl.col("completions").list.len() - 1) // 2).sum()).item()
        paired = pairs.get_column("record").unique()
        counts = {"possible": possible, "ties": ties, "written": pairs.height,
                  "records_without_pairs": records.height - paired.len()}
        frame = pairs
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
    splits = {}
    for split in SPLITS:
        fingerprint = hashlib.sha256(f"{identity}:{split}".encode()).hexdigest()[:16]
        splits[split] = datasets.Dataset(tables[split], info=datasets.DatasetInfo(features=FEATURES[kind]), fingerprint=fingerprint)
    datasets.DatasetDict(splits).save_to_disk(str(out))


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


def _kind_summary(kind: Kind, files: list[ValidatedFile], rows: KindRows, counts: dict, tables: dict) -> dict:
    mine = [f for f in files if f.kind is kind]
    summary = {
        "records": sum(f.total for f in mine),
        "kept": rows.kept,
        "rejected": sum(len(f.rejects) for f in mine),
        "duplicates": sum(rows.duplicates.values()),
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
