"""`kochat data stats`: what is in raw files or a built directory, computed with polars."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import datasets
import polars as pl
from rich.console import Console
from rich.table import Table

from kochat_data.errors import UsageError
from kochat_data.pairs import expand_pairs
from kochat_data.schema import Kind
from kochat_data.text import fold, hangul_ratio, looks_serialised, prompt_id
from kochat_data.validate import validate_file

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
LOW_HANGUL = 0.5
EXAMPLES = 3
LENGTH_SUMMARY = ("min", *QUANTILES, "max")
TEXT_COLUMNS = {Kind.SFT: ["prompt", "completion"], Kind.RM: ["prompt", "chosen", "rejected"], Kind.PPO: ["prompt"]}


def collect_stats(paths: list[Path], tokenizer: str | None = None, columns: dict[str, str] | None = None) -> dict:
    """The report for each path (a data source, or a built directory: one with a manifest.json) and the prompt
    overlap across kinds; `columns` as for `validate_file`."""
    tokenize = _load_tokenizer(tokenizer) if tokenizer else None
    sources, prompts_by_kind = [], {}
    for path in map(Path, paths):
        if (path / "manifest.json").is_file():
            sources.append(_built_report(path, tokenize))
            continue
        report, frame = _file_report(path, tokenize, columns)
        sources.append(report)
        prompts_by_kind.setdefault(report["kind"], set()).update(frame.get_column("prompt_id").to_list())
    return {"sources": sources, "prompt_overlap": _overlap(prompts_by_kind)}


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise UsageError(f"--tokenizer {name}: cannot load it ({str(err).splitlines()[0]})") from None
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _file_report(path: Path, tokenize, columns: dict[str, str] | None) -> tuple[dict, pl.DataFrame]:
    validated = validate_file(path, columns=columns)
    kind = validated.kind
    frame = validated.rows().drop("extra", "prompt_messages") if validated.records else pl.DataFrame({"prompt": []}, schema={"prompt": pl.String})
    frame = frame.with_columns(prompt_id=pl.col("prompt").map_elements(prompt_id, return_dtype=pl.String))
    value_columns = [c for c in frame.columns if c != "prompt_id"]
    report = {
        "path": str(path), "type": "file", "kind": kind.value, "format": validated.file_format.value,
        "records": validated.total, "rejects": len(validated.rejects),
        "reject_examples": [str(problem) for problem in validated.problems[:EXAMPLES]],
        "duplicates": _duplicates(frame, value_columns),
    }
    texts = {"prompt": frame.get_column("prompt")}
    if kind is Kind.SFT:
        texts["completion"] = frame.get_column("completion")
    if kind is Kind.RM and frame.height:
        texts["completion"] = frame.get_column("completions").explode()
        report["rm"] = _ranking_report(frame)
    if validated.records:
        report["conversations"] = sum(record["prompt_messages"] is not None for record in validated.records)
    report["texts"] = {name: _text_report(series, tokenize) for name, series in texts.items()}
    return report, frame


def _duplicates(frame: pl.DataFrame, columns: list[str]) -> dict:
    """Rows equal to an earlier row: exactly (after NFC, which reading applies) and after whitespace folding."""
    if frame.height == 0:
        return {"exact": 0, "folded": 0}
    folded = frame.select(_folded(c, frame.schema[c]) for c in columns)
    return {"exact": frame.height - frame.select(columns).n_unique(), "folded": frame.height - folded.n_unique()}


def _folded(column: str, dtype: pl.DataType) -> pl.Expr:
    """The column with every text (also inside lists of texts) in its folded form."""
    fold_text = pl.element().map_elements(fold, return_dtype=pl.String)
    if dtype == pl.String:
        return pl.col(column).map_elements(fold, return_dtype=pl.String)
    if dtype == pl.List(pl.String):
        return pl.col(column).list.eval(fold_text)
    return pl.col(column)


def _ranking_report(frame: pl.DataFrame) -> dict:
    """Where the best completion sits (position bias), ties and the pairs the records give. Preference pairs
    without ranks are counted apart: their chosen answer comes first by construction, which says nothing."""
    records = frame.with_row_index("record")
    pairs, ties = expand_pairs(records)
    unranked = records.get_column("ranking").is_null().sum()
    records = records.filter(pl.col("ranking").is_not_null())
    best = records.select(
        k=pl.col("ranking").list.len(), best_position=pl.col("ranking").list.arg_min()
    )
    bias = (
        best.group_by("k", "best_position").len().sort("k", "best_position")
        .with_columns(share=pl.col("len") / pl.col("len").sum().over("k"))
    )
    by_k = {}
    for row in bias.iter_rows(named=True):
        by_k.setdefault(str(row["k"]), {})[f"completion_{row['best_position']}"] = round(row["share"], 4)
    return {"best_position_share": by_k, "ties": ties, "pairs": pairs.height, "pairs_without_ranks": int(unranked),
            "completions_per_record": best.get_column("k").value_counts().sort("k").rows()}


def _text_report(texts: pl.Series, tokenize) -> dict:
    frame = pl.DataFrame({"text": texts}).with_columns(
        chars=pl.col("text").str.len_chars(),
        hangul=hangul_ratio(pl.col("text")),
        serialised=looks_serialised(pl.col("text")),
    )
    report = {
        "count": frame.height,
        "chars": _distribution(frame.get_column("chars")),
        "hangul_ratio_mean": round(frame.get_column("hangul").mean() or 0.0, 4),
        "low_hangul_share": round((frame.get_column("hangul") < LOW_HANGUL).mean() or 0.0, 4),
        "low_hangul_examples": frame.filter(pl.col("hangul") < LOW_HANGUL).get_column("text").head(EXAMPLES).to_list(),
        "serialised": int(frame.get_column("serialised").sum()),
        "serialised_examples": [t[:120] for t in frame.filter("serialised").get_column("text").head(EXAMPLES).to_list()],
    }
    if tokenize and frame.height:
        report["tokens"] = _distribution(pl.Series(tokenize(frame.get_column("text").to_list())))
    return report


def _distribution(values: pl.Series) -> dict:
    if values.len() == 0:
        return {}
    summary = {"min": int(values.min()), **{k: int(values.quantile(q, "nearest")) for k, q in QUANTILES.items()}}
    return summary | {"max": int(values.max()), "mean": round(values.mean(), 1)}


def _built_report(path: Path, tokenize) -> dict:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(f"{path}: a directory without manifest.json; expected a `kochat data build` output")
    manifest = json.loads(manifest_path.read_text("utf-8"))
    report = {"path": str(path), "type": "build", "manifest": {k: manifest[k] for k in ("seed", "eval_ratio", "rejects", "duplicates", "ties")}, "kinds": {}}
    prompts = {}
    for kind in Kind:
        if not (path / kind.value).is_dir():
            continue
        splits = datasets.load_from_disk(str(path / kind.value))
        kind_report = {}
        for split, dataset in splits.items():
            frame = pl.from_arrow(dataset.data.table)
            prompts[(kind.value, split)] = set(frame.get_column("prompt_id").to_list())
            kind_report[split] = {
                "rows": frame.height,
                "duplicates": _duplicates(frame, [c for c in TEXT_COLUMNS[kind]]),
                "texts": {c: _text_report(frame.get_column(c), tokenize) for c in TEXT_COLUMNS[kind]},
            }
        report["kinds"][kind.value] = kind_report
    train = set().union(*(ids for (_, split), ids in prompts.items() if split == "train"))
    held_out = set().union(*(ids for (_, split), ids in prompts.items() if split == "eval"))
    report["train_eval_prompt_overlap"] = len(train & held_out)
    report["prompt_overlap"] = _overlap({f"{kind}/{split}": ids for (kind, split), ids in prompts.items()})
    return report


def _overlap(prompts: dict[str, set]) -> dict:
    return {f"{a} & {b}": len(prompts[a] & prompts[b]) for a, b in itertools.combinations(sorted(prompts), 2)}


def render_stats(report: dict, console: Console) -> None:
    """The report as rich tables, one section per source."""
    for source in report["sources"]:
        if source["type"] == "file":
            console.rule(f"{source['path']} — {source['kind']} ({source['format']})")
            dup = source["duplicates"]
            console.print(f"records {source['records']} · rejects {source['rejects']} · "
                          f"duplicates {dup['exact']} exact, {dup['folded']} after folding"
                          + (f" · conversation prompts {source['conversations']}" if source.get("conversations") else ""))
            for line in source["reject_examples"]:
                console.print(f"  [red]{line}[/]", markup=True, highlight=False)
            _render_texts(source["texts"], console)
            if "rm" in source:
                rm = source["rm"]
                ranked = f" · tied pairs {rm['ties']} · completions per record {rm['completions_per_record']}"
                console.print(f"pairs {rm['pairs']}" + (ranked if rm["completions_per_record"] else ""))
                if rm["pairs_without_ranks"]:
                    console.print(f"preference pairs without ranks {rm['pairs_without_ranks']} (chosen ≻ rejected only: "
                                  "no rank-pair table, no position bias)")
                for k, shares in rm["best_position_share"].items():
                    console.print(f"best answer position (k={k}): " + ", ".join(f"{p} {s:.1%}" for p, s in shares.items()))
        else:
            console.rule(f"{source['path']} — built (seed {source['manifest']['seed']})")
            m = source["manifest"]
            console.print(f"rejects {m['rejects']} · duplicates dropped {m['duplicates']} · tied pairs {m['ties']}")
            overlap = source["train_eval_prompt_overlap"]
            colour = "green" if overlap == 0 else "red"
            console.print(f"train/eval prompt overlap: [{colour}]{overlap}[/]")
            for kind, splits in source["kinds"].items():
                for split, split_report in splits.items():
                    console.print(f"[bold]{kind}/{split}[/]: {split_report['rows']} rows")
                    _render_texts(split_report["texts"], console)
        if source.get("prompt_overlap"):
            _render_overlap(source["prompt_overlap"], console)
    if report["prompt_overlap"]:
        console.rule("prompt overlap between kinds")
        _render_overlap(report["prompt_overlap"], console)


def _render_texts(texts: dict, console: Console) -> None:
    """Two narrow tables (counts, then lengths one measure per row) rather than one wide one, so
    that an 80-column terminal shows every number in full."""
    counts = Table(show_edge=False)
    for column in ("field", "n", "Hangul", "Hangul < 0.5", "serialised"):
        counts.add_column(column, justify="left" if column == "field" else "right", no_wrap=True)
    lengths = Table(show_edge=False)
    for column in ("field", "length", *LENGTH_SUMMARY):
        lengths.add_column(column, justify="left" if column in ("field", "length") else "right", no_wrap=True)
    for name, t in texts.items():
        counts.add_row(name, str(t["count"]), f"{t['hangul_ratio_mean']:.2f}", f"{t['low_hangul_share']:.1%}", str(t["serialised"]))
        for measure in ("chars", "tokens"):
            if measure in t:
                lengths.add_row(name, measure, *(str(t[measure].get(key, "-")) for key in LENGTH_SUMMARY))
    console.print(counts)
    console.print(lengths)
    for name, t in texts.items():
        for example in t["serialised_examples"]:
            console.print(f"  [yellow]serialised {name}:[/] {example}", highlight=False)


def _render_overlap(overlap: dict, console: Console) -> None:
    console.print("prompt overlap: " + ", ".join(f"{pair} {count}" for pair, count in overlap.items()))
