"""The report's judge comparison: what each judge's filtering does downstream, against what it cost.

One table row per judge (and "none", the methods unfiltered): the judge's questions and cost from the
filter manifest's accounting, then each filtered method's average AUROC / FPR95 over the OOD datasets
(NegRefine's negatives filtered after mining, and with filter.scope = "corpus" every method mined
from the pool the judge filtered). The plot puts each method's average AUROC against the judges'
cost: GPU-seconds where the judges ran on GPUs, wall seconds otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from negrefine_ray.core.methods import METHODS

PLOT = "plots/judges_auroc_cost.png"


def _key(column: Mapping[str, Any]) -> str | None:
    """The comparison column a score row belongs to, or None: methods no judge changes (catalogue
    property `judged`: MCM, InterNeg), visual rows, and a filtered method's rows without S_MM."""
    method = METHODS[column["method"]]
    if not method.judged or column.get("visual") or (method.filtered and not column["s_mm"]):
        return None
    # a filtered method has rows over its filtered negatives and rows mined from the filtered pool
    return f"{method.name} (pool)" if column.get("pool") and method.filtered else method.name


def judge_table(
    result: Mapping[str, Any], catalogue: Sequence[Mapping[str, Any]], filter_stats: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """{judge or "none": {"cost": accounting or {}, "methods": {key: average metrics}}}, or {} when no
    score row was filtered by a judge."""
    cells: dict[str, dict[str, Any]] = {}
    for column in catalogue:
        key = _key(column)
        if key is None or column["row"] not in result["rows"]:
            continue
        judge, method = column["judge"] or "none", METHODS[column["method"]]
        if method.filtered and judge == "none" and column["row"] != method.row(None, s_mm=True)[0]:
            continue  # the unfiltered comparison row is the method's without NegFilter, with S_MM
        entry = cells.setdefault(judge, {"cost": {}, "methods": {}})
        entry["methods"][key] = result["rows"][column["row"]]["average"]
    if set(cells) <= {"none"}:
        return {}
    for judge, entry in cells.items():
        stats = filter_stats.get(judge)
        if isinstance(stats, dict):
            entry["cost"] = stats.get("accounting", {})
    return {j: cells[j] for j in ["none", *sorted(j for j in cells if j != "none")] if j in cells}


def _cost(accounting: Mapping[str, Any], gpu: bool) -> float:
    return float(accounting.get("gpu_seconds" if gpu else "wall_s", 0.0))


def judge_lines(table: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not table:
        return []
    keys = list(dict.fromkeys(k for e in table.values() for k in e["methods"]))
    header = ["Judge", "Sent to judge", *(f"{k} AUROC / FPR95" for k in keys)]
    lines = [
        "## Judges compared",
        "",
        "Average over the OOD datasets (%); questions this run sent to the judge (answers taken from the "
        "store cost nothing here). Each judge's GPU- and wall seconds are under Measured times, and in "
        f"`{PLOT}` against AUROC.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for judge, e in table.items():
        a, m = e["cost"], e["methods"]
        cells = [f"{100 * m[k]['auroc']:.2f} / {100 * m[k]['fpr95']:.2f}" if k in m else "-" for k in keys]
        asked = f"{a['questions_sent']:,}" if a else "-"
        lines.append("| " + " | ".join([judge, asked, *cells]) + " |")
    return lines


def write_judge_plot(table: Mapping[str, Mapping[str, Any]], out_dir: Path) -> list[str]:
    """Each method's average AUROC against each judge's cost; nothing without two judges."""
    judges = [j for j in table if j != "none" and table[j]["cost"]]
    if len(judges) < 2:
        return []
    from matplotlib.figure import Figure

    gpu = any(_cost(table[j]["cost"], True) > 0 for j in judges)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    keys = list(dict.fromkeys(k for j in judges for k in table[j]["methods"]))
    for key in keys:
        points = sorted(
            (_cost(table[j]["cost"], gpu), 100 * table[j]["methods"][key]["auroc"], j)
            for j in judges
            if key in table[j]["methods"]
        )
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=key, linewidth=1)
        for x, y, j in points:
            ax.annotate(j, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="judge cost (GPU-seconds)" if gpu else "judge cost (wall seconds)",
           ylabel="average AUROC (%)", title="Filtering: AUROC against judge cost")  # fmt: skip
    ax.legend(fontsize=7)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / PLOT, dpi=100, bbox_inches="tight")
    return [PLOT]
