"""The whole job: one field per `[section]` (sections.py), and where its run folder and caches live."""

from __future__ import annotations

import dataclasses
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negrefine_ray.config.grid import GridConfig
from negrefine_ray.config.sections import (
    AdaNegConfig,
    CorpusConfig,
    DatasetConfig,
    FilterConfig,
    GLMCMConfig,
    ImagesConfig,
    InterNegConfig,
    JudgeConfig,
    LabelsConfig,
    MiningConfig,
    ModelConfig,
    RayConfig,
    ReportConfig,
    RunConfig,
    ScoreConfig,
    TextConfig,
)
from negrefine_ray.runfolder.storage import Location, is_uri, local_copy_dir, location


@dataclass(frozen=True)
class JobConfig:
    """A whole job: one field per `[section]` of the job file, each section's defaults by default."""

    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    text: TextConfig = field(default_factory=TextConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    datasets: tuple[DatasetConfig, ...] = ()
    filter: FilterConfig = field(default_factory=FilterConfig)
    judges: tuple[JudgeConfig, ...] = ()
    score: ScoreConfig = field(default_factory=ScoreConfig)
    glmcm: GLMCMConfig = field(default_factory=GLMCMConfig)
    adaneg: AdaNegConfig = field(default_factory=AdaNegConfig)
    interneg: InterNegConfig = field(default_factory=InterNegConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    grid: GridConfig = field(default_factory=GridConfig)  # axes to sweep: config/grid.py

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists), the form saved in the run folder."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def run_location(self) -> str:
        """Where the run lives: the local run folder, or its object-store URI."""
        if is_uri(self.run.output_dir):
            base, sep, query = self.run.output_dir.partition("?")
            return posixpath.join(base, self.run.name) + sep + query
        return str(Path(self.run.output_dir).expanduser() / self.run.name)

    @property
    def run_dir(self) -> Path:
        """The run folder the stages read and write: the run itself, or for an object-store run the
        driver's working copy of it (run_mirror)."""
        if is_uri(self.run.output_dir):
            return local_copy_dir(Path(self.run.local_dir).expanduser(), self.run_location)
        return Path(self.run_location)

    @property
    def cache_dir(self) -> Location:
        """The caches' root: a local or shared folder, or an object-store prefix (storage.ObjectPath)."""
        return location(self.run.cache_dir)

    @property
    def local_cache_dir(self) -> Path:
        """What must be local files (WordNet's nltk copy): the cache folder, or with an object-store
        cache a folder under run.local_dir."""
        cache = self.cache_dir
        return cache if isinstance(cache, Path) else Path(self.run.local_dir).expanduser() / "cache"
