"""The benchmark table that run_all.py and peers.py both print: kochat against a baseline, the ratio and its target."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def row(workload: str, ours: float, other: float, target: str, needed: float | bool, inverse: bool = False,
        baseline: str = "seed-style") -> dict:
    """One table row. `needed` is the ratio to reach; for a metric row, where a ratio means nothing, whether it is met;
    None for a row shown for reference."""
    if isinstance(needed, bool):
        ratio, met = None, needed
    else:
        ratio = other / ours if inverse else ours / other
        met = None if needed is None else ratio >= needed
    return {"workload": workload, "kochat": ours, "baseline": baseline, "other": other, "ratio": ratio, "target": target, "met": met}


def print_rows(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for name in ("workload", "kochat", "baseline", "ratio", "target", "met"):
        table.add_column(name, justify="left" if name == "workload" else "right")
    for item in rows:
        figure = "{:,.1f}" if item["ratio"] is not None else "{:.3f}"
        table.add_row(item["workload"], figure.format(item["kochat"]), f"{item['baseline']} {figure.format(item['other'])}",
                      "" if item["ratio"] is None else f"{item['ratio']:.2f}×", item["target"],
                      "–" if item["met"] is None else "yes" if item["met"] else "[red]no[/]")
    Console(width=170).print(table)
