"""The job configuration: one typed, frozen dataclass per `[section]` (sections.py) and the whole job
(job.py), its `[grid]` of swept keys (grid.py), how a TOML job file plus `--set` overrides becomes a
validated JobConfig (load.py), and the checks across sections and within a judge (checks.py)."""

from negrefine_ray.config.checks import check_references
from negrefine_ray.config.grid import GridAxis, GridConfig, GridPoint, grid_points
from negrefine_ray.config.job import JobConfig
from negrefine_ray.config.load import (
    build_config,
    load_config,
    parse_override,
    point_config,
    section_names,
)
from negrefine_ray.config.sections import (
    MINING_METHODS,
    SCORE_METHODS,
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
    named_paths,
)

__all__ = [
    "MINING_METHODS",
    "SCORE_METHODS",
    "AdaNegConfig",
    "CorpusConfig",
    "DatasetConfig",
    "FilterConfig",
    "GLMCMConfig",
    "GridAxis",
    "GridConfig",
    "GridPoint",
    "ImagesConfig",
    "InterNegConfig",
    "JobConfig",
    "JudgeConfig",
    "LabelsConfig",
    "MiningConfig",
    "ModelConfig",
    "RayConfig",
    "ReportConfig",
    "RunConfig",
    "ScoreConfig",
    "TextConfig",
    "build_config",
    "check_references",
    "grid_points",
    "load_config",
    "named_paths",
    "parse_override",
    "point_config",
    "section_names",
]
