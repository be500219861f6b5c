"""The grid's plots: per swept dimension (one key, or keys zipped together), AUROC and FPR95 (the
average over OOD datasets) against its values, one line per score row, the seeds' spread (± one
std) as a band, the other dimensions held at the job's own value of their keys (else their first
value); for a grid of two dimensions, also a heat map of average AUROC per score row.

matplotlib's object API (Agg canvas), so no global backend is switched; PNGs are rendered to bytes
and written only where they changed.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from negrefine_ray.config import JobConfig
from negrefine_ray.core.metrics import METRIC_INFO

LINE_METRICS = ("auroc", "fpr95")


def base_value(config: JobConfig, key: str) -> Any:
    """The job's own value of a swept key (outside its grid): `section.key`, or `section.NAME.key`
    for an entry of `[[datasets]]` / `[[judges]]`; None where it has none."""
    data = config.to_dict()
    section, _, rest = key.partition(".")
    value = data.get(section)
    if isinstance(value, list):
        name, _, rest = rest.partition(".")
        value = next((e for e in value if e.get("name") == name), None)
    return value.get(rest) if isinstance(value, dict) else None


def _as_key(value: Any) -> str:
    return repr(value if not isinstance(value, list | tuple) else tuple(value))


def _fixed(summary: Mapping[str, Any], config: JobConfig) -> dict[str, Any]:
    """Each swept key's held value when another dimension is plotted."""
    out = {}
    for dim in summary["dimensions"]:
        axes = [next(a for a in summary["axes"] if a["key"] == k) for k in dim]
        own = tuple(_as_key(base_value(config, k)) for k in dim)
        columns = list(zip(*(a["values"] for a in axes), strict=True))
        chosen = next((c for c in columns if tuple(_as_key(v) for v in c) == own), columns[0])
        out.update(dict(zip(dim, chosen, strict=True)))
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _label(values: Sequence[Any]) -> str:
    return " / ".join(str(v) for v in values)


def _numeric(columns: Sequence[Sequence[Any]]) -> bool:
    return len(columns[0]) == 1 and all(
        isinstance(c[0], int | float) and not isinstance(c[0], bool) for c in columns
    )


def plt_colour(i: int) -> Any:
    """A distinct colour for each of up to 20 lines (tab20), cycling after."""
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)


def _line_plot(summary: Mapping[str, Any], dim: Sequence[str], fixed: Mapping[str, Any]) -> Any:
    from matplotlib.figure import Figure

    axes = [next(a for a in summary["axes"] if a["key"] == k) for k in dim]
    columns = list(zip(*(a["values"] for a in axes), strict=True))
    held = {k: v for k, v in fixed.items() if k not in dim}
    chosen = []  # the point of each column, the other dimensions held
    for column in columns:
        want = {**held, **dict(zip(dim, column, strict=True))}
        chosen.append(next(e for e in summary["points"] if all(e["values"][k] == v for k, v in want.items())))
    x = np.array([c[0] for c in columns], dtype=float) if _numeric(columns) else np.arange(len(columns))
    fig = Figure(figsize=(11, 4.4))
    colours = [plt_colour(i) for i in range(len(summary["rows"]))]
    for ax, metric in zip(fig.subplots(1, len(LINE_METRICS)), LINE_METRICS, strict=True):
        for (row, label), colour in zip(summary["rows"].items(), colours, strict=True):
            stats = [e["metrics"].get(row, {}).get("average", {}).get(metric) for e in chosen]
            if any(s is None for s in stats):
                continue
            mean = np.array([100 * s["mean"] for s in stats])
            std = np.array([100 * s["std"] for s in stats])
            ax.plot(x, mean, marker="o", linewidth=1.2, label=label, color=colour)
            if std.any():
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15)
        info = METRIC_INFO[metric]
        ax.set(xlabel=" / ".join(dim), ylabel=f"{info.label} (%, average over OOD datasets)")
        ax.set_title(f"{info.label} {'↑' if info.higher_is_better else '↓'}")
        if not _numeric(columns):
            ax.set_xticks(x, [_label(c) for c in columns], rotation=20, fontsize=8)
    fig.axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if held:
        fig.suptitle("held: " + ", ".join(f"{k} = {v}" for k, v in held.items()), fontsize=9)
    return fig


def _heat_map(summary: Mapping[str, Any], dims: Sequence[Sequence[str]]) -> Any:
    from matplotlib.figure import Figure

    rows = list(summary["rows"].items())
    n_cols = min(4, len(rows))
    n_rows = -(-len(rows) // n_cols)
    fig = Figure(figsize=(3.6 * n_cols, 3.0 * n_rows), layout="constrained")
    grids = fig.subplots(n_rows, n_cols, squeeze=False)
    columns = [list(dict.fromkeys(tuple(e["values"][k] for k in d) for e in summary["points"])) for d in dims]
    for ax, (row, label) in zip(grids.flat, rows, strict=False):
        cells = np.full((len(columns[0]), len(columns[1])), np.nan)
        for e in summary["points"]:
            stat = e["metrics"].get(row, {}).get("average", {}).get("auroc")
            if stat is not None:
                i = columns[0].index(tuple(e["values"][k] for k in dims[0]))
                j = columns[1].index(tuple(e["values"][k] for k in dims[1]))
                cells[i, j] = 100 * stat["mean"]
        ax.imshow(cells, cmap="viridis", aspect="auto")
        lo, hi = np.nanmin(cells), np.nanmax(cells)
        for (i, j), v in np.ndenumerate(cells):
            bright = hi > lo and (v - lo) / (hi - lo) > 0.6
            ax.text(
                j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="black" if bright else "white"
            )
        ax.set_xticks(range(len(columns[1])), [_label(c) for c in columns[1]], fontsize=7, rotation=20)
        ax.set_yticks(range(len(columns[0])), [_label(c) for c in columns[0]], fontsize=7)
        ax.set(xlabel=" / ".join(dims[1]), ylabel=" / ".join(dims[0]))
        ax.set_title(f"{label}: AUROC (%)", fontsize=8)
    for ax in list(grids.flat)[len(rows) :]:
        ax.set_visible(False)
    return fig


def write_plots(
    summary: Mapping[str, Any], config: JobConfig, write: Callable[[Path, bytes], None]
) -> list[str]:
    """Render the plots and `write` each into `<run>/plots/`; returns their names in the job folder."""
    figures = {}
    fixed = _fixed(summary, config)
    for dim in summary["dimensions"]:
        figures[f"plots/line_{_safe('+'.join(dim))}.png"] = _line_plot(summary, dim, fixed)
    if len(summary["dimensions"]) == 2:
        name = "+".join("-".join(d) for d in summary["dimensions"])
        figures[f"plots/heatmap_{_safe(name)}.png"] = _heat_map(summary, summary["dimensions"])
    for name, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        write(config.run_dir / name, buffer.getvalue())
    return list(figures)
