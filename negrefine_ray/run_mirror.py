"""A run folder on an object store, worked on through the driver's local copy.

Stages write their artifacts on the driver (workers send rows back through Ray), so the driver keeps
a working copy of the run folder (`JobConfig.run_dir`, under `run.local_dir`) and the object store
holds the run (`JobConfig.run_location`). `pull` brings every committed stage down before the first
stage runs; `push_stage` sends a finished stage up, its manifest last. A driver that dies loses only
its working copy: the next driver, on any machine, pulls what was committed and goes on from there.
The image, text and answer caches do not go through this copy: they read and write the store
directly (storage.ObjectPath), entry by entry.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from negrefine_ray.artifacts import file_sha256, read_json
from negrefine_ray.storage import ObjectPath

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # runfolder.MANIFEST (runfolder imports this module)
_LOCAL = pafs.LocalFileSystem()


class RemoteRun:
    """The object-store run folder `remote` and its local working copy `local`."""

    def __init__(self, remote: ObjectPath, local: Path) -> None:
        self.remote, self.local = remote, local

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

    def push_stage(self, name: str) -> None:
        """Commit the finished local stage folder `name` to the store: the old manifest goes first
        (so no manifest ever vouches for half-replaced files), then every other old object, then the
        artifacts, then the new manifest."""
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
        self._upload(self.local / name, self.remote / name)


def read_json_bytes(data: bytes) -> dict[str, object]:
    import json

    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
