"""report.html: one self-contained page (no network: the curves inline as base64, no CDN) with the
comparison table, the training curves and every prompt with each model's response and scores."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from kochat_eval.report import caption, table_cells, table_columns

STYLE = """
body { font-family: "Noto Sans CJK KR", "Noto Sans KR", sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }
th { background: #f2f2f2; }
#answers th { cursor: pointer; }
td.num { text-align: right; white-space: nowrap; }
td.text { max-width: 28em; }
.score { color: #555; font-size: 12px; white-space: nowrap; }
.up { color: #0a7a2f; } .down { color: #b3261e; }
img { max-width: 100%; }
"""

# Sorting by a column is the one interaction; a few lines of inline script, nothing fetched.
SCRIPT = """
document.querySelectorAll('#answers th').forEach((th, column) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const descending = th.dataset.order !== 'desc';
  th.dataset.order = descending ? 'desc' : 'asc';
  const value = row => { const cell = row.cells[column]; const n = parseFloat(cell.dataset.sort ?? cell.textContent); return isNaN(n) ? cell.textContent : n; };
  [...body.rows].sort((a, b) => { const x = value(a), y = value(b); return (x > y ? 1 : x < y ? -1 : 0) * (descending ? -1 : 1); })
    .forEach(row => body.appendChild(row));
}));
"""


def render_html(report: dict, generations: list[dict], curves: Path | None = None) -> str:
    """The page for a stage (or decoding) comparison; `generations` are its rows (`stage` or `decoding`)."""
    group = "decoding" if "decodings" in report else "stage"
    names = [row["stage"] for row in report["stages"]]
    reference = report.get("reference") if report.get("reference") in names else names[0]
    score = "judge_score" if generations and "judge_score" in generations[0] else "proxy_score"
    columns = table_columns(report)
    parts = [f"<!DOCTYPE html><html lang=\"ko\"><head><meta charset=\"utf-8\"><title>{escape(report.get('title', 'kochat stage comparison'))}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{escape(report.get('title', 'kochat stage comparison'))}</h1><p>{escape(caption(report))}</p>",
             "<table><thead><tr>" + "".join(f"<th>{escape(header)}</th>" for _, header, _ in columns) + "</tr></thead><tbody>"]
    for stage in report["stages"]:
        parts.append("<tr>" + "".join(f"<td class=\"num\">{escape(cell)}</td>" for cell in table_cells(stage, columns)) + "</tr>")
    parts.append("</tbody></table>")
    if curves is not None and curves.exists():
        encoded = base64.b64encode(curves.read_bytes()).decode("ascii")
        parts.append(f"<h2>Training curves</h2><img alt=\"training curves\" src=\"data:image/png;base64,{encoded}\">")
    parts.append(_answers(generations, names, reference, group, score))
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _answers(generations: list[dict], names: list[str], reference: str, group: str, score: str) -> str:
    """Every prompt, each model's response with its scores, and per model the change in `score`
    against the reference's response to the same prompt (click a header to sort)."""
    by_prompt: dict[str, dict[str, dict]] = {}
    for row in generations:
        by_prompt.setdefault(row["prompt"], {})[row[group]] = row
    others = [name for name in names if name != reference]
    label = score.removesuffix("_score")
    head = ["#", "prompt"] + [f"{name}" for name in names] + [f"Δ {label}: {name} − {reference}" for name in others]
    lines = [f"<h2>Every held-out prompt ({len(by_prompt)})</h2>",
             f"<p>Scores are proxy / judge where there is a judge, then the relevance referee's cosine. Click a Δ header to sort by the {label} score difference.</p>",
             "<table id=\"answers\"><thead><tr>" + "".join(f"<th>{escape(text)}</th>" for text in head) + "</tr></thead><tbody>"]
    for number, (prompt, rows) in enumerate(by_prompt.items(), start=1):
        cells = [f"<td class=\"num\">{number}</td>", f"<td class=\"text\">{escape(prompt)}</td>"]
        for name in names:
            row = rows.get(name, {})
            scores = " / ".join(f"{row[key]:.3f}" for key in ("proxy_score", "judge_score") if key in row)
            if "relevance" in row:
                scores += f" · relevance {row['relevance']:.3f}"
            cells.append(f"<td class=\"text\" data-sort=\"{row.get(score, '')}\">{escape(row.get('response', ''))}"
                         f"<div class=\"score\">{escape(scores)}</div></td>")
        for name in others:
            delta = rows[name][score] - rows[reference][score] if name in rows and reference in rows else float("nan")
            style = "up" if delta > 0 else "down" if delta < 0 else ""
            cells.append(f"<td class=\"num {style}\" data-sort=\"{delta:.6f}\">{delta:+.3f}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)
