"""The grid summary in the job's folder: `grid.json` (every point's values, its mean ± std over seeds
of every metric, the stages it computed or reused), `grid.md` (a table per metric: points as rows,
score row × dataset as columns; what ran where; links to the points' reports), `grid.html` (the same
tables, the plots, the links) and `plots/` (grid/plots.py).

Every figure is read from the points' own report/metrics.json and aggregated by seeds.aggregate, the
multi-seed jobs' mean and population std. A file whose content is unchanged is left untouched, so a
rerun of a finished grid changes nothing.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from negrefine_ray.config import GridPoint, JobConfig
from negrefine_ray.core.metrics import METRIC_INFO
from negrefine_ray.grid.plots import write_plots
from negrefine_ray.pipeline import STAGE_NAMES
from negrefine_ray.runfolder.artifacts import MANIFEST
from negrefine_ray.runfolder.atomic import read_json, write_if_changed
from negrefine_ray.seeds import aggregate, read_seed_metrics, seed_run_dirs

TABLE_METRICS = ("auroc", "fpr95")  # the papers' two columns; grid.json holds every metric


def _stage_origins(job_dir: Path, run_dir: Path) -> dict[str, str]:
    """Per stage of a point's run folder: "ran" (computed there) or the run folder it was linked in
    from, relative to the job's folder; stages without output are left out."""
    out: dict[str, str] = {}
    for stage in STAGE_NAMES:
        path = run_dir / stage / MANIFEST
        if path.is_file():
            origin = read_json(path).get("reused_from")
            if origin is None:
                out[stage] = "ran"
            else:
                source = os.path.normpath(run_dir / stage / origin)
                out[stage] = Path(os.path.relpath(source, job_dir)).parent.as_posix()
    return out


def _reports(job_dir: Path, config: JobConfig) -> list[dict[str, Any]]:
    """Links to a point's reports: its seeds' report.html where the report stage wrote one beside
    report.md, else report.md; with several seeds, the mean ± std page first."""
    links: list[dict[str, Any]] = []
    runs = seed_run_dirs(config)
    if len(runs) > 1:
        links.append({"seed": None, "path": os.path.relpath(config.run_dir / "report-seeds.md", job_dir)})
    for seed, run_dir in runs.items():
        page = run_dir / "report" / "report.html"
        page = page if page.is_file() else page.with_suffix(".md")
        links.append({"seed": seed, "path": Path(os.path.relpath(page, job_dir)).as_posix()})
    return links


def grid_summary(config: JobConfig, points: Sequence[tuple[GridPoint, JobConfig]]) -> dict[str, Any]:
    """The summary as grid.json holds it."""
    job_dir = config.run_dir
    entries: list[dict[str, Any]] = []
    rows: dict[str, str] = {}
    metric_names: list[str] = []
    datasets: list[str] = []
    for point, point_cfg in points:
        per_seed = read_seed_metrics(point_cfg)
        first = per_seed[min(per_seed)]
        metric_names += [m for m in first["metrics"] if m not in metric_names]
        datasets += [d for d in first["ood_datasets"] if d not in datasets]  # a swept preset: the union
        summary = aggregate(per_seed)
        rows.update({key: row["label"] for key, row in summary["rows"].items() if key not in rows})
        entries.append({
            "name": point.name,
            "values": dict(point.values),
            "sets": point.sets,
            "seeds": summary["seeds"],
            "reports": _reports(job_dir, point_cfg),
            "stages": {str(s): _stage_origins(job_dir, d) for s, d in seed_run_dirs(point_cfg).items()},
            "metrics": summary["rows"],
        })  # fmt: skip
    grid = config.grid
    return {
        "job": config.run.name,
        "mode": grid.mode,
        "axes": [{"key": a.key, "values": list(a.values)} for a in grid.axes],
        "dimensions": [[a.key for a in dim] for dim in grid.dimensions()],
        "metrics": metric_names,
        "ood_datasets": datasets,
        "rows": rows,
        "points": entries,
        "stage_runs": stage_runs(entries),
    }


def stage_runs(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per stage: in how many run folders it was computed ("ran") and linked in ("reused")."""
    counts = {stage: {"ran": 0, "reused": 0} for stage in STAGE_NAMES}
    for entry in entries:
        for origins in entry["stages"].values():
            for stage, origin in origins.items():
                counts[stage]["ran" if origin == "ran" else "reused"] += 1
    return counts


def _cell(stat: Mapping[str, Any] | None, seeds: int) -> str:
    if stat is None:
        return "–"
    return f"{100 * stat['mean']:.2f}" + (f" ± {100 * stat['std']:.2f}" if seeds > 1 else "")


def metric_table(summary: Mapping[str, Any], metric: str) -> tuple[list[str], list[list[str]]]:
    """One metric's table: a column per swept key, then one per score row × dataset (the OOD
    datasets, then their average where there are several); a row per point. Values in %, mean ± std
    with several seeds."""
    datasets = summary["ood_datasets"]
    scopes = [*datasets, "average"] if len(datasets) > 1 else datasets
    keys = [a["key"] for a in summary["axes"]]
    header = [*keys, *(f"{label} · {d}" for label in summary["rows"].values() for d in scopes)]
    body = []
    for entry in summary["points"]:
        n = len(entry["seeds"])
        cells = [_value_text(entry["values"][k]) for k in keys]
        for row in summary["rows"]:
            got = entry["metrics"].get(row, {})
            cells += [_cell(got.get(d, {}).get(metric), n) for d in scopes]
        body.append(cells)
    return header, body


def _value_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in body),
    ]


def _stage_table(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows: stages; columns: points; a cell per seed: "ran", or the folder it was reused from."""
    header = ["stage", *(e["name"] for e in summary["points"])]
    body = []
    for stage in STAGE_NAMES:
        cells = [stage]
        for entry in summary["points"]:
            origins = [o.get(stage, "–") for o in entry["stages"].values()]
            cells.append(" / ".join(o if o in ("ran", "–") else f"← {o}" for o in origins))
        body.append(cells)
    return header, body


def grid_markdown(summary: Mapping[str, Any], plots: Sequence[str]) -> str:
    seeds = sorted({s for e in summary["points"] for s in e["seeds"]})
    spread = f", mean ± std over seeds {seeds}" if len(seeds) > 1 else ""
    lines = [
        f"# Grid `{summary['job']}`: {len(summary['points'])} points",
        "",
        f"Swept ({summary['mode']}): "
        + "; ".join(f"`{a['key']}` = {_value_text(a['values'])}" for a in summary["axes"])
        + f". Values in %{spread}; each point's own report is linked below.",
    ]
    for metric in TABLE_METRICS:
        info = METRIC_INFO[metric]
        arrow = "↑" if info.higher_is_better else "↓"
        lines += ["", f"## {info.label} {arrow}", "", *_md_table(*metric_table(summary, metric))]
    counts = summary["stage_runs"]
    ran = ", ".join(f"{s} {c['ran']}×" for s, c in counts.items() if c["ran"] or c["reused"])
    lines += [
        "",
        "## Stages: computed once per distinct input",
        "",
        f"Computed: {ran}; the rest linked in (← the folder that computed it). One entry per seed:",
        "",
        *_md_table(*_stage_table(summary)),
        "",
        "## Plots",
        "",
        *(f"![{name}]({name})" for name in plots),
        "",
        "## Reports of the points",
        "",
    ]
    for entry in summary["points"]:
        links = ", ".join(
            f"[{_link_text(r, len(entry['reports']) == 1)}]({r['path']})" for r in entry["reports"]
        )
        lines.append(f"- `{entry['name']}` ({', '.join(entry['sets'])}): {links}")
    return "\n".join(lines) + "\n"


def _link_text(report: Mapping[str, Any], alone: bool) -> str:
    if alone:
        return "report"
    return "mean ± std" if report["seed"] is None else f"seed {report['seed']}"


def _html_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def grid_html(summary: Mapping[str, Any], plots: Sequence[str]) -> str:
    """grid.md's content as one self-contained page (the plots as linked images)."""
    parts = [f"<h1>Grid {html.escape(summary['job'])}: {len(summary['points'])} points</h1>"]
    for metric in TABLE_METRICS:
        parts += [
            f"<h2>{html.escape(METRIC_INFO[metric].label)} (%)</h2>",
            _html_table(*metric_table(summary, metric)),
        ]
    parts += ["<h2>Stages</h2>", _html_table(*_stage_table(summary)), "<h2>Plots</h2>"]
    parts += [f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}"></p>' for p in plots]
    parts.append("<h2>Reports of the points</h2><ul>")
    for entry in summary["points"]:
        links = ", ".join(
            f'<a href="{html.escape(r["path"])}">{_link_text(r, len(entry["reports"]) == 1)}</a>'
            for r in entry["reports"]
        )
        parts.append(f"<li><code>{html.escape(entry['name'])}</code>: {links}</li>")
    style = "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 5px}"
    body = "\n".join([*parts, "</ul>"])
    head = f'<meta charset="utf-8"><title>{html.escape(summary["job"])}</title><style>{style}</style>'
    return f"<!doctype html>\n<html><head>{head}</head><body>\n{body}\n</body></html>\n"


def write_grid_summary(config: JobConfig, points: Sequence[tuple[GridPoint, JobConfig]]) -> list[str]:
    """Write the summary files in the job's folder; returns their names relative to it."""
    summary = grid_summary(config, points)
    plots = write_plots(summary, config, write_if_changed)
    files = {
        "grid.json": json.dumps(summary, indent=2, sort_keys=False) + "\n",
        "grid.md": grid_markdown(summary, plots),
        "grid.html": grid_html(summary, plots),
    }
    for name, text in files.items():
        write_if_changed(config.run_dir / name, text.encode())
    return [*files, *plots]
