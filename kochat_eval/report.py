"""The stage table in every format: rich, Markdown, CSV, JSON; and training curves as a PNG."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from rich.cells import cell_len
from rich.console import Console
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
    ("score_gain", "gain", "{:+.3f}"),
    ("score_gain_ci", "gain 95% CI", "[{:+.3f}, {:+.3f}]"),
    ("win_rate", "win", "{:.2f}"),
    ("win_rate_ci", "win 95% CI", "[{:.2f}, {:.2f}]"),
    ("lc_win_rate", "LC win", "{:.2f}"),
    ("relevance", "relevance", "{:.3f}"),
    ("relevance_ci", "rel. 95% CI", "[{:.3f}, {:.3f}]"),
    ("relevance_win_rate", "rel. win", "{:.2f}"),
    ("relevance_win_rate_ci", "rel. win 95% CI", "[{:.2f}, {:.2f}]"),
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


PLAYED_MARK = "‡"  # the stage was rewarded with this referee's score: it played the referee, not refereed by it


def table_cells(stage: dict, columns: list[tuple[str, str, str]]) -> list[str]:
    cells = []
    for key, _, fmt in columns:
        values = (stage[f"{key}_low"], stage[f"{key}_high"]) if key.endswith("_ci") else (stage[key],)
        missing = any(isinstance(value, float) and math.isnan(value) for value in values)
        played = key.split("_")[0] in stage.get("played", ()) and not key.endswith("_ci")
        cells.append("–" if missing else fmt.format(*values) + (PLAYED_MARK if played else ""))
    return cells


def caption(report: dict) -> str:
    head = f"{report['prompts']} held-out prompts (set {report['prompt_set_sha256']}), seed {report['seed']}, units {report['unit']}"
    if "decodings" in report:
        configs = "; ".join(f"{name}: {_changed(settings)}" for name, settings in report["decodings"].items())
        return f"{head}, model {report['model']}; decodings (changes from greedy): {configs}{relevance_caption(report)}"
    judged = ("gain (score minus the reference's, per prompt) and win rates by the judge; LC win: at equal length"
              if report["win_judged_by"] == "judge" else
              "gain and win rates by the proxy, the RM that PPO optimised (no --judge given: PPO wins by construction)")
    return f"{head}, decoding {json.dumps(report['decoding'])}, reference {report['reference']}; {judged}{relevance_caption(report)}"


def relevance_caption(report: dict) -> str:
    """What the relevance column is, and whether its referee shares pretrained weights with a reward model."""
    referee = report.get("relevance_referee")
    if not referee:
        return "; no relevance referee (pip install 'kochat[relevance]')"
    shared = report.get("relevance_shares_weights_with") or []
    kinship = (f"it shares its pretrained weights with the {' and the '.join(shared)} RM (both start from that encoder), so it is "
               "not independent of what PPO optimised" if "proxy" in shared else
               f"it shares its pretrained weights with the {' and the '.join(shared)} RM" if shared else
               "it shares no weights with the reward models")
    wins = "" if "decodings" in report else " (rel. win: against the reference, paired)"
    played = [stage["stage"] for stage in report.get("stages", []) if "relevance" in stage.get("played", ())]
    rewarded = (f"; {PLAYED_MARK} {', '.join(played)} was rewarded with relevance, so its relevance column measures what it "
                "optimised, not an independent check") if played else ""
    return f"; relevance: cos(question, answer) of {referee}, no training on this data{wins}; {kinship}{rewarded}"


def _changed(settings: dict) -> str:
    changed = {key: value for key, value in settings.items() if key in DECODING_OPTIONS and value != DECODING_OPTIONS[key][1]}
    return ", ".join(f"{key}={value}" for key, value in changed.items()) or "greedy"


def column_groups(widths: list[int], available: int) -> list[list[int]]:
    """Indices of the columns of each table when one table would be wider than `available`.

    Column 0 (the row names) starts every group; the others follow in order while they fit. A
    table `|` c1 `|` c2 `|` takes the cells plus 3 per column (padding and border) plus 1.
    """
    groups, current, used = [], [0], widths[0] + 4
    for index in range(1, len(widths)):
        if used + widths[index] + 3 > available and len(current) > 1:
            groups.append(current)
            current, used = [0], widths[0] + 4
        current.append(index)
        used += widths[index] + 3
    return [*groups, current]


def balanced_groups(widths: list[int], available: int) -> list[list[int]]:
    """As few tables as fit `available`, made as even as possible (no lone last column)."""
    count = len(column_groups(widths, available))
    narrowest = min(available, sum(widths) + 3 * len(widths) + 1)
    return next(groups for target in range(narrowest // count, available + 1)
                if len(groups := column_groups(widths, target)) == count)


def rich_tables(report: dict, width: int) -> list[Table]:
    """The stage table, split by columns into as many tables as it takes to fit `width` (each
    repeats the stage column), so that no number is ever cut or wrapped."""
    columns = table_columns(report)
    rows = [table_cells(stage, columns) for stage in report["stages"]]
    widths = [max(cell_len(header), *(cell_len(row[i]) for row in rows)) for i, (_, header, _) in enumerate(columns)]
    groups = balanced_groups(widths, width)
    tables = []
    for number, group in enumerate(groups, 1):
        title = report.get("title", "kochat stage comparison") + (f" ({number}/{len(groups)})" if len(groups) > 1 else "")
        table = Table(title=title, title_justify="left")
        for index in group:
            table.add_column(columns[index][1], justify="left" if index == 0 else "right", no_wrap=True, min_width=widths[index])
        for row in rows:
            table.add_row(*(row[index] for index in group))
        tables.append(table)
    return tables


def print_stage_table(console: Console, report: dict) -> None:
    """The stage table in as many parts as the console's width needs, then its caption, wrapped."""
    for table in rich_tables(report, console.width):
        console.print(table)
    console.print(caption(report), soft_wrap=False, markup=False, highlight=False)


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
# Panels per stage kind: (title, x key, [(metric key, label)], y limits or None). Each stage gets
# its own panels and x-axis; accuracies sit on [0, 1] with chance (½) marked.
PANELS = {
    "base": [("loss", "step", [("loss", "train"), ("eval_loss", "eval")], None)],
    "sft": [("loss", "step", [("loss", "train"), ("eval_loss", "eval")], None)],
    "rm": [("loss", "step", [("loss", "train"), ("eval_loss", "eval")], None),
           ("eval accuracy", "step", [("eval_accuracy", "all pairs"), ("eval_accuracy_0v1", "rank 0 vs 1 (relevance)")], (0, 1))],
    "ppo": [("reward", "step", [("rm_score", "RM score"), ("total_reward", "total reward")], None),
            ("KL to the reference", "step", [("kl", "KL")], None),
            # Over-optimisation (Gao et al. 2023): on held-out prompts, where proxy and judge part as the policy moves away.
            ("held-out scores vs KL", "eval_kl", [("eval_proxy_score", "proxy"), ("eval_judge_score", "judge")], None)],
    "dpo": [("loss", "step", [("loss", "train"), ("eval_loss", "eval")], None),
            ("implicit reward accuracy", "step", [("rewards_accuracy", "train"), ("eval_accuracy", "eval")], (0, 1))],
}
# Series longer than this are drawn raw (faint) and smoothed.
SMOOTH_ABOVE = 30


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (the first points average what there is so far)."""
    totals = np.cumsum(np.r_[0.0, values])
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return ((totals[1:] - totals[starts]) / (np.arange(1, len(values) + 1) - starts)).tolist()


def curve_panels(stage_dirs: dict[str, Path]) -> list[tuple[str, str, list[tuple[str, list, list]], tuple | None, float | None]]:
    """(title, x label, [(label, xs, ys)], y limits, last step or None) per panel that has data, stage by stage."""
    panels = []
    for name, directory in stage_dirs.items():
        stage_file, log = directory / "kochat_stage.json", directory / "metrics.jsonl"
        if not (stage_file.exists() and log.exists()):
            continue
        kind = json.loads(stage_file.read_text(encoding="utf-8"))["stage"]
        lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        last_step = max((line["step"] for line in lines if "step" in line), default=None)
        for title, x_key, keys, limits in PANELS.get(kind, []):
            series = [(label, *map(list, zip(*points))) for key, label in keys
                      if (points := [(line[x_key], line[key]) for line in lines if key in line and x_key in line])]
            if series:
                by_step = x_key == "step"
                panels.append((f"{name}: {title}", "step" if by_step else "KL to the reference (held-out)", series, limits,
                               last_step if by_step else None))
    return panels


def plot_curves(stage_dirs: dict[str, Path], path: Path) -> Path:
    """One PNG: a grid with each stage's panels on their own x-axis, from each stage's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = curve_panels(stage_dirs) or [("no training curves found", "step", [], None, None)]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.6 * rows), squeeze=False)
    for axis, (title, x_label, series, limits, last_step) in zip(axes.flat, panels):
        for index, (label, xs, ys) in enumerate(series):
            colour = f"C{index}"
            if len(ys) > SMOOTH_ABOVE:
                axis.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
                axis.plot(xs, smooth(ys, max(2, len(ys) // 15)), color=colour, label=f"{label} (smoothed)")
            else:
                axis.plot(xs, ys, color=colour, marker="o", markersize=4, label=label)
                if len(ys) <= 3:  # a value or two: say it
                    for x, y in zip(xs, ys):
                        axis.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(-6, 6), ha="right", fontsize=8)
        if last_step:  # every panel of a stage on the whole run, so a final eval point is not alone on its own axis
            axis.set_xlim(0, last_step * 1.03)
        if limits:
            axis.set_ylim(*limits)
            axis.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel(x_label, fontsize=9)
        axis.grid(alpha=0.3)
        if series:
            axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
