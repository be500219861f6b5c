"""Resumable stages in one run folder: content hashes, manifests and atomic hand-over.

A stage writes into a private staging folder; when it finishes, its manifest (stage, hash of exactly
the settings and upstream outputs that determine its output, library versions, row counts, timings)
is written last and the folder is renamed into `<run>/<stage>/`. A stage folder is trusted only if its
manifest's hash equals the hash the current job asks for and every artifact it lists is present with
the recorded size and sha256; anything else is recomputed. A killed stage leaves only staging debris,
which the next run removes. Runs of one job (its seeds, its grid's points) pass each other's run
folders as donors (donors.py): a stage whose trusted output a donor holds under the same hash is
linked in from there, not computed again.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from negrefine_ray.config import JobConfig, named_paths
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.artifacts import MANIFEST
from negrefine_ray.runfolder.atomic import file_sha256, read_json, stable_hash, write_json
from negrefine_ray.runfolder.donors import Donors, link_in
from negrefine_ray.runfolder.file_ids import named_file_ids
from negrefine_ray.runfolder.mirror import RemoteRun
from negrefine_ray.runfolder.storage import ObjectPath, RunLease, is_uri
from negrefine_ray.version import __version__

STAGING = ".staging"
_VERSIONED = ("ray", "torch", "open_clip_torch", "nltk", "pyarrow", "numpy", "transformers", "vllm")


@dataclass(frozen=True)
class StageOutput:
    """What a stage reports: its artifacts (file names in its folder), statistics and one summary line."""

    artifacts: tuple[str, ...]
    summary: str
    stats: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage function may use: the config, its staging folder and its inputs.
    `upstream`: the stages whose manifests `upstream_manifests` reads (Stage.reads_manifests)."""

    config: JobConfig
    stage: str
    out_dir: Path
    run_dir: Path
    ray_address: str | None = None
    upstream: tuple[str, ...] = ()

    def input(self, stage: str, artifact: str) -> Path:
        """Path of an upstream stage's artifact (already verified by the runner)."""
        return self.run_dir / stage / artifact

    def manifest(self, stage: str) -> dict[str, Any]:
        return read_json(self.run_dir / stage / MANIFEST)  # type: ignore[no-any-return]

    def upstream_manifests(self) -> dict[str, dict[str, Any]]:
        """The manifest of each upstream stage that has run, in pipeline order."""
        return {s: self.manifest(s) for s in self.upstream if (self.run_dir / s / MANIFEST).is_file()}

    def ray(self) -> None:
        """Connect to (or start) Ray; stages that distribute work call this first."""
        from negrefine_ray.distributed.session import ensure_ray

        ensure_ray(self.config.ray, self.ray_address)


StageFn = Callable[[StageContext], StageOutput]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage. `settings` returns exactly the config values that determine its output;
    `sources`, for stages that read files outside the run folder (the image datasets), returns the
    identity of those files (paths, sizes, mtimes), so that a changed file makes the stage, and
    everything downstream of what it then writes, out of date. `fn` is None for stages that are
    planned but not built yet (they never pretend to run)."""

    name: str
    summary: str
    needs: tuple[str, ...]
    version: int
    settings: Callable[[JobConfig], Mapping[str, Any]]
    fn: StageFn | None
    planned_in: str = ""
    sources: Callable[[JobConfig], Mapping[str, Any]] | None = None
    reads_manifests: tuple[str, ...] = ()  # stages whose manifests it reads where they exist (report)


@dataclass(frozen=True)
class StageResult:
    stage: str
    status: Literal["ran", "skipped", "reused"]  # reused: linked in from a donor run folder
    summary: str
    seconds: float


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "negrefine_ray": __version__}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def stage_hash(stage: Stage, config: JobConfig, run_dir: Path) -> str:
    """The hash a trusted output of `stage` must carry in its manifest (see `stage_key`)."""
    return stable_hash(stage_key(stage, config, run_dir))


def stage_key(stage: Stage, config: JobConfig, run_dir: Path) -> dict[str, Any]:
    """Hash of the stage's code version, its settings, the content of the local files and folders its
    settings name (runfolder/file_ids.py), the identity of the files it reads outside the run folder
    (`Stage.sources`) and the content (sha256) of its upstream artifacts: a recomputed upstream stage
    that wrote the same bytes leaves this stage valid."""
    inputs = {}
    for up in stage.needs:
        manifest_path = run_dir / up / MANIFEST
        if not manifest_path.is_file():
            raise StageError(
                f"Stage '{stage.name}' needs the output of stage '{up}', which {run_dir} lacks; "
                f"run `negrefine-ray {up} {run_dir}` (or `negrefine-ray run JOB.toml`) first."
            )
        inputs[up] = {name: a["sha256"] for name, a in read_json(manifest_path)["artifacts"].items()}
    settings = stage.settings(config)
    key = {
        "stage": stage.name,
        "version": stage.version,
        "settings": settings,
        "inputs": inputs,
    }
    files = named_file_ids(settings, named_paths(config))
    if files:  # the content of the files and folders its settings name (a label file, a checkpoint...)
        key["files"] = files
    if stage.sources is not None:
        key["sources"] = stage.sources(config)
    return key


def is_trusted(stage_dir: Path, expected_hash: str) -> bool:
    """True if `stage_dir` holds a complete output for `expected_hash` whose files are intact."""
    manifest_path = stage_dir / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = read_json(manifest_path)
    except ValueError:
        return False
    if manifest.get("hash") != expected_hash:
        return False
    for name, info in manifest.get("artifacts", {}).items():
        path = stage_dir / name
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            return False
        if file_sha256(path) != info["sha256"]:
            return False
    return True


def _describe_artifact(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    if path.suffix == ".parquet":
        info["rows"] = pq.ParquetFile(path).metadata.num_rows
    return info


def _swap_in(staging: Path, final: Path) -> None:
    """Move the finished staging folder to `final`, replacing any older output."""
    if final.exists():
        retired = staging.parent / f"{final.name}-retired-{uuid.uuid4().hex[:8]}"
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired)
    else:
        os.replace(staging, final)


def run_stage(
    stage: Stage,
    config: JobConfig,
    *,
    force: bool = False,
    ray_address: str | None = None,
    remote: RemoteRun | None = None,
    donors: Donors | None = None,
) -> StageResult:
    """Run `stage` unless its trusted output already exists (or `force`), or link it in from the
    first of the `donors` (other run folders of the job) that holds it under the same hash. With
    `remote` (an object-store run), the finished stage is committed to the store, and a trusted one
    the store lacks (its driver died before the upload) is committed now."""
    if stage.fn is None:
        raise StageError(f"Stage '{stage.name}' is not implemented yet ({stage.planned_in}).")
    run_dir = config.run_dir
    key = stage_key(stage, config, run_dir)
    expected = stable_hash(key)
    final = run_dir / stage.name
    if not force and is_trusted(final, expected):
        manifest = read_json(final / MANIFEST)
        if remote is not None and not remote.has(stage.name):
            remote.push_stage(stage.name)
        return StageResult(stage.name, "skipped", manifest["summary"], 0.0)
    donors = donors or Donors()
    with donors.hold(expected):  # a run of the same job computing this stage at once: wait for it
        donor = next((d for d in donors.folders if is_trusted(d / stage.name, expected)), None)
        staging = run_dir / STAGING / f"{stage.name}-{uuid.uuid4().hex[:8]}"
        if donor is not None and not force:
            summary = link_in(donor / stage.name, staging, final)
            _swap_in(staging, final)
            if remote is not None:
                remote.push_stage(stage.name)
            return StageResult(stage.name, "reused", summary, 0.0)
        return _compute(stage, stage.fn, config, key, expected, staging, ray_address, remote)


def _compute(
    stage: Stage,
    fn: StageFn,
    config: JobConfig,
    key: Mapping[str, Any],
    expected: str,
    staging: Path,
    ray_address: str | None,
    remote: RemoteRun | None,
) -> StageResult:
    """Run the stage's function `fn` into `staging`, write its manifest (hash `expected`, of `key`)
    and swap it in."""
    run_dir, final = config.run_dir, config.run_dir / stage.name
    staging.mkdir(parents=True)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    ctx = StageContext(config, stage.name, staging, run_dir, ray_address, stage.reads_manifests)
    output = fn(ctx)
    seconds = time.perf_counter() - t0
    missing = [a for a in output.artifacts if not (staging / a).is_file()]
    if missing:
        raise StageError(f"Stage '{stage.name}' did not write its artifacts {missing} in {staging}.")
    manifest = {
        "stage": stage.name,
        "hash": expected,
        "version": stage.version,
        "settings": key["settings"],
        "sources": key.get("sources"),
        "inputs": list(stage.needs),
        "artifacts": {a: _describe_artifact(staging / a) for a in output.artifacts},
        "stats": dict(output.stats),
        "summary": output.summary,
        "versions": library_versions(),
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    write_json(staging / MANIFEST, manifest)
    _swap_in(staging, final)
    if remote is not None:
        remote.push_stage(stage.name)
    return StageResult(stage.name, "ran", output.summary, seconds)


def remote_run(config: JobConfig) -> RemoteRun | None:
    """The object-store run of `config` with its local working copy, or None for a local run."""
    if not is_uri(config.run.output_dir):
        return None
    return RemoteRun(ObjectPath.from_uri(config.run_location), config.run_dir)


@contextmanager
def run_folder_lock(
    run_dir: Path, remote: RemoteRun | None = None, lease_seconds: float = 60.0
) -> Iterator[None]:
    """Hold an exclusive lock on the run folder and clear staging debris of killed runs. With
    `remote`, also hold the object-store run's lease (storage.RunLease) and pull its committed
    stages into the working copy `run_dir`."""
    if remote is None:
        with _local_lock(run_dir):
            yield
        return
    lease = RunLease(remote.remote, ttl=lease_seconds)
    with _local_lock(run_dir, "run.local_dir"):  # the working copy lives there
        lease.acquire()
        remote.lease = lease  # every commit checks it first
        try:
            remote.pull()
            yield
        finally:
            remote.lease = None
            lease.release()


@contextmanager
def _local_lock(run_dir: Path, key: str = "run.output_dir") -> Iterator[None]:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / ".lock", "w")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise StageError(
            f"Cannot create the run folder {run_dir} ({exc.strerror or exc}); set {key} to a folder you "
            f"can write to."
        ) from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StageError(
                f"Run folder {run_dir} is in use by another negrefine-ray process; wait for it to "
                f"finish or set run.name to another folder."
            ) from exc
        shutil.rmtree(run_dir / STAGING, ignore_errors=True)
        yield
