"""Multi-seed jobs (NegRefine reports the mean over 10 seeds): one run folder per seed under the
job's folder (`<run>/seed-<k>/`), sharing every cache, so only what depends on the seed is computed
again (CSP's suffix draws and what follows from them, LLM sampling in generate mode, the grouping
permutation when score.permutation_seed = "run"); then the mean and standard deviation over seeds
of every metric, as `<run>/metrics-seeds.json` and `<run>/report-seeds.md`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from negrefine_ray.config import JobConfig
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.atomic import read_json, write_if_changed


def job_seeds(config: JobConfig) -> list[int]:
    """The distinct seeds of run.seeds in order; a single-seed job has none to spread over."""
    return list(dict.fromkeys(config.run.seeds))


def seed_config(config: JobConfig, seed: int) -> JobConfig:
    """The job as run for one seed, in `<run>/seed-<seed>/`."""
    run = dataclasses.replace(
        config.run, seed=seed, seeds=(), output_dir=config.run_location, name=f"seed-{seed}"
    )
    return dataclasses.replace(config, run=run)


def seed_run_dirs(config: JobConfig) -> dict[int, Path]:
    """Each seed's run folder: `<run>/seed-<k>/` with several seeds, else the job's own folder."""
    seeds = job_seeds(config)
    if len(seeds) <= 1:
        return {seeds[0] if seeds else config.run.seed: config.run_dir}
    return {seed: seed_config(config, seed).run_dir for seed in seeds}


def read_seed_metrics(config: JobConfig) -> dict[int, Any]:
    """Each seed's parsed report/metrics.json (seed -> metrics), or an error naming the missing one."""
    metrics = {}
    for seed, run_dir in seed_run_dirs(config).items():
        path = run_dir / "report" / "metrics.json"
        if not path.is_file():
            raise StageError(f"{path} is missing: seed {seed} has not reached the report stage yet.")
        metrics[seed] = read_json(path)
    return metrics


def aggregate(metrics: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and population standard deviation over seeds of every row, dataset and metric in the
    seeds' report/metrics.json files (`metrics`: seed -> parsed metrics.json)."""
    seeds = sorted(metrics)
    first = metrics[seeds[0]]
    rows: dict[str, Any] = {}
    for key, row in first["rows"].items():
        scopes = {**{d: ("datasets", d) for d in row["datasets"]}, "average": ("average", None)}
        out: dict[str, Any] = {"label": row["label"]}
        for scope, (field, name) in scopes.items():
            values: dict[str, list[float]] = {}
            for s in seeds:
                other = metrics[s]["rows"].get(key)
                if other is None:
                    raise StageError(f"score row '{key}' is missing from seed {s}'s report; rerun that seed.")
                entry = other[field][name] if name is not None else other[field]
                for metric, value in entry.items():
                    values.setdefault(metric, []).append(value)
            out[scope] = {
                m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v}
                for m, v in values.items()
            }
        rows[key] = out
    failed = first.get("failed_ood_datasets", {})
    return {
        "seeds": seeds,
        "ood_datasets": first["ood_datasets"],
        "failed_ood_datasets": failed,
        "rows": rows,
    }


def _pm(stat: Mapping[str, float]) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def seeds_markdown(summary: Mapping[str, Any]) -> str:
    """The papers' table: AUROC / FPR95 in %, mean ± std over seeds, per OOD dataset and average."""
    datasets = [*summary["ood_datasets"], "average"]
    lines = [
        f"# Mean ± std over seeds {summary['seeds']}",
        "",
        "AUROC ↑ / FPR95 ↓ in % (FPR95: ID positive, methods.md 6.1).",
        "",
        "| Method | " + " | ".join(d if d != "average" else "Average" for d in datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for row in summary["rows"].values():
        cells = [f"{_pm(row[d]['auroc'])} / {_pm(row[d]['fpr95'])}" for d in datasets]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_seed_summary(config: JobConfig) -> Path:
    """Aggregate the seeds' reports into `<run>/metrics-seeds.json` and `<run>/report-seeds.md`."""
    summary = aggregate(read_seed_metrics(config))
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"  # as write_json writes it
    write_if_changed(config.run_dir / "metrics-seeds.json", text.encode())
    report = config.run_dir / "report-seeds.md"
    write_if_changed(report, seeds_markdown(summary).encode())  # a rerun leaves both untouched
    return report
