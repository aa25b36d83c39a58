"""The stage table in every format: rich, Markdown, CSV, JSON; and training curves as a PNG."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from rich.table import Table

from kochat_train.decoding_flags import DECODING_OPTIONS

# (key, header, format) of the stage table, in display order; a `…_ci` column shows the
# interval [key_ci_low, key_ci_high] of its score.
COLUMNS = [
    ("stage", "stage", "{}"),
    ("proxy_score", "proxy", "{:.3f}"),
    ("proxy_score_ci", "proxy 95% CI", "[{:.3f}, {:.3f}]"),
    ("judge_score", "judge", "{:.3f}"),
    ("judge_score_ci", "judge 95% CI", "[{:.3f}, {:.3f}]"),
    ("win_rate", "win", "{:.2f}"),
    ("win_rate_ci", "win 95% CI", "[{:.2f}, {:.2f}]"),
    ("lc_win_rate", "LC win", "{:.2f}"),
    ("kl", "KL to ref", "{:.3f}"),
    ("length_mean", "length", "{:.1f}"),
    ("length_median", "median", "{:.1f}"),
    ("eos_rate", "EOS", "{:.2f}"),
    ("non_hangul_share", "non-Hangul", "{:.2f}"),
    ("distinct_1", "dist-1", "{:.3f}"),
    ("distinct_2", "dist-2", "{:.3f}"),
    ("seq_rep_4", "seq-rep-4", "{:.3f}"),
    ("rep_w16", "rep-w16", "{:.3f}"),
    ("loop_share", "loops", "{:.2f}"),
]


def table_columns(report: dict) -> list[tuple[str, str, str]]:
    """The columns this report has (no judge: no judge columns; a decoding comparison: no KL, no win rate)."""
    first = report["stages"][0]
    return [column for column in COLUMNS if column[0] in first or f"{column[0]}_low" in first]


def table_cells(stage: dict, columns: list[tuple[str, str, str]]) -> list[str]:
    cells = []
    for key, _, fmt in columns:
        values = (stage[f"{key}_low"], stage[f"{key}_high"]) if key.endswith("_ci") else (stage[key],)
        missing = any(isinstance(value, float) and math.isnan(value) for value in values)
        cells.append("–" if missing else fmt.format(*values))
    return cells


def caption(report: dict) -> str:
    head = f"{report['prompts']} held-out prompts (set {report['prompt_set_sha256']}), seed {report['seed']}, units {report['unit']}"
    if "decodings" in report:
        configs = "; ".join(f"{name}: {_changed(settings)}" for name, settings in report["decodings"].items())
        return f"{head}, model {report['model']}; decodings (changes from greedy): {configs}"
    judged = ("win rates by the judge; LC win: at equal length" if report["win_judged_by"] == "judge" else
              "win rates by the proxy, the RM that PPO optimised (no --judge given: PPO wins by construction)")
    return f"{head}, decoding {json.dumps(report['decoding'])}, reference {report['reference']}; {judged}"


def _changed(settings: dict) -> str:
    changed = {key: value for key, value in settings.items() if key in DECODING_OPTIONS and value != DECODING_OPTIONS[key][1]}
    return ", ".join(f"{key}={value}" for key, value in changed.items()) or "greedy"


def rich_table(report: dict) -> Table:
    columns = table_columns(report)
    table = Table(title=report.get("title", "kochat stage comparison"), caption=caption(report))
    for _, header, _ in columns:
        table.add_column(header, justify="left" if header == "stage" else "right")
    for stage in report["stages"]:
        table.add_row(*table_cells(stage, columns))
    return table


def markdown(report: dict) -> str:
    columns = table_columns(report)
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(table_cells(stage, columns)) + " |" for stage in report["stages"]]
    return "\n".join(lines) + f"\n\n{caption(report)}\n"


def csv_text(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(report["stages"][0]) + ["prompt_set_sha256", "seed", "decoding"])
    writer.writeheader()
    for stage in report["stages"]:
        decoding = report["decodings"][stage["stage"]] if "decodings" in report else report["decoding"]
        writer.writerow({**stage, "prompt_set_sha256": report["prompt_set_sha256"], "seed": report["seed"], "decoding": json.dumps(decoding)})
    return buffer.getvalue()


# metrics.jsonl keys drawn per panel: (title, x key, [(y key, label)])
CURVES = [
    ("loss", "step", [("loss", "train loss"), ("eval_loss", "eval loss")]),
    ("RM accuracy", "step", [("eval_accuracy", "eval accuracy"), ("eval_accuracy_0v1", "eval 0v1")]),
    ("PPO reward", "step", [("rm_score", "RM score"), ("total_reward", "total reward")]),
    ("PPO KL", "step", [("kl", "KL to reference")]),
    # Over-optimisation (Gao et al. 2023): on held-out prompts, where proxy and judge part as the policy moves away.
    ("PPO held-out: proxy and judge vs KL", "eval_kl", [("eval_proxy_score", "proxy"), ("eval_judge_score", "judge")]),
]


def plot_curves(stage_dirs: dict[str, Path], path: Path) -> Path:
    """One PNG, a panel per quantity, a line per stage and metric, from each stage's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4))
    for axis, (title, x_key, keys) in zip(axes, CURVES):
        for stage, directory in stage_dirs.items():
            log = directory / "metrics.jsonl"
            lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
            for key, label in keys:
                points = [(line[x_key], line[key]) for line in lines if key in line and x_key in line]
                if points:
                    axis.plot(*zip(*points), marker="." if len(points) < 30 else None, label=f"{stage}: {label}")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("KL to the SFT model (held-out)" if x_key == "eval_kl" else "step")
        if axis.has_data():
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
