"""The smoke job on a real three-node Ray cluster on this machine (cluster/local_cluster.sh: a head that
runs no tasks and two worker nodes, each its own `ray start`, temp dir, ports and custom resources,
token auth on; the session's `shared_cluster`), submitted with `ray job submit`: the embedding actors
run on both workers, so do the score tasks, and the results equal a local run's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LocalCluster

from negrefine_ray.runfolder.atomic import read_json, read_parquet

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent
pytestmark = [pytest.mark.cluster, pytest.mark.ray]


def _sets(out: Path, images: Path, run: str) -> list[str]:
    pairs = {
        "run.output_dir": out / run,
        "run.cache_dir": out / f"cache-{run}",  # separate caches: both runs embed everything
        "corpus.max_words_per_lexname": 40,
        "datasets.demo-id.root": images / "id",
        "datasets.demo-ood.root": images / "ood",
        "datasets.demo-prototype.root": images / "prototype",
        "images.num_actors": 2,  # two CPU actors per pool: the SPREAD strategy puts one on each worker
        "text.num_actors": 2,  # the large text lists (ID labels x templates) through the pool, spread
        # the scores as Ray tasks over blocks of 8 images (score.workers "auto" on a cluster)
        "score.chunk_size": 8,
        "score.block_rows": 8,
    }
    return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]


def test_smoke_job_on_a_three_node_cluster_spreads_and_equals_a_local_run(
    shared_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = shared_cluster
    workers = cluster.workers()
    assert len(workers) == 2
    images = tmp_path / "images"
    cli = [sys.executable, "-m", "negrefine_ray"]
    subprocess.run([*cli, "demo-images", str(images)], check=True, capture_output=True, timeout=300)
    submit = [str(VENV / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
              "--entrypoint-num-cpus", "0", "--", *cli, "run", "jobs/smoke.toml",
              *_sets(tmp_path, images, "cluster")]  # fmt: skip
    job = subprocess.run(submit, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=1800)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "report: " in job.stdout
    again = subprocess.run(submit, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("up to date, skipped") == 7  # resumes, no work
    remote = tmp_path / "cluster" / "smoke"
    for stage in ("embed-images", "embed-text"):
        nodes = read_json(remote / stage / "manifest.json")["stats"]["nodes"]
        assert set(nodes) == workers, (stage, nodes, workers)  # both workers, never the head
    scored = read_json(remote / "score" / "manifest.json")["stats"]["workers"]
    assert scored["tasks"] and set(scored["nodes"]) == workers, scored  # the scores on both workers too

    local = subprocess.run(
        [*cli, "run", "jobs/smoke.toml", *_sets(tmp_path, images, "local")],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        # one intra-op thread, as the cluster's nodes: the same float summation order, byte-identical
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "OMP_NUM_THREADS": "1"},
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
