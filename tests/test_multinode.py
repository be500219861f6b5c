"""The smoke job on a real three-node Ray cluster on this machine (cluster/local_cluster.sh: a head that
runs no tasks and two worker nodes, each its own `ray start`, temp dir, ports and custom resources,
token auth on), submitted with `ray job submit`: the embedding actors run on both workers, and the
results equal a local run's. Stops exactly the nodes it started (by their temp dirs)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from negrefine_ray.artifacts import read_json, read_parquet

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _sets(out: Path, images: Path, run: str) -> list[str]:
    pairs = {
        "run.output_dir": out / run,
        "run.cache_dir": out / f"cache-{run}",  # separate caches: both runs embed everything
        "corpus.max_words_per_lexname": 40,
        "datasets.demo-id.root": images / "id",
        "datasets.demo-ood.root": images / "ood",
        "datasets.demo-prototype.root": images / "prototype",
        "images.num_actors": 2,  # two CPU actors per pool: the SPREAD strategy puts one on each worker
        "text.num_actors": 2,
        "text.local_below": 0,  # every text through the actor pool
    }
    return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]


def _workers(cluster: Path) -> set[str]:
    check = subprocess.run(
        ["bash", "cluster/local_cluster.sh", "check", str(cluster)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return {line.split()[0] for line in check.stdout.splitlines() if "node_" in line}


def test_smoke_job_on_a_three_node_cluster_spreads_and_equals_a_local_run(tmp_path: Path) -> None:
    cluster = Path(tempfile.mkdtemp(prefix="nrc.", dir="/tmp"))  # short: socket paths < 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_BIN": str(VENV / "ray"), "PYTHON_BIN": sys.executable}
    env.pop("RAY_ADDRESS", None)
    images = tmp_path / "images"
    cli = [sys.executable, "-m", "negrefine_ray"]
    subprocess.run([*cli, "demo-images", str(images)], check=True, capture_output=True, timeout=300)
    try:
        subprocess.run(
            ["bash", "cluster/local_cluster.sh", "start", str(cluster), "2", "2"],
            cwd=REPO, env=env, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        workers = _workers(cluster)
        assert len(workers) == 2
        dashboard = dict(line.split("=", 1) for line in (cluster / "cluster.env").read_text().splitlines())[
            "DASHBOARD"
        ]
        submit = [str(VENV / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".",
                  "--entrypoint-num-cpus", "0", "--", *cli, "run", "jobs/smoke.toml",
                  *_sets(tmp_path, images, "cluster")]  # fmt: skip
        job = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "report: " in job.stdout
        again = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and again.stdout.count("up to date, skipped") == 7  # resumes, no work
    finally:
        subprocess.run(
            ["bash", "cluster/local_cluster.sh", "stop", str(cluster)], cwd=REPO, env=env, timeout=300
        )
    remote = tmp_path / "cluster" / "smoke"
    for stage in ("embed-images", "embed-text"):
        nodes = read_json(remote / stage / "manifest.json")["stats"]["nodes"]
        assert set(nodes) == workers, (stage, nodes, workers)  # both workers, never the head

    local = subprocess.run(
        [*cli, "run", "jobs/smoke.toml", *_sets(tmp_path, images, "local")],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )  # fmt: skip
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    here = tmp_path / "local" / "smoke"
    # Everything the workers computed is byte-identical to the local run's...
    for artifact in (
        "embed-images/images.parquet",
        "embed-text/candidates.parquet",
        "embed-text/id_labels.parquet",
    ):
        assert read_parquet(remote / artifact).equals(read_parquet(here / artifact)), artifact
    assert (
        read_json(remote / "report" / "metrics.json")["rows"]
        == read_json(here / "report" / "metrics.json")["rows"]
    )
    # ...and the driver's own float64 arithmetic (mining statistics, scores) within BLAS rounding: a job
    # driver and a terminal process run numpy with different thread counts.
    a, b = read_parquet(remote / "score" / "scores.parquet"), read_parquet(here / "score" / "scores.parquet")
    assert a.column_names == b.column_names
    for name in a.column_names[5:]:
        x, y = (t.column(name).to_numpy(zero_copy_only=False) for t in (a, b))
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-7, err_msg=name)
    negatives = ("method", "rank", "label", "pos")
    assert (
        read_parquet(remote / "mine" / "negatives.parquet")
        .select(negatives)
        .equals(read_parquet(here / "mine" / "negatives.parquet").select(negatives))
    )
