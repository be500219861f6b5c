"""Job-config validation: every bad value fails before any work, naming the key, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from negrefine_ray.config import JobConfig, build_config, load_config, parse_override
from negrefine_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_setting() -> None:
    cfg = build_config({})
    assert cfg == JobConfig()
    assert cfg.model.arch == "ViT-B-16" and cfg.model.pretrained == "openai"
    assert cfg.corpus.rule == "first-lemma"


def test_every_job_file_in_jobs_loads() -> None:
    jobs = sorted((REPO / "jobs").glob("*.toml"))
    assert jobs, "jobs/ has no job files"
    for job in jobs:
        load_config(job)


@pytest.mark.parametrize(
    ("data", "overrides", "needle"),
    [
        ({"modle": {}}, [], "Unknown section [modle]. Did you mean 'model'?"),
        ({"model": {"archh": "x"}}, [], "Unknown key 'model.archh'. Did you mean 'arch'?"),
        ({"run": {"seed": "zero"}}, [], "run.seed = 'zero' is not an integer"),
        ({"run": {"seed": -1}}, [], "run.seed = -1 is below its minimum 0"),
        ({"model": {"precision": "fp8"}}, [], "model.precision = 'fp8' is not one of"),
        ({"corpus": {"lexnames": "noun.plant"}}, [], "corpus.lexnames = 'noun.plant' is not a list"),
        ({"run": {"seed": True}}, [], "run.seed = True is not an integer"),
        ({}, ["run.seed"], "is not of the form section.key=value"),
        ({}, ["rn.seed=1"], "unknown section 'rn'. Did you mean 'run'?"),
        ({}, ["run.seed=1.5"], "run.seed = 1.5 is not an integer"),
    ],
)
def test_bad_values_name_key_value_and_fix(data: dict, overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data, overrides)
    assert needle in str(info.value)


def test_overrides_parse_toml_values_and_win_over_the_file(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[run]\nseed = 3\nname = "a"\n[corpus]\nlexnames = ["noun.plant"]\n')
    cfg = load_config(job, ["run.seed=7", 'corpus.lexnames=["adj.all", "noun.shape"]', "model.arch=RN50"])
    assert cfg.run.seed == 7 and cfg.run.name == "a"
    assert cfg.corpus.lexnames == ("adj.all", "noun.shape")
    assert cfg.model.arch == "RN50"  # a bare word is read as a string


def test_parse_override_keeps_strings_with_equals_signs() -> None:
    assert parse_override("run.name=a=b") == ("run", "name", "a=b")


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = build_config({"run": {"seed": 5}, "corpus": {"lexnames": ["noun.plant"]}})
    saved = tmp_path / "config.json"
    import json

    saved.write_text(json.dumps(cfg.to_dict()))
    assert load_config(saved) == cfg


def test_config_is_frozen() -> None:
    cfg = JobConfig()
    with pytest.raises(AttributeError):
        cfg.run.seed = 3  # type: ignore[misc]


def test_missing_or_broken_job_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nseed=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_job_files_in_other_encodings_or_nested_too_deeply_are_messages(tmp_path: Path) -> None:
    """Issue 21, item 12: latin-1, UTF-16 and 5,000-deep nesting are ConfigErrors that say what to do;
    a UTF-8 byte-order mark is read as UTF-8."""
    job = tmp_path / "job.toml"
    job.write_bytes('[run]\nname = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 \(line 2.*iconv -f latin1"):
        load_config(job)
    job.write_bytes('[run]\nname = "cafe"\n'.encode("utf-16"))
    with pytest.raises(ConfigError, match=r"is UTF-16 text.*iconv -f utf-16"):
        load_config(job)
    job.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests tables or arrays too deeply"):
        load_config(job)
    job.write_bytes(b"\xef\xbb\xbf" + b'[run]\nname = "bom"\n')
    assert load_config(job).run.name == "bom"


DATASETS = [
    {"name": "imagenet", "role": "id", "root": "/data/val", "format": "imagenet-val"},
    {"name": "ninco", "role": "ood", "root": "/data/NINCO", "format": "imagefolder", "expected": 5878},
]


def test_datasets_array_of_tables_and_overrides_by_name() -> None:
    cfg = build_config({"datasets": DATASETS}, ["datasets.ninco.root=/mnt/NINCO", "datasets.ninco.limit=100"])
    assert [d.name for d in cfg.datasets] == ["imagenet", "ninco"]
    ninco = cfg.datasets[1]
    assert (ninco.root, ninco.limit, ninco.expected, ninco.role) == ("/mnt/NINCO", 100, 5878, "ood")


@pytest.mark.parametrize(
    ("datasets", "overrides", "needle"),
    [
        (
            [{"name": "x", "role": "ood", "format": "files"}],
            [],
            "[datasets.x] lacks the required key(s) root",
        ),
        ([{**DATASETS[0], "role": "in"}], [], "datasets.imagenet.role = 'in' is not one of 'id', 'ood'"),
        ([DATASETS[0], DATASETS[0]], [], "names must be unique; imagenet appear"),
        (DATASETS, ["datasets.nico.root=/x"], "names: imagenet, ninco"),
        ({"name": "x"}, [], "must be an array of tables"),
    ],
)
def test_bad_datasets(datasets: object, overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"datasets": datasets}, overrides)
    assert needle in str(info.value)
