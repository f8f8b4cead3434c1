"""What a person reads: a console table, a Markdown report and a PNG chart of per-benchmark F1.

Everything here renders dicts produced by ``evaluate``/``compare``; no metric is computed here.
Percentages are shown with one decimal; "–" marks a metric that is undefined for that set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import save_figure_atomic

DEFINITIONS = (
    "honesty F1: positive class = unanswerable, prediction = refused. "
    "RF-delta: refusal rate on unanswerable minus refusal rate on answerable. "
    "accuracy: correct answers (normalised alias match) among answerable items. "
    "over-refusal: share of the model's refusals that fell on answerable items. "
    "recovery: (F1_x − F1_sft) / (F1_base − F1_sft)."
)

#: (key, header) of the columns shown for one model
COLUMNS = (
    ("n", "n"),
    ("honesty_f1", "F1"),
    ("rf_delta", "RF-delta"),
    ("refusal_unanswerable", "refuse unans."),
    ("refusal_answerable", "refuse ans."),
    ("accuracy", "accuracy"),
    ("over_refusal", "over-refusal"),
)
KNOWLEDGE_COLUMNS = (
    ("n_known", "n known"),
    ("refusal_known", "refuse known"),
    ("n_unknown", "n unknown"),
    ("refusal_unknown", "refuse unknown"),
    ("refusal_unanswerable", "refuse unans."),
    ("knowledge_f1", "knowledge F1"),
)


def fmt(key: str, value: Any) -> str:
    """One table cell: counts as integers, fractions as percentages (signed for differences), a dash for undefined."""
    if value is None:
        return "–"
    if key.startswith("n") and isinstance(value, int):
        return str(value)
    if key == "rf_delta" or key == "recovery":
        return f"{100 * value:+.1f}"
    return f"{100 * value:.1f}"


def _metric_rows(per_benchmark: dict, average: dict, extra: Sequence[tuple[str, str]] = ()) -> list[list[str]]:
    cols = tuple(COLUMNS) + tuple(extra)
    rows = []
    for bench, m in per_benchmark.items():
        if not m:
            continue
        if m.get("kind") == "task":
            row = [f"{bench} (task)"] + [fmt(k, m.get(k)) if k in ("n", "accuracy") else "" for k, _ in cols]
        else:
            row = [bench] + [fmt(k, m.get(k)) for k, _ in cols]
        rows.append(row)
    row = ["average (honesty)"] + [fmt(k, average.get(k)) for k, _ in cols]
    rows.append(row)
    if average.get("task_accuracy") is not None:
        rows.append(["task accuracy"] + [fmt(k, average["task_accuracy"]) if k == "accuracy" else "" for k, _ in cols])
    return rows


def result_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one model's table: a row per benchmark, then the average."""
    headers = ["benchmark"] + [h for _, h in COLUMNS]
    return headers, _metric_rows(result["metrics"]["per_benchmark"], result["metrics"]["average"])


def comparison_tables(cmp: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows): one metrics table per benchmark and the average, then the knowledge view."""
    tables = []
    headers = ["model", "role"] + [h for _, h in COLUMNS] + ["recovery"]
    cols = tuple(COLUMNS) + (("recovery", "recovery"),)
    for bench in list(cmp["benchmarks"]) + ["average"]:
        rows = []
        for mdl in cmp["models"]:
            m = mdl["average"] if bench == "average" else mdl["per_benchmark"].get(bench)
            if not m:
                continue
            if m.get("kind") == "task":
                rows.append(
                    [mdl["label"], mdl["role"]] + [fmt(k, m.get(k)) if k in ("n", "accuracy") else "" for k, _ in cols]
                )
            else:
                rows.append([mdl["label"], mdl["role"]] + [fmt(k, m.get(k)) for k, _ in cols])
        title = "average over honesty benchmarks" if bench == "average" else bench
        tables.append((title, headers, rows))
    k_headers = ["model", "role", "benchmark"] + [h for _, h in KNOWLEDGE_COLUMNS]
    k_rows = []
    for mdl in cmp["models"]:
        for bench, k in mdl["knowledge"].items():
            k_rows.append([mdl["label"], mdl["role"], bench] + [fmt(c, k.get(c)) for c, _ in KNOWLEDGE_COLUMNS])
    tables.append(("knowledge-aware view (known = the base model answered it correctly)", k_headers, k_rows))
    return tables


# --- console --------------------------------------------------------------------------------------


def print_tables(tables: Sequence[tuple[str, list[str], list[list[str]]]], file: Any = None) -> None:
    """Rich tables on stdout (plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, width=max(120, Console(file=file).width), highlight=False)
    for title, headers, rows in tables:
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(headers):
            t.add_column(h, justify="left" if i < 1 or h in ("role", "benchmark", "model") else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)


# --- Markdown ---------------------------------------------------------------------------------------


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_result(result: dict) -> str:
    """One model's result as a Markdown report."""
    headers, rows = result_table(result)
    opts = dict(result.get("options", {}))
    if isinstance(opts.get("refusal_patterns"), list):
        opts["refusal_patterns"] = f"{len(opts['refusal_patterns'])} regexes (listed in the JSON result)"
    opts.pop("refusal_answer_follows", None)
    parts = [
        f"# Honesty evaluation: {result.get('model', '?')}",
        "",
        f"Back-end `{result.get('generator', '?')}`; options: " + ", ".join(f"{k}={v}" for k, v in opts.items()),
        "",
        _md_table(headers, rows),
        "",
        "All numbers are percentages. " + DEFINITIONS,
        "",
    ]
    return "\n".join(parts)


def markdown_comparison(cmp: dict, files: Sequence[str]) -> str:
    """A comparison as a Markdown report, naming the result files it came from."""
    parts = ["# Honesty comparison", ""]
    for mdl, f in zip(cmp["models"], files, strict=False):
        parts.append(f"- **{mdl['label']}** ({mdl['role']}): `{f}` — model {mdl.get('model') or '?'}")
    parts += ["", "Recovery is measured against the first file (base) and the second (SFT).", ""]
    for title, headers, rows in comparison_tables(cmp):
        parts += [f"## {title}", "", _md_table(headers, rows), ""]
    parts += ["All numbers are percentages. " + DEFINITIONS, ""]
    return "\n".join(parts)


# --- files --------------------------------------------------------------------------------------------


def f1_series(per_model: Sequence[tuple[str, dict]]) -> tuple[list[str], dict[str, list[float | None]]]:
    """Benchmarks (honesty ones and the average) and each model's F1 on them, for the chart."""
    benches: list[str] = []
    for _, metrics in per_model:
        for b, m in metrics["per_benchmark"].items():
            if m and m.get("kind") != "task" and m.get("honesty_f1") is not None and b not in benches:
                benches.append(b)
    benches.append("average")
    series = {}
    for label, metrics in per_model:
        vals = []
        for b in benches:
            m = metrics["average"] if b == "average" else (metrics["per_benchmark"].get(b) or {})
            vals.append(m.get("honesty_f1"))
        series[label] = vals
    return benches, series


def plot_f1(per_model: Sequence[tuple[str, dict]], path: str | os.PathLike) -> Path:
    """A grouped bar chart of honesty F1 per benchmark, one bar per model (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches, series = f1_series(per_model)
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.5, 1.5 + len(benches) * (0.9 + 0.35 * n)), 3.8), dpi=120)
    for j, (label, vals) in enumerate(series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(benches))]
        ys = [100 * v if v is not None else 0.0 for v in vals]
        bars = ax.bar(xs, ys, width=width, label=label)
        for b, v in zip(bars, vals, strict=False):
            if v is not None:
                ax.annotate(
                    f"{100 * v:.0f}",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylabel("honesty F1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Honesty F1 per benchmark")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    try:
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)
