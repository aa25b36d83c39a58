"""Tables fit the terminal and never cut a number: the stage table splits by columns, data stats stacks."""

import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from conftest import REPO
from kochat_eval.report import balanced_groups, column_groups, print_stage_table, table_cells, table_columns


def stage(name, offset):
    return {"stage": name, "proxy_score": 4.587 + offset, "proxy_score_ci_low": 4.419, "proxy_score_ci_high": 4.736,
            "judge_score": 3.988 - offset, "judge_score_ci_low": 3.73, "judge_score_ci_high": 4.232, "win_rate": 0.5957,
            "win_rate_ci_low": 0.537, "win_rate_ci_high": 0.652, "lc_win_rate": 0.5868, "kl": 13.708 + offset, "length_mean": 3.4,
            "length_median": 3.0, "eos_rate": 1.0, "non_hangul_share": 0.35, "distinct_1": 0.8125, "distinct_2": 0.985,
            "seq_rep_4": 0.0, "rep_w16": 0.0523, "loop_share": 0.02}


REPORT = {"prompts": 256, "prompt_set_sha256": "28da64f318c213cb", "seed": 0, "unit": "eojeol", "reference": "sft",
          "decoding": {"max_new_tokens": 48, "top_k": 0, "top_p": 1.0, "temperature": 1.0}, "win_judged_by": "judge",
          "stages": [stage(name, i / 7) for i, name in enumerate(("base", "sft", "ppo", "dpo"))]}


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_stage_table_fits_the_width_and_shows_every_number_in_full(width):
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    print_stage_table(console, REPORT)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    columns = table_columns(REPORT)
    for row in REPORT["stages"]:
        for cell in table_cells(row, columns):
            assert cell in text, cell
    for _, header, _ in columns:
        assert header in text


def test_column_groups_start_with_the_name_column_and_balance_the_rest():
    widths = [5, 10, 10, 10, 10, 10]  # each column takes its width + 3; a table adds 4 for the name column and edges
    assert column_groups(widths, 1000) == [[0, 1, 2, 3, 4, 5]]
    assert column_groups(widths, 48) == [[0, 1, 2, 3], [0, 4, 5]]
    assert column_groups([5, 10, 10, 10, 3], 48) == [[0, 1, 2, 3], [0, 4]]
    assert balanced_groups([5, 10, 10, 10, 3], 48) == [[0, 1, 2], [0, 3, 4]]


def test_data_stats_at_80_columns_shows_every_length_in_full(sample_data):
    done = subprocess.run([sys.executable, "-m", "kochat", "data", "stats", str(sample_data)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    report = json.loads(subprocess.run([sys.executable, "-m", "kochat", "data", "stats", str(sample_data), "--json"],
                                       capture_output=True, text=True, cwd=REPO).stdout)
    lines = done.stdout.splitlines()
    assert "…" not in done.stdout
    for kind, splits in report["sources"][0]["kinds"].items():
        for split, split_report in splits.items():
            for field, texts in split_report["texts"].items():
                expected = [field, "chars", *(str(texts["chars"][key]) for key in ("min", "p50", "p90", "p99", "max"))]
                row = next(line for line in lines if line.replace("│", " ").split() == expected)
                assert len(row) <= 80


def test_smooth_is_a_trailing_mean():
    from kochat_eval.report import smooth

    assert smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


def test_curves_give_each_stage_its_own_panels_by_what_the_stage_is(tmp_path):
    from kochat_eval.report import curve_panels, plot_curves

    rm = tmp_path / "judge"
    rm.mkdir()
    (rm / "kochat_stage.json").write_text(json.dumps({"stage": "rm", "metrics": {}}))
    (rm / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in [
        {"step": 50, "loss": 0.6}, {"step": 100, "loss": 0.4}, {"step": 100, "eval_loss": 0.5, "eval_accuracy": 0.83,
                                                                 "eval_accuracy_0v1": 0.51}]))
    panels = curve_panels({"judge": rm, "missing": tmp_path / "nothing"})
    assert [(title, limits, last) for title, _, _, limits, last in panels] == [("judge: loss", None, 100), ("judge: eval accuracy", (0, 1), 100)]
    assert panels[0][2] == [("train", [50, 100], [0.6, 0.4]), ("eval", [100], [0.5])]
    assert plot_curves({"judge": rm}, tmp_path / "curves.png").stat().st_size > 0
