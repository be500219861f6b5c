"""The method catalogue (negrefine_ray.core.methods): every entry is consistent with the templates, the
pool rules, the config's choices and the score stage's scorers; the score stage writes exactly the
columns and report rows the catalogue declares (on a hand-built run folder, tiny random CLIP for
NegRefine's texts, no Ray); unknown names fail in load_config with a did-you-mean."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from negrefine_ray import config as config_module
from negrefine_ray.config import JobConfig, MiningConfig, ScoreConfig, build_config, load_config
from negrefine_ray.core import corpus, scores
from negrefine_ray.core.methods import (
    CANDIDATE_VIEWS,
    DEFAULT_MINING_METHODS,
    DEFAULT_SCORE_METHODS,
    ID_VIEWS,
    METHODS,
    MINING_METHODS,
    PREPROCESSING,
    SCORE_METHODS,
    embedding_name,
    get_method,
    image_preprocessing,
)
from negrefine_ray.core.templates import TEMPLATE_SETS
from negrefine_ray.errors import ConfigError, NegRefineError
from negrefine_ray.pipeline import get_stage
from negrefine_ray.runfolder.atomic import (
    column_matrix,
    embedding_column,
    read_json,
    read_parquet,
    write_json,
    write_parquet,
)
from negrefine_ray.runfolder.folder import Stage, StageContext, StageOutput, run_stage
from negrefine_ray.scoring.registry import SCORERS, scorer_of
from negrefine_ray.stages import embed_text as embed_text_stage
from negrefine_ray.stages.report import evaluate, row_label

D, K = 32, 4  # nr-tiny-vit's embedding width, ID labels
JUDGES = ["wordnet"]
NOUNS = ["pasqueflower", "white currant", "minuteman", "pocatello", "daisy chain"]
ADJS = ["gooey landscape", "rutted creature", "wildcat pattern"]


def test_catalogue_names_and_display_names() -> None:
    assert SCORE_METHODS == (
        "mcm", "lmcm", "glmcm", "neglabel", "csp", "negrefine", "dnm", "adaneg", "interneg",
    )  # fmt: skip
    assert MINING_METHODS == ("neglabel", "csp", "negrefine", "dnm", "adaneg", "interneg")
    assert {n: m.display for n, m in METHODS.items()} == {
        "mcm": "MCM", "lmcm": "L-MCM", "glmcm": "GL-MCM", "neglabel": "NegLabel", "csp": "CSP",
        "negrefine": "NegRefine", "dnm": "DNM", "adaneg": "AdaNeg", "interneg": "InterNeg",
    }  # fmt: skip
    # InterNeg needs a prototype dataset, L-MCM/GL-MCM a pass over every patch, and AdaNeg is an
    # online, order-dependent test-time method: none is in the default lists
    assert DEFAULT_SCORE_METHODS == ("mcm", "neglabel", "csp", "negrefine", "dnm")
    assert MINING_METHODS[:-2] == DEFAULT_MINING_METHODS
    assert all(name == m.name for name, m in METHODS.items())
    with pytest.raises(NegRefineError, match=r"Unknown method 'neglable'\. Did you mean 'neglabel'"):
        get_method("neglable")


@pytest.mark.parametrize("name", SCORE_METHODS)
def test_every_entry_is_consistent(name: str) -> None:
    m = METHODS[name]
    # A method mines exactly when it declares a pool, a mining rule and a candidate view.
    assert (m.pool is not None) == (m.mining is not None) == (m.candidate_view is not None) == m.mines
    assert m.id_view in ID_VIEWS
    assert m.candidate_view is None or m.candidate_view in CANDIDATE_VIEWS
    assert not m.filtered or m.mines  # NegFilter judges mined negatives
    if m.mining is not None and isinstance(m.mining.quantile, str):
        assert typing.get_type_hints(MiningConfig)[m.mining.quantile] is float
    # Its scorer exists on the score stage, and its rows are distinct and resolvable.
    assert callable(scorer_of(m))
    keys = [r.key for r in m.rows]
    assert len(set(keys)) == len(keys) and all(k.startswith(name) for k in keys)
    assert len({(r.judge, r.s_mm, r.visual, r.pool) for r in m.rows}) == len(m.rows)  # Method.row finds one
    assert all(
        m.row("j" if r.judge else None, r.s_mm, r.visual, r.pool)[0] == r.key.format(judge="j")
        for r in m.rows
    )
    assert any(r.judge and not r.pool for r in m.rows) == m.filtered  # one row per judge iff filtered
    # and rows over the pool each judge of mining.filtered_by filtered iff it mines in the mine stage
    assert any(r.pool for r in m.rows) == m.pool_filterable and all(r.judge for r in m.rows if r.pool)
    assert m.column_name("r", "d") in ("r", "r@d")


def test_views_name_registered_templates() -> None:
    for view in [*ID_VIEWS.values(), *CANDIDATE_VIEWS.values()]:
        for name in filter(None, (view.templates, view.adj_templates)):
            assert name in TEMPLATE_SETS
            assert not view.raw or len(TEMPLATE_SETS[name]) == 1  # raw: one template's features
    used = {m.id_view for m in METHODS.values()} | {"bare"}  # NegFilter's nearest ID labels
    assert used == set(ID_VIEWS)
    assert {m.candidate_view for m in METHODS.values() if m.mines} == set(CANDIDATE_VIEWS)
    phrased = tuple(
        n for n, m in METHODS.items() if m.candidate_view and CANDIDATE_VIEWS[m.candidate_view].phrases
    )
    assert embed_text_stage.CSP_FAMILY == phrased == ("csp", "negrefine")  # CSP's suffix phrases


def test_pool_rules_and_config_choices_derive_from_the_catalogue() -> None:
    assert list(corpus.POOL_RULES) == list(MINING_METHODS)
    for name, rule in corpus.POOL_RULES.items():
        pool = METHODS[name].pool
        assert pool is not None
        assert (rule.name, rule.description, rule.exclude, rule.exclude_id_names_from) == (
            name, pool.description, pool.exclude, pool.exclude_id_names_from,
        )  # fmt: skip
    assert corpus.POOL_RULES["neglabel"].exclude == ()
    assert corpus.POOL_RULES["dnm"].exclude == corpus.CSP_EXCLUDED
    assert (config_module.MINING_METHODS, config_module.SCORE_METHODS) == (MINING_METHODS, SCORE_METHODS)
    fields = {f.name: f for f in dataclasses.fields(MiningConfig)}
    assert fields["methods"].metadata["choices"] == MINING_METHODS
    assert MiningConfig().methods == DEFAULT_MINING_METHODS
    fields = {f.name: f for f in dataclasses.fields(ScoreConfig)}
    assert fields["methods"].metadata["choices"] == SCORE_METHODS
    assert ScoreConfig().methods == DEFAULT_SCORE_METHODS
    assert {m.scorer for m in METHODS.values()} == set(SCORERS)


def test_row_labels_come_from_the_catalogue() -> None:
    def label(method: str, judge: str | None = None, s_mm: bool = False) -> str:
        return row_label({"method": method, "judge": judge, "s_mm": s_mm})

    assert [label(m) for m in ("mcm", "neglabel", "csp", "dnm")] == ["MCM", "NegLabel", "CSP", "DNM"]
    assert label("negrefine", "qwen", s_mm=True) == "NegRefine (qwen)"
    assert label("negrefine", "qwen") == "NegRefine w/o S_MM (qwen)"
    assert label("negrefine", s_mm=True) == "NegRefine w/o NegFilter"
    assert label("negrefine") == "NegRefine w/o NegFilter, w/o S_MM"
    assert label("interneg") == "InterNeg (textual)"
    assert row_label({"method": "interneg", "judge": None, "s_mm": False, "visual": True}) == "InterNeg"
    assert label("adaneg") == "AdaNeg" and label("glmcm") == "GL-MCM"
    assert label("tanl") == "tanl"  # not in the catalogue: its name


# --- the score stage on a hand-built run folder ---------------------------------------------------


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _negatives(rng: np.random.Generator) -> pa.Table:
    tables = []
    for m in ("neglabel", "csp", "dnm"):
        tables.append(pa.table({
            "method": [m] * 8, "rank": pa.array(range(8), pa.int32()), "label": [f"{m}{i}" for i in range(8)],
            "pos": ["noun"] * 6 + ["adj"] * 2, "embedding": embedding_column(_unit(rng, 8)),
        }))  # fmt: skip
    words = [*NOUNS, *ADJS]
    tables.append(pa.table({
        "method": ["negrefine"] * 8, "rank": pa.array(range(8), pa.int32()), "label": words,
        "pos": ["noun"] * 5 + ["adj"] * 3, "embedding": embedding_column(_unit(rng, 8)),
        "clean_label": words, "filter_input": [True] * 8,
        "nearest_id_labels": pa.array([["tench"]] * 8, pa.list_(pa.string())),
    }))  # fmt: skip
    return pa.concat_tables(tables, promote_options="default")


def _images(rng: np.random.Generator) -> pa.Table:
    rows = [("imagenet", "id")] * 6 + [("inat", "ood")] * 4 + [("places", "ood")] * 4
    return pa.table({
        "dataset": [r[0] for r in rows], "role": [r[1] for r in rows],
        "path": [f"{i}.jpg" for i in range(len(rows))], "label": pa.array([0] * len(rows), pa.int64()),
        "status": ["ok"] * len(rows),
        **{embedding_name(v): embedding_column(_unit(rng, len(rows))) for v in PREPROCESSING},
    })  # fmt: skip


def _stand_in(name: str, files: Mapping[str, Any]) -> Stage:
    def fn(ctx: StageContext) -> StageOutput:
        for rel, obj in files.items():
            (write_parquet if isinstance(obj, pa.Table) else write_json)(ctx.out_dir / rel, obj)
        return StageOutput(tuple(files), f"{name}: stand-in", {})

    return Stage(name, "stand-in", (), 1, lambda cfg: {"stand-in": name}, fn)


def _score_run(tmp: Path, score: Mapping[str, Any], images: Mapping[str, Any] | None = None) -> JobConfig:
    config = build_config({
        "run": {"name": "t", "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache")},
        "images": dict(images or {}),
        "model": {"arch": "nr-tiny-vit", "pretrained": "none", "precision": "fp32", "device": "cpu"},
        "text": {"gpus_per_actor": 0.0, "local_below": 100_000},  # in-process, no Ray
        "score": {"n_groups": 2, **score},
    })  # fmt: skip
    rng = np.random.default_rng(0)
    ids = pa.table({"label": ["tench", "goldfish", "daisy", "mushroom"],
                    **{v: embedding_column(_unit(rng, K)) for v in ID_VIEWS}})  # fmt: skip
    kept = pa.table({"label": [*NOUNS[:3], *ADJS[:2]], "pos": ["noun"] * 3 + ["adj"] * 2})  # k_neg = 5
    for stage in (
        _stand_in("embed-text", {"id_labels.parquet": ids}),
        _stand_in("mine", {"negatives.parquet": _negatives(rng)}),
        _stand_in("filter", {"wordnet/kept.parquet": kept}),
        _stand_in("embed-images", {"images.parquet": _images(rng)}),
    ):
        run_stage(stage, config)
    run_stage(get_stage("score"), config)
    return config


def _declared(config: JobConfig, ood: list[str]) -> dict[str, str]:
    """Score column name -> row, as the catalogue declares them for this config: every row, one per
    judge where it has one, one column per OOD dataset where the name has "{ood}"; without ablations a
    filtered method keeps only its S_MM rows over judges (or, with no judge, unfiltered)."""
    out = {}
    for name in config.score.methods:
        m = METHODS[name]
        for r in m.rows:
            if m.filtered and not config.score.ablations and not (r.s_mm and (r.judge or not JUDGES)):
                continue
            for judge in config.mining.filtered_by if r.pool else JUDGES if r.judge else [None]:
                row = r.key.format(judge=judge)
                for d in ood if "{ood}" in m.column else [None]:
                    out[m.column_name(row, d)] = row
    return out


@pytest.mark.parametrize(
    "score",
    [{}, {"ablations": False}, {"methods": ["dnm", "mcm"]}],
    ids=["all-methods", "no-ablations", "dnm-mcm"],
)
def test_score_stage_writes_the_catalogue_columns(tmp_path: Path, score: dict[str, Any]) -> None:
    config = _score_run(tmp_path, score)
    table = read_parquet(config.run_dir / "score" / "scores.parquet")
    columns = read_json(config.run_dir / "score" / "columns.json")["columns"]
    ood = ["inat", "places"]
    declared = _declared(config, ood)
    assert {c["name"]: c["row"] for c in columns} == declared
    assert table.column_names[5:] == [c["name"] for c in columns]
    for c in columns:
        method = METHODS[c["method"]]
        assert method.row(c["judge"], c["s_mm"])[0] == c["row"]
        assert method.column_name(c["row"], c["ood_dataset"]) == c["name"]
    # The report's rows: one per declared row, labelled by the catalogue.
    rows = evaluate(table, columns)["rows"]
    assert set(rows) == set(declared.values())
    for key, entry in rows.items():
        c = next(c for c in columns if c["row"] == key)
        assert entry["label"] == METHODS[c["method"]].row(c["judge"], c["s_mm"])[1]


@pytest.mark.parametrize("setting", ["per-method", "shared", "openood"])
def test_each_method_scores_the_embeddings_of_its_preprocessing(tmp_path: Path, setting: str) -> None:
    """columns.json and the report name each column's preprocessing, and the score is computed from
    that preprocessing's embedding column: NegLabel's and CSP's references use torchvision's bilinear
    transform, NegRefine's and MCM's the model's own (methods.md 1.6, 2.6, 3.5, App. B)."""
    methods = ("mcm", "neglabel", "csp", "negrefine")
    config = _score_run(tmp_path, {"methods": list(methods)}, {"preprocess": setting})
    expected = {
        "per-method": dict(zip(methods, ("clip", "torchvision", "torchvision", "clip"), strict=True)),
        "shared": dict.fromkeys(methods, "clip"),
        "openood": dict.fromkeys(methods, "openood"),
    }[setting]
    assert image_preprocessing(config.score.methods, setting) == expected
    columns = read_json(config.run_dir / "score" / "columns.json")["columns"]
    assert {c["method"]: c["preprocess"] for c in columns} == expected
    table = read_parquet(config.run_dir / "score" / "scores.parquet")
    assert {e["preprocess"] for e in evaluate(table, columns)["rows"].values()} == set(expected.values())
    images = read_parquet(config.run_dir / "embed-images" / "images.parquet")
    ids = read_parquet(config.run_dir / "embed-text" / "id_labels.parquet")
    id_text = column_matrix(ids, "the_nice_raw")
    mined = read_parquet(config.run_dir / "mine" / "negatives.parquet")
    negatives = column_matrix(
        mined.filter(pc.equal(mined.column("method"), "neglabel")).sort_by("rank"), "embedding"
    )
    perm = scores.grouping_permutation(8, 2, 0)
    id_text /= np.linalg.norm(id_text, axis=1, keepdims=True)
    for variant in PREPROCESSING:
        image = column_matrix(images, embedding_name(variant))
        want = scores.neglabel(image, id_text, negatives, n_groups=2, permutation=perm)
        same = np.allclose(table.column("neglabel").to_numpy(), want, rtol=0, atol=1e-12)
        assert same == (variant == expected["neglabel"]), variant


def test_unknown_preprocessing_is_refused_with_the_choices() -> None:
    with pytest.raises(NegRefineError, match="Known: clip, openood, per-method, shared, torchvision"):
        image_preprocessing(["mcm"], "bilinear")


# --- unknown names fail in load_config ------------------------------------------------------------

JOB = """
[run]
name = "t"
[[judges]]
name = "qwen"
backend = "wordnet"
[[datasets]]
name = "ninco"
role = "ood"
root = "/data/NINCO"
format = "imagefolder"
"""


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ('score.methods=["mcm", "neglable"]', ["score.methods[1] = 'neglable' is not allowed.",
                                                "Did you mean 'neglabel'?", "'negrefine', 'dnm'"]),
        ('mining.methods=["negrefin"]', ["mining.methods[0] = 'negrefin' is not allowed.",
                                         "Did you mean 'negrefine'?"]),
        ('mining.methods=["mcm"]', ["mining.methods[0] = 'mcm' is not allowed.",
                                    "'neglabel', 'csp', 'negrefine', 'dnm'"]),
        ('score.methods=["dnm"]', []),  # valid: no error
        ('filter.judges=["qwne"]', ["filter.judges[0] = 'qwne' is not a judge of this job.",
                                    "Did you mean 'qwen'?", "Known: qwen, wordnet"]),
        ("datasets.nincoo.root=/x", ["address an entry of [[datasets]] by name", "names: ninco.",
                                     "Did you mean 'ninco'?"]),
        ("judges.qwn.model=/m", ["names: qwen.", "Did you mean 'qwen'?"]),
    ],
)  # fmt: skip
def test_unknown_names_fail_at_load_with_did_you_mean(
    tmp_path: Path, override: str, needles: list[str]
) -> None:
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    if not needles:
        assert load_config(job, [override]).score.methods == ("dnm",)
        return
    with pytest.raises(ConfigError) as info:
        load_config(job, [override])
    for needle in needles:
        assert needle in str(info.value)


def test_duplicate_dataset_names_fail_at_load(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(JOB + JOB[JOB.index("[[datasets]]") :])
    with pytest.raises(ConfigError, match=r"\[\[datasets\]\] names must be unique; ninco appear"):
        load_config(job)


@pytest.mark.ray
def test_scores_computed_on_ray_workers_equal_the_drivers(ray_session: None, tmp_path: Path) -> None:
    """score.workers = "cluster" scores the images as Ray tasks over blocks (here 4 images, two chunks
    of 2): every column equals the driver's within 1e-9, the manifest counts the images the tasks
    scored, and the stage's hash is the same (where the scores are computed is not what they are)."""
    small = {"chunk_size": 2, "block_rows": 5}  # rounded down to whole chunks: blocks of 4
    here = _score_run(tmp_path / "driver", {**small, "workers": "driver"})
    there = _score_run(tmp_path / "cluster", {**small, "workers": "cluster"})
    a = read_parquet(here.run_dir / "score" / "scores.parquet")
    b = read_parquet(there.run_dir / "score" / "scores.parquet")
    assert a.column_names == b.column_names and a.num_rows == b.num_rows == 14
    for name in a.column_names[5:]:
        np.testing.assert_allclose(b.column(name).to_numpy(), a.column(name).to_numpy(), rtol=0, atol=1e-9)
    manifests = [read_json(c.run_dir / "score" / "manifest.json") for c in (here, there)]
    driver, cluster = (m["stats"]["workers"] for m in manifests)
    assert not driver["tasks"] and driver["nodes"] == {}
    assert cluster["tasks"] and cluster["block_rows"] == 4 and sum(cluster["nodes"].values()) > 14
    assert manifests[0]["hash"] == manifests[1]["hash"]
