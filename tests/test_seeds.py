"""Multi-seed jobs: the per-seed run folders and the mean ± std over seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from negrefine_ray.config import JobConfig, build_config
from negrefine_ray.errors import StageError
from negrefine_ray.seeds import aggregate, job_seeds, seed_config, seeds_markdown


def _metrics(auroc: float, fpr: float) -> dict:
    values = {"auroc": auroc, "fpr95": fpr}
    return {
        "ood_datasets": ["inat"],
        "rows": {"neglabel": {"label": "NegLabel", "datasets": {"inat": values}, "average": values}},
    }


def test_mean_and_population_std_over_seeds() -> None:
    summary = aggregate({0: _metrics(0.90, 0.30), 1: _metrics(0.94, 0.10), 2: _metrics(0.92, 0.20)})
    auroc = summary["rows"]["neglabel"]["inat"]["auroc"]
    assert auroc["mean"] == pytest.approx(0.92) and auroc["per_seed"] == [0.90, 0.94, 0.92]
    # population std of (0.90, 0.94, 0.92): sqrt((0.0004 + 0.0004 + 0) / 3)
    assert auroc["std"] == pytest.approx((0.0008 / 3) ** 0.5)
    table = seeds_markdown(summary)
    assert "| NegLabel | 92.00 ± 1.63 / 20.00 ± 8.16 | 92.00 ± 1.63 / 20.00 ± 8.16 |" in table


def test_a_row_missing_from_one_seed_is_an_error() -> None:
    broken = _metrics(0.9, 0.1)
    broken["rows"] = {}
    with pytest.raises(StageError, match="missing from seed 1"):
        aggregate({0: _metrics(0.9, 0.1), 1: broken})


def test_each_seed_runs_in_its_own_folder(tmp_path: Path) -> None:
    config = build_config({"run": {"output_dir": str(tmp_path), "name": "job", "seeds": [3, 1, 3]}})
    assert job_seeds(config) == [3, 1]
    one = seed_config(config, 1)
    assert one.run_dir == tmp_path / "job" / "seed-1"
    assert (one.run.seed, one.run.seeds, one.cache_dir) == (1, (), config.cache_dir)


def test_a_refused_second_run_leaves_the_jobs_config_alone(tmp_path: Path) -> None:
    """Issue 21, item 15: a second driver of a multi-seed job, refused, wrote its config.json (alpha
    3.0 over the running alpha-2.0 job), and `negrefine-ray run RUNDIR` then used the wrong settings."""
    from negrefine_ray.errors import NegRefineError
    from negrefine_ray.pipeline import run_job
    from negrefine_ray.runfolder.atomic import read_json, write_json
    from negrefine_ray.runfolder.folder import run_folder_lock

    def job(alpha: float) -> JobConfig:
        return build_config({
            "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "name": "job",
                    "seeds": [0, 1]},
            "model": {"arch": "nr-tiny-vit", "pretrained": "none", "device": "cpu"},
            "score": {"alpha": alpha, "methods": ["mcm"]}, "mining": {"methods": ["neglabel"]},
        })  # fmt: skip

    running = job(2.0)
    running.run_dir.mkdir(parents=True)
    write_json(running.run_dir / "config.json", running.to_dict())
    with run_folder_lock(running.run_dir), pytest.raises(NegRefineError, match="is in use by another"):
        run_job(job(3.0), until="corpus")  # the running job holds its folder
    assert read_json(running.run_dir / "config.json")["score"]["alpha"] == 2.0
