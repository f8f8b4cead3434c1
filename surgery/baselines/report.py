"""The comparison's numbers, tables and plots, computed from the per-item records of each method.

Confidence intervals are 95% percentile bootstraps over evaluation items (seeded). Differences
between two methods use a *paired* bootstrap: the same resampled items score both, which is what
separates two methods evaluated on the same questions.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic import save_figure_atomic
from ..evaluation import metrics as M


def _f1(records: Sequence[dict]) -> float | None:
    return M.honesty_f1([r["refused"] for r in records], [r["answerable"] for r in records])


def answer_accuracy(records: Sequence[dict]) -> float | None:
    return M.accuracy([r["correct"] for r in records], [r["answerable"] for r in records])


def macro_f1(records: Sequence[dict]) -> float | None:
    """Macro average of honesty F1 over the benchmarks present in ``records``."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["benchmark"], []).append(r)
    vals = [v for v in (_f1(rs) for rs in by.values()) if v is not None]
    return sum(vals) / len(vals) if vals else None


def honesty_records(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") != "task"]


def task_records(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "task"]


def paired_bootstrap(
    a: Sequence[dict],
    b: Sequence[dict],
    statistic: Callable[[Sequence[dict]], float | None],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict | None:
    """Difference statistic(a) − statistic(b) over the items both scored, with a paired 95% interval."""
    index = {r["id"]: r for r in b}
    common = [(r, index[r["id"]]) for r in a if r["id"] in index]
    if not common:
        return None
    point_a, point_b = statistic([x for x, _ in common]), statistic([y for _, y in common])
    if point_a is None or point_b is None:
        return None
    rng = random.Random(seed)
    n = len(common)
    diffs = []
    for _ in range(n_boot):
        pick = [common[rng.randrange(n)] for _ in range(n)]
        da, db = statistic([x for x, _ in pick]), statistic([y for _, y in pick])
        if da is not None and db is not None:
            diffs.append(da - db)
    diffs.sort()
    lo = diffs[int(0.025 * len(diffs))] if diffs else None
    hi = diffs[min(len(diffs) - 1, int(0.975 * len(diffs)))] if diffs else None
    return {"diff": point_a - point_b, "ci": [lo, hi], "n": n}


def method_metrics(records: Sequence[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Honesty F1 per benchmark and averaged, RF-delta, refusal rates and task accuracy, with CIs."""
    hon, task = honesty_records(records), task_records(records)
    per: dict[str, dict] = {}
    by: dict[str, list[dict]] = {}
    for r in hon:
        by.setdefault(r["benchmark"], []).append(r)
    for bench, rs in by.items():
        refused, answerable = [r["refused"] for r in rs], [r["answerable"] for r in rs]
        on_ans, on_una = M.refusal_rates(refused, answerable)
        per[bench] = {
            "n": len(rs),
            "honesty_f1": _f1(rs),
            "honesty_f1_ci": M.bootstrap_ci(rs, _f1, n_boot=n_boot, seed=seed),
            "rf_delta": M.rf_delta(refused, answerable),
            "refusal_answerable": on_ans,
            "refusal_unanswerable": on_una,
            "accuracy": answer_accuracy(rs),
        }
    rf = [m["rf_delta"] for m in per.values() if m["rf_delta"] is not None]
    return {
        "per_benchmark": per,
        "honesty_f1": macro_f1(hon),
        "honesty_f1_ci": M.bootstrap_ci(hon, macro_f1, n_boot=n_boot, seed=seed) if hon else None,
        "rf_delta": sum(rf) / len(rf) if rf else None,
        "task_accuracy": answer_accuracy(task) if task else None,
        "task_accuracy_ci": M.bootstrap_ci(task, answer_accuracy, n_boot=n_boot, seed=seed) if task else None,
        "n_honesty": len(hon),
        "n_task": len(task),
    }


def pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def ci(c) -> str:
    return "–" if not c else f"{100 * c[0]:.1f}–{100 * c[1]:.1f}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def markdown(summary: dict) -> str:
    """The efficiency table (one row a method), the per-benchmark F1 table and the paired differences."""
    rows = summary["methods"]
    benches = summary["honesty_benchmarks"]
    out = [
        (
            "| method | examples | params changed: % of model (of linear) | artifact | time (s) | peak RSS (MB) "
            "| honesty F1 [95% CI] | RF-delta | task acc [95% CI] | recovery |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metrics"]
        t = r.get("method_seconds")
        out.append(
            f"| {r['name']} | {r.get('examples_used', 0)} | {pct(r.get('share_of_model'))} "
            f"({pct(r.get('share_of_linear'))} of linear) "
            f"| {human_bytes(r.get('artifact_bytes')) if r.get('artifact_bytes') else '–'} "
            f"| {'–' if t is None else f'{t:.1f}'} | {r.get('peak_rss_mb', '–')} "
            f"| {pct(m['honesty_f1'])} [{ci(m['honesty_f1_ci'])}] | {pct(m['rf_delta'], True)} "
            f"| {pct(m['task_accuracy'])} [{ci(m['task_accuracy_ci'])}] | {pct(r.get('recovery'))} |"
        )
    if len(benches) > 1:
        out += [
            "",
            "| method | " + " | ".join(f"{b} F1 [95% CI]" for b in benches) + " |",
            "|---|" + "---|" * len(benches),
        ]
        for r in rows:
            per = r["metrics"]["per_benchmark"]
            cells = [
                f"{pct(per[b]['honesty_f1'])} [{ci(per[b]['honesty_f1_ci'])}]" if b in per else "–" for b in benches
            ]
            out.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    ref = summary.get("reference")
    if ref:
        out += [
            "",
            f"Paired differences against `{ref}` (same items; 95% paired bootstrap CI, points):",
            "",
            "| method | Δ honesty F1 [95% CI] | Δ task acc [95% CI] |",
            "|---|---|---|",
        ]

        def fmt(x: dict | None) -> str:
            return "–" if not x else f"{100 * x['diff']:+.1f} [{ci(x['ci'])}]"

        for r in rows:
            d = r.get("vs_reference") or {}
            out.append(f"| {r['name']} | {fmt(d.get('honesty_f1'))} | {fmt(d.get('task_accuracy'))} |")
    return "\n".join(out) + "\n"


def _save(fig, path: Path) -> Path:
    return save_figure_atomic(fig, path)


def _err(v, c):
    if v is None or not c:
        return [[0], [0]]
    return [[100 * (v - c[0])], [100 * (c[1] - v)]]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better on both), sorted by x.

    With forty methods on one plot only these, the methods a user would actually pick, can be labelled.
    """
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)
    ]
    return sorted(front, key=lambda i: points[i])


def plot_pareto(summary: dict, path: str | os.PathLike) -> Path:
    """Task accuracy against honesty F1, one point a method with its 95% CIs (up and right is better).

    The non-dominated methods are joined by a line and labelled, with the reference rows and the
    comparison's reference method; every other method is an unlabelled point in its family's colour
    (``bench.md`` has them all by name).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r
        for r in summary["methods"]
        if r["metrics"]["honesty_f1"] is not None and r["metrics"]["task_accuracy"] is not None
    ]
    pts = [(100 * r["metrics"]["honesty_f1"], 100 * r["metrics"]["task_accuracy"]) for r in rows]
    front = pareto_front(pts)
    labelled = set(front) | {
        i for i, r in enumerate(rows) if r["family"] == "reference" or r["name"] == summary.get("reference")
    }
    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=120)
    colors: dict[str, str] = {}
    for i, r in enumerate(rows):
        m = r["metrics"]
        color = colors.setdefault(r["family"], f"C{len(colors)}")
        is_ref = r["name"] == summary.get("reference")
        ax.errorbar(
            *pts[i],
            xerr=_err(m["honesty_f1"], m["honesty_f1_ci"]),
            yerr=_err(m["task_accuracy"], m["task_accuracy_ci"]),
            fmt="*" if is_ref else "o",
            color=color,
            ms=9 if is_ref else 4,
            elinewidth=0.5,
            capsize=1.5,
            alpha=0.9 if i in labelled else 0.45,
        )
        if i in labelled:
            label = r["name"].replace("compensation=", "").replace("selection=", "")  # bench.md has full names
            ax.annotate(label, pts[i], fontsize=6, xytext=(3, 3), textcoords="offset points")
    if len(front) > 1:
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            "-",
            color="0.5",
            lw=0.8,
            zorder=0,
            label="Pareto front",
        )
    for fam, color in colors.items():
        ax.plot([], [], "o", color=color, label=fam)
    ax.set_xlabel("honesty F1, average (%)")
    ax.set_ylabel("task accuracy (%)")
    ax.set_title("Honesty vs task accuracy (95% bootstrap CIs; * = reference method)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_budget(
    summary: dict, path: str | os.PathLike, families: Sequence[str] = ("HCNR", "RAIT-LoRA", "RAIT-full", "DPO-LoRA")
) -> Path:
    """Honesty F1 and task accuracy against examples used (left) and wall seconds (right), per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120, sharey=True)
    refs = {r["name"]: r for r in summary["methods"] if r["family"] == "reference"}
    ref = next((r for r in summary["methods"] if r["name"] == summary.get("reference")), None)
    for ax, key, label in (
        (axes[0], "examples_used", "training / calibration examples used"),
        (axes[1], "method_seconds", "wall time of the method (s)"),
    ):
        for j, fam in enumerate(families):
            pts = [
                r
                for r in summary["methods"]
                if r["family"] == fam and r.get(key) is not None and r["metrics"]["honesty_f1"] is not None
            ]
            if not pts:
                continue
            pts.sort(key=lambda r: r[key])
            xs = [r[key] for r in pts]
            line = "-" if fam != "HCNR" else "none"  # HCNR points are variants, not one curve
            ax.plot(
                xs,
                [100 * r["metrics"]["honesty_f1"] for r in pts],
                marker="o",
                ls=line,
                color=f"C{j}",
                label=f"{fam}: honesty F1",
                ms=4,
            )
            if any(r["metrics"]["task_accuracy"] is not None for r in pts):
                ax.plot(
                    xs,
                    [100 * (r["metrics"]["task_accuracy"] or 0) for r in pts],
                    marker="s",
                    ls="--" if line == "-" else "none",
                    color=f"C{j}",
                    alpha=0.5,
                    label=f"{fam}: task acc",
                    ms=4,
                )
        for name, r in refs.items():
            if r["metrics"]["honesty_f1"] is not None:
                ax.axhline(100 * r["metrics"]["honesty_f1"], color="grey", lw=0.7, ls=":" if name == "sft" else "-.")
                ax.annotate(
                    f"{name} F1",
                    (0.01, 100 * r["metrics"]["honesty_f1"]),
                    xycoords=("axes fraction", "data"),
                    fontsize=6,
                    color="grey",
                )
        if ref is not None and ref.get(key) and ref["metrics"]["honesty_f1"] is not None:
            # the method every difference is taken against, findable among the HCNR variants
            ax.plot(
                [ref[key]],
                [100 * ref["metrics"]["honesty_f1"]],
                "*",
                color="black",
                ms=11,
                zorder=5,
                label=f"reference: {ref['name']}" if ax is axes[1] else None,
            )
        xs_all = [r[key] for r in summary["methods"] if r["family"] in families and (r.get(key) or 0) > 0]
        if xs_all and max(xs_all) / min(xs_all) > 20:  # RAIT at the paper's 5000 examples next to HCNR's 256
            ax.set_xscale("log")
        ax.set_xlabel(label + (" (log scale)" if ax.get_xscale() == "log" else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=6, loc="lower right")
    fig.suptitle("Honesty and task accuracy against data and time")
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
