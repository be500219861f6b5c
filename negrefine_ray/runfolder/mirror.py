"""A run folder on an object store, worked on through the driver's local copy.

Stages write their artifacts on the driver (workers send rows back through Ray), so the driver keeps
a working copy of the run folder (`JobConfig.run_dir`, under `run.local_dir`) and the object store
holds the run (`JobConfig.run_location`). `pull` brings every committed stage down before the first
stage runs, and checks the store's copy of the stages the working copy already has (their objects'
sizes and sha256: damage in the store is repaired from the working copy, or the stage runs again);
`push_stage` sends a finished stage up, its manifest last. A driver that dies loses only
its working copy: the next driver, on any machine, pulls what was committed and goes on from there.
The image, text and answer caches do not go through this copy: they read and write the store
directly (storage.ObjectPath), entry by entry.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from negrefine_ray.runfolder.artifacts import MANIFEST
from negrefine_ray.runfolder.atomic import file_sha256, read_json
from negrefine_ray.runfolder.storage import ObjectPath, RunLease

log = logging.getLogger(__name__)

_LOCAL = pafs.LocalFileSystem()


class RemoteRun:
    """The object-store run folder `remote` and its local working copy `local`."""

    def __init__(self, remote: ObjectPath, local: Path) -> None:
        self.remote, self.local = remote, local
        self.repaired: list[str] = []  # stages `pull` found damaged on the store (and repaired or reset)
        self.lease: RunLease | None = None  # while set, checked before every commit (run_folder_lock)

    def _download(self, src: ObjectPath, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(src.path, str(dest), source_filesystem=src.fs, destination_filesystem=_LOCAL)

    def _upload(self, src: Path, dest: ObjectPath) -> None:
        # one object per file: a single PUT, or a multipart upload that becomes visible on completion
        pafs.copy_files(str(src), dest.path, source_filesystem=_LOCAL, destination_filesystem=dest.fs)

    def pull(self) -> list[str]:
        """Bring down every stage the store holds a manifest of, unless the working copy already has
        that manifest; returns the stages brought down. Artifacts are checked against the manifest
        (size, sha256) later, as every stage folder is (runfolder.is_trusted)."""
        self.local.mkdir(parents=True, exist_ok=True)
        pulled = []
        for folder in self.remote.iterdir():
            manifest = folder / MANIFEST
            if not manifest.is_file():
                continue  # not a stage, or a stage whose upload did not finish: it reruns
            data = manifest.read_bytes()
            mine = self.local / folder.name / MANIFEST
            if mine.is_file() and mine.read_bytes() == data:
                self._check_committed(folder.name, data)
                continue
            staging = self.local / ".staging" / f"pull-{folder.name}-{uuid.uuid4().hex[:8]}"
            try:
                artifacts = dict(read_json_bytes(data).get("artifacts", {}))  # type: ignore[call-overload]
            except (ValueError, TypeError):
                continue
            for name in artifacts:
                if (folder / name).is_file():
                    self._download(folder / name, staging / name)
            staging.mkdir(parents=True, exist_ok=True)
            (staging / MANIFEST).write_bytes(data)
            target = self.local / folder.name
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            pulled.append(folder.name)
        if pulled:
            log.info("Pulled %d committed stage(s) from %s: %s", len(pulled), self.remote, ", ".join(pulled))
        return pulled

    def _check_committed(self, name: str, data: bytes) -> None:
        """The store's copy of stage `name`, whose manifest the working copy has too, still holds every
        artifact with the manifest's size and sha256 (the store's bytes are read and hashed). If not,
        it is repaired from the working copy when that is intact, or else its manifest is removed on
        both sides, so the stage runs again; a warning names what was damaged."""
        try:
            artifacts = dict(read_json_bytes(data).get("artifacts", {}))  # type: ignore[call-overload]
        except (ValueError, TypeError):
            return
        damaged = [a for a, info in artifacts.items() if not _same_object(self.remote / name / a, info)]
        if not damaged:
            return
        local_ok = all(
            (self.local / name / a).is_file() and file_sha256(self.local / name / a) == info["sha256"]
            for a, info in artifacts.items()
        )
        if local_ok:
            log.warning("Stage %s on %s was damaged (%s); committed again from the working copy %s.",
                        name, self.remote, ", ".join(damaged), self.local / name)  # fmt: skip
            self.push_stage(name)
        else:
            log.warning("Stage %s on %s was damaged (%s) and so is the working copy: it runs again.",
                        name, self.remote, ", ".join(damaged))  # fmt: skip
            (self.remote / name / MANIFEST).unlink(missing_ok=True)
            (self.local / name / MANIFEST).unlink(missing_ok=True)
        self.repaired.append(name)

    def push_stage(self, name: str) -> None:
        """Commit the finished local stage folder `name` to the store: the old manifest goes first
        (so no manifest ever vouches for half-replaced files), then every other old object, then the
        artifacts, then the new manifest."""
        if self.lease is not None:
            self.lease.check()
        src, dest = self.local / name, self.remote / name
        manifest = read_json(src / MANIFEST)
        (dest / MANIFEST).unlink(missing_ok=True)
        dest.rmtree()
        for artifact, info in manifest["artifacts"].items():
            path = src / artifact
            if file_sha256(path) != info["sha256"]:  # the working copy changed under us: never upload it
                raise OSError(f"{path} no longer matches its manifest; rerun the stage.")
            self._upload(path, dest / artifact)
        self._upload(src / MANIFEST, dest / MANIFEST)

    def has(self, name: str) -> bool:
        """True when the store holds stage `name` committed with the working copy's manifest."""
        remote, local = self.remote / name / MANIFEST, self.local / name / MANIFEST
        return remote.is_file() and remote.read_bytes() == local.read_bytes()

    def push_file(self, name: str) -> None:
        """Copy a top-level file of the working copy (config.json, the seed summaries) to the store."""
        if self.lease is not None:
            self.lease.check()
        self._upload(self.local / name, self.remote / name)


def _same_object(path: ObjectPath, info: dict[str, object]) -> bool:
    """The object exists with the manifest entry's size and sha256 (streamed, never held whole)."""
    try:
        if path.stat().st_size != info["bytes"]:
            return False
        digest = hashlib.sha256()
        with path.fs.open_input_stream(path.path) as stream:
            while block := stream.read(1 << 22):
                digest.update(block)
    except OSError:
        return False
    return digest.hexdigest() == info["sha256"]


def read_json_bytes(data: bytes) -> dict[str, object]:
    import json

    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
