"""The job configuration: one typed, frozen dataclass per `[section]` (sections.py) and how a TOML job
file plus `--set` overrides becomes a validated JobConfig (load.py)."""

from negrefine_ray.config.load import (
    build_config,
    check_references,
    load_config,
    parse_override,
    section_names,
)
from negrefine_ray.config.sections import (
    MINING_METHODS,
    SCORE_METHODS,
    CorpusConfig,
    DatasetConfig,
    FilterConfig,
    ImagesConfig,
    InterNegConfig,
    JobConfig,
    JudgeConfig,
    LabelsConfig,
    MiningConfig,
    ModelConfig,
    RayConfig,
    RunConfig,
    ScoreConfig,
    TextConfig,
    named_paths,
)

__all__ = [
    "MINING_METHODS",
    "SCORE_METHODS",
    "CorpusConfig",
    "DatasetConfig",
    "FilterConfig",
    "ImagesConfig",
    "InterNegConfig",
    "JobConfig",
    "JudgeConfig",
    "LabelsConfig",
    "MiningConfig",
    "ModelConfig",
    "RayConfig",
    "RunConfig",
    "ScoreConfig",
    "TextConfig",
    "build_config",
    "check_references",
    "load_config",
    "named_paths",
    "parse_override",
    "section_names",
]
