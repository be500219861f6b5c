"""Which judges a job asks: the names in filter.judges, resolved to their [[judges]] entries."""

from __future__ import annotations

from negrefine_ray.config import JobConfig, JudgeConfig
from negrefine_ray.errors import unknown_name


def judge_configs(config: JobConfig) -> list[JudgeConfig]:
    """The judges named in filter.judges; "wordnet" is built in when no [[judges]] entry has it."""
    by_name = {j.name: j for j in config.judges}
    by_name.setdefault("wordnet", JudgeConfig(name="wordnet", backend="wordnet"))
    missing = [n for n in config.filter.judges if n not in by_name]
    if missing:
        raise unknown_name("judge (filter.judges)", missing[0], by_name)
    return [by_name[n] for n in config.filter.judges]
