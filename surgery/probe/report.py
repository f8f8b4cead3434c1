"""What ``surgery probe`` shows and writes: a table, a JSON record and a PNG of the three AUROC curves."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import save_figure_atomic, write_json_atomic
from .probes import KINDS, ProbeCurves

LABELS = {
    "base": "base -> base",
    "sft": "fine-tuned -> fine-tuned",
    "transfer": "base -> fine-tuned (transfer)",
}


def curves_from_record(record: dict) -> ProbeCurves:
    """The curves back from a record written by ``surgery probe --json`` (to re-plot or re-judge it)."""
    a, n = record["auroc"], record["items"]
    return ProbeCurves(
        a["base"],
        a["sft"],
        a["transfer"],
        n["train"],
        n["test"],
        n["test_unanswerable"],
        n["test_answerable"],
        surface=a.get("surface"),
    )


def format_table(curves: ProbeCurves) -> str:
    """One row per block; the best block of each column is starred."""
    best = {k: curves.best(k)[0] for k in KINDS}
    lines = [f"{'layer':>5}  {'base':>7}  {'sft':>7}  {'transfer':>8}"]
    for i in range(len(curves.base)):
        cells = []
        for k, width in zip(KINDS, (7, 7, 8), strict=False):
            mark = "*" if best[k] == i + 1 else " "
            cells.append(f"{getattr(curves, k)[i]:.3f}{mark}".rjust(width))
        lines.append(f"{i + 1:>5}  " + "  ".join(cells))
    lines.append(
        f"AUROC on {curves.n_test} held-out items ({curves.n_test_pos} unanswerable, {curves.n_test_neg} "
        f"answerable); probes trained on {curves.n_train}. * = best layer."
    )
    if curves.surface is not None:
        lines.append(f"Wording alone (bag-of-words probe on the question text): AUROC {curves.surface:.3f}.")
    return "\n".join(lines)


def write_json(record: dict, path: str | os.PathLike) -> Path:
    """Write ``record`` as indented JSON, atomically (temp file then rename)."""
    return write_json_atomic(path, record)


def plot_curves(
    curves: ProbeCurves, path: str | os.PathLike, title: str = "", extra: dict[str, list[float]] | None = None
) -> Path:
    """A PNG line plot of the three AUROC curves over layers (matplotlib, Agg backend), atomically.

    ``extra`` adds labelled curves from other runs on the same items (e.g. the transfer curve of a
    patched model), so before and after can share one figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    path = Path(path)
    layers = list(range(1, len(curves.base) + 1))
    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.add_subplot()
    for kind, style in zip(KINDS, ("o-", "s-", "^--"), strict=False):
        ax.plot(layers, getattr(curves, kind), style, markersize=3, label=LABELS[kind])
    for label, values in (extra or {}).items():
        ax.plot(layers, values, "d-", markersize=3, linewidth=1.6, label=label)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="chance")
    if curves.surface is not None:
        ax.axhline(curves.surface, color="black", linewidth=0.8, linestyle="-.", label="wording alone (bag of words)")
    ax.set_xlabel("layer (block output at the last prompt token)")
    ax.set_ylabel("AUROC (unanswerable vs answerable)")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlim(0.5, len(layers) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()

    return save_figure_atomic(fig, path)
