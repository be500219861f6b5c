"""Stages shared between the run folders of one job (its seeds, its grid's points): a stage whose
trusted output another folder holds under the same hash is linked in from there, not computed again,
and its manifest says where it was computed (`reused_from`). Runs that go at once, in threads, share
one lock per stage hash, so the first computes the stage and the others, waiting on it, link it in.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from negrefine_ray.runfolder.artifacts import MANIFEST
from negrefine_ray.runfolder.atomic import read_json, write_json


class HashLocks:
    """One lock per stage hash, made on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


@dataclass(frozen=True)
class Donors:
    """The run folders a run may link stages in from, and the locks of runs going at once (None:
    one run at a time)."""

    folders: tuple[Path, ...] = ()
    locks: HashLocks | None = field(default=None, compare=False)

    def plus(self, folders: Sequence[Path]) -> Donors:
        return replace(self, folders=(*dict.fromkeys([*folders, *self.folders]),))

    def without(self, run_dir: Path) -> Donors:
        """The donors of the run in `run_dir`: every folder but its own."""
        own = run_dir.resolve()
        return replace(self, folders=tuple(d for d in self.folders if d.resolve() != own))

    def hold(self, stage_hash: str) -> AbstractContextManager[Any]:
        """While a run computes (or looks for) the stage of this hash, others of the job wait."""
        return self.locks.hold(stage_hash) if self.locks is not None else nullcontext()


def link_in(source: Path, staging: Path, final: Path) -> str:
    """Fill `staging` with `source` (a trusted stage folder of another run) as the stage would have:
    its files hard-linked (copied where linking fails, e.g. across file systems), its manifest marked
    with the folder that computed it (`reused_from`, relative to `final`, the stage folder `staging`
    becomes). Returns the stage's summary line, saying where it came from."""
    manifest = read_json(source / MANIFEST)
    staging.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        target = staging / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != MANIFEST or path.parent != source:
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    origin = source / manifest["reused_from"] if "reused_from" in manifest else source
    manifest["reused_from"] = os.path.relpath(os.path.normpath(origin), final)
    write_json(staging / MANIFEST, manifest)
    return f"reused from {manifest['reused_from']}: {manifest['summary']}"
