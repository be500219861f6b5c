"""Shared fixtures: one local Ray per test session (started only by tests that ask for it), the smoke
job run once per session (reused by every test that reads a finished smoke run), one multi-node
cluster per session for the `cluster` tests that do not kill nodes, offline hubs, no usage reporting.

The tiers (pyproject.toml): `pytest` runs everything but `slow` and `cluster`; `pytest -m "slow or
cluster"` runs the rest. A session-scoped fixture is built once per pytest run, so each tier that
uses it builds it once."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from s3_server import ENV as S3_ENV

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
SMOKE_JOB = REPO / "jobs" / "smoke.toml"
VENV = Path(sys.executable).parent


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A 2-CPU local Ray shared by the whole session (starting one costs ~10 s on 2 cores)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a `ray start` cluster that happens to run on this machine
            num_cpus=2,
            num_gpus=0,
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
        )
    yield
    ray.shutdown()


def run_cli(*args: str) -> tuple[int, str]:
    """`negrefine-ray ARGS` in this process (typer's runner): exit code and output."""
    from typer.testing import CliRunner

    from negrefine_ray.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@dataclass(frozen=True)
class SmokeRun:
    """jobs/smoke.toml, run once through the CLI on the session's local Ray, on the demo images plus
    two more unreadable OOD files (text as .jpg, an empty .png: three failure kinds in one run).

    Everything lives under `root`: images/ (never changed) and work/ (runs/ and cache/). Tests that
    read the run folder may run stages again with the same settings (`run`), which must leave it
    as it was; a test that needs the same paths from scratch moves work/ aside and back
    (test_reliability's byte-identical rerun)."""

    root: Path
    output: str  # the first run's CLI output
    warnings: tuple[tuple[str, str, str], ...] = ()  # the first run's (category, file, message)
    logs: tuple[str, ...] = ()  # the first run's log records of WARNING and above, as messages

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def cache(self) -> Path:
        return self.work / "cache"

    @property
    def run_dir(self) -> Path:
        return self.work / "runs" / "smoke"

    def sets(self, **extra: object) -> list[str]:
        """The run's --set arguments, with `extra` ("a.b": value) added."""
        pairs: dict[str, object] = {
            "run.output_dir": self.work / "runs",
            "run.cache_dir": self.cache,
            "corpus.max_words_per_lexname": 40,
            "images.max_failed_fraction": 0.2,  # 3 of 27 OOD files are unreadable on purpose
            # the texts in this process: 1 s instead of 20 s of actor pools starting, the same numbers
            # (test_text_embed checks the pool against this path; the cluster tests use the pool)
            "text.local_below": 100_000,
            "datasets.demo-id.root": self.images / "id",
            "datasets.demo-ood.root": self.images / "ood",
            "datasets.demo-prototype.root": self.images / "prototype",
            **extra,
        }
        return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]

    def run(self, *args: str) -> tuple[int, str]:
        """`negrefine-ray run jobs/smoke.toml` with this run's settings (and `args` after them)."""
        return run_cli("run", str(SMOKE_JOB), *self.sets(), *args)


def make_smoke_images(images: Path) -> Path:
    """The demo images of `negrefine-ray demo-images`, plus two unreadable OOD files."""
    from negrefine_ray.data.demo_data import make_demo_images

    make_demo_images(images)
    (images / "ood" / "notes.jpg").write_text("not an image")  # Pillow's error names an address
    (images / "ood" / "empty.png").write_bytes(b"")
    return images


@pytest.fixture(scope="session")
def smoke_run(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """The smoke job, run once per session (~40 s on 2 cores)."""
    root = tmp_path_factory.mktemp("smoke-run")
    make_smoke_images(root / "images")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, output = SmokeRun(root, "").run()
    finally:
        logging.getLogger().removeHandler(handler)
    assert code == 0, output
    seen = tuple((w.category.__name__, w.filename, str(w.message)) for w in caught)
    return SmokeRun(root, output, seen, tuple(r.getMessage() for r in records))


@dataclass(frozen=True)
class LocalCluster:
    """A real multi-node Ray cluster on this machine (cluster/local_cluster.sh: a head with no CPUs
    and two 2-CPU workers, each with `node_<i>` and one `accelerator`, token auth on)."""

    dir: Path
    env: dict[str, str]
    gcs: str
    dashboard: str

    def sh(self, *args: str) -> str:
        return subprocess.run(
            ["bash", "cluster/local_cluster.sh", args[0], str(self.dir), *args[1:]],
            cwd=REPO, env=self.env, check=True, capture_output=True, text=True, timeout=300,
        ).stdout  # fmt: skip

    def workers(self) -> set[str]:
        """The node ids of the live workers."""
        return {line.split()[0] for line in self.sh("check").splitlines() if "node_" in line}


@contextmanager
def local_cluster(workers: int = 2, cpus: int = 2, prefix: str = "nrc.") -> Iterator[LocalCluster]:
    """Start a local cluster; stop exactly its nodes (by their temp dirs) on the way out."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: socket paths < 108 bytes
    # the S3 test server's dummy credentials too: nodes keep the environment they start with, and a
    # job on the shared cluster may use the store (test_object_store). The nodes share this machine's
    # cores, so every process on them runs one intra-op thread (CPU actors would take their node's
    # cores by default: pools.fit_plan).
    env = {**os.environ, **S3_ENV, "RAY_AUTH_MODE": "token", "RAY_BIN": str(VENV / "ray"),
           "PYTHON_BIN": sys.executable, "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run(
            ["bash", "cluster/local_cluster.sh", "start", str(folder), str(workers), str(cpus)],
            cwd=REPO, env=env, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        settings = dict(line.split("=", 1) for line in (folder / "cluster.env").read_text().splitlines())
        yield LocalCluster(folder, env, settings["GCS"], settings["DASHBOARD"])
    finally:
        stop = ["bash", "cluster/local_cluster.sh", "stop", str(folder)]
        if subprocess.run(stop, cwd=REPO, env=env, timeout=300).returncode == 0:
            shutil.rmtree(folder, ignore_errors=True)  # the nodes' temp dirs; kept if a node was left


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[LocalCluster]:
    """One cluster for the session's multi-node, concurrent-judge and object-store tests (none of them
    kills a node; test_faults starts its own). Tests leave it as they found it: their jobs end."""
    with local_cluster(prefix="nrs.") as cluster:
        yield cluster
