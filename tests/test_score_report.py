"""Score and report stages on a hand-built run folder: upstream artifacts written by small stand-in
stages through the real `run_stage`, the tiny random CLIP for NegRefine's texts (in-process, no Ray).
Checks the columns, failed images excluded and counted, S_MM pair texts embedded once, DNM's
per-OOD-dataset grouping, seeds, and the report's Markdown and metrics against compute_metrics."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from negrefine_ray.config import JobConfig, build_config
from negrefine_ray.core import scores
from negrefine_ray.core.metrics import compute_metrics
from negrefine_ray.core.multi_matching import multi_matching_scores
from negrefine_ray.errors import ConfigError
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
from negrefine_ray.stages._score_output import ColumnSpill, score_parts
from negrefine_ray.stages.report import MEASURED_HEADING, RANDOM_WARNING

D, K, G = 32, 6, 3  # nr-tiny-vit's embedding width, ID labels, groups
ID_NAMES = ["tench", "goldfish", "kite (bird of prey)", "daisy", "mushroom", "toilet paper"]
NOUNS = ["pasqueflower", "white currant", "minuteman", "biosafety level 1\"", "biosafety level 2\"",
         "external carotid artery", "pocatello", "[thermal", "x"]  # fmt: skip
ADJS = ["gooey landscape", "rutted creature", "bacchanalian pattern", "wildcat pattern"]
KEPT = [("pasqueflower", "noun"), ("white currant", "noun"), ("external carotid artery", "noun"),
        ("thermal", "noun"), ("gooey landscape", "adj"), ("rutted creature", "adj")]  # fmt: skip
DATASETS = [("imagenet", "id", 14), ("inat", "ood", 7), ("open image", "ood", 6)]
FAILED = {3: "corrupt", 16: "missing"}  # row -> status: one ID image, one iNaturalist image


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clean(label: str) -> str | None:
    kept = "".join(c for c in label if c.isalpha() or c in "_- ")
    return kept if len(kept) > 2 else None


def _negatives(rng: np.random.Generator) -> pa.Table:
    tables = []
    for method, m in (("neglabel", 12), ("csp", 10), ("dnm", 13)):
        tables.append(pa.table({
            "method": [method] * m, "rank": pa.array(range(m), pa.int32()),
            "label": [f"{method}{i}" for i in range(m)], "pos": ["noun"] * 8 + ["adj"] * (m - 8),
            "embedding": embedding_column(_unit(rng, m)),
        }))  # fmt: skip
    labels, pos = NOUNS + ADJS, ["noun"] * len(NOUNS) + ["adj"] * len(ADJS)
    cleaned = [_clean(label) for label in labels]
    first = [c is not None and c not in cleaned[:i] for i, c in enumerate(cleaned)]
    tables.append(pa.table({
        "method": ["negrefine"] * len(labels), "rank": pa.array(range(len(labels)), pa.int32()),
        "label": labels, "pos": pos, "embedding": embedding_column(_unit(rng, len(labels))),
        "clean_label": pa.array(cleaned, pa.string()), "filter_input": first,
        "nearest_id_labels": pa.array([ID_NAMES] * len(labels), pa.list_(pa.string())),
    }))  # fmt: skip
    return pa.concat_tables(tables, promote_options="default")


def _images(rng: np.random.Generator) -> pa.Table:
    rows = [(name, role) for name, role, n in DATASETS for _ in range(n)]
    status = [FAILED.get(i, "ok") for i in range(len(rows))]
    mask = pa.array([s != "ok" for s in status])
    emb = {v: _unit(rng, len(rows)) for v in ("clip", "torchvision")}  # the methods' two preprocessings
    return pa.table({
        "dataset": [r[0] for r in rows], "role": [r[1] for r in rows],
        "path": [f"{r[0]}/{i}.jpg" for i, r in enumerate(rows)],
        "label": pa.array([i % K if r[1] == "id" else -1 for i, r in enumerate(rows)], pa.int64()),
        "status": status,
        **{f"embedding@{v}": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), D, mask=mask)
           for v, e in emb.items()},
    })  # fmt: skip


def _stand_in(name: str, needs: tuple[str, ...], files: Mapping[str, Any], stats: dict[str, Any]) -> Stage:
    def fn(ctx: StageContext) -> StageOutput:
        for rel, obj in files.items():
            (write_parquet if isinstance(obj, pa.Table) else write_json)(ctx.out_dir / rel, obj)
        return StageOutput(tuple(files), f"{name}: stand-in", stats)

    return Stage(name, "stand-in", needs, 1, lambda cfg: {"stand-in": name}, fn)


def _config(tmp: Path, **score: Any) -> JobConfig:
    return build_config({
        "run": {"name": "t", "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"),
                "seeds": score.pop("seeds", [])},
        "model": {"arch": "nr-tiny-vit", "pretrained": "none", "precision": "fp32", "device": "cpu"},
        "text": {"gpus_per_actor": 0.0, "local_below": 100_000},  # in-process, no Ray
        "score": {"n_groups": G, **score},
    })  # fmt: skip


def _upstream(config: JobConfig) -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(K, D)).astype(np.float32) * 3
    views = {v: embedding_column(_unit(rng, K)) for v in ("csp_noun8", "bare", "mcm")}
    ids = pa.table({"label": ID_NAMES, "the_nice_raw": embedding_column(raw), **views})
    kept = pa.table({"label": [k[0] for k in KEPT], "pos": [k[1] for k in KEPT]})
    mine_stats = {"negrefine": {"pool_nouns": 40, "pool_adjectives": 9, "selected_nouns": 9,
                                "selected_adjectives": 4}}  # fmt: skip
    filter_stats = {"wordnet": {"total": 12, "kept": 6, "proper": 4, "same": 0, "subcategory": 2}}
    for stage in (
        _stand_in("embed-text", (), {"id_labels.parquet": ids}, {}),
        _stand_in("mine", ("embed-text",), {"negatives.parquet": _negatives(rng)}, mine_stats),
        _stand_in("filter", ("mine",), {"wordnet/kept.parquet": kept}, filter_stats),
        _stand_in("embed-images", (), {"images.parquet": _images(rng)}, {"failures": {"corrupt": 1}}),
    ):
        run_stage(stage, config)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobConfig, pa.Table]:
    config = _config(tmp_path_factory.mktemp("score"))
    _upstream(config)
    run_stage(get_stage("score"), config)
    run_stage(get_stage("report"), config)
    return config, read_parquet(config.run_dir / "score" / "scores.parquet")


def test_score_columns_and_excluded_images(run: tuple[JobConfig, pa.Table]) -> None:
    config, table = run
    expected = {"mcm", "neglabel", "csp", "dnm@inat", "dnm@open image", "negrefine[wordnet]",
                "negrefine_nl[wordnet]", "negrefine_nofilter", "negrefine_nl_nofilter"}  # fmt: skip
    assert set(table.column_names) == {"dataset", "role", "path", "label", "status"} | expected
    assert table.num_rows == sum(n for *_, n in DATASETS)
    bad = np.array([s != "ok" for s in table.column("status").to_pylist()])
    for name in expected:
        values = table.column(name).to_numpy(zero_copy_only=False)
        assert np.isnan(values[bad]).all() and table.schema.field(name).type == pa.float64()
    stats = read_json(config.run_dir / "score" / "manifest.json")["stats"]
    assert stats["excluded"] == {"imagenet": {"corrupt": 1}, "inat": {"missing": 1}}
    assert stats["scored"] == table.num_rows - 2
    assert not list((config.run_dir / "score").glob(".columns-*"))  # the spilled columns are gone
    # DNM: ID rows and that dataset's rows only, under that dataset's own grouping.
    dataset = np.array(table.column("dataset").to_pylist())
    inat = table.column("dnm@inat").to_numpy(zero_copy_only=False)
    assert (
        np.isfinite(inat[~bad & (dataset != "open image")]).all()
        and np.isnan(inat[dataset == "open image"]).all()
    )
    other = table.column("dnm@open image").to_numpy(zero_copy_only=False)
    assert not np.allclose(inat[~bad & (dataset == "imagenet")], other[~bad & (dataset == "imagenet")])


def test_scores_written_in_parts_equal_the_whole_table(tmp_path: Path) -> None:
    """scores.parquet is written a row range at a time from columns spilled to disk: the parts, for
    any part size, make the table a one-shot build makes (null where not ok or NaN)."""
    rng = np.random.default_rng(0)
    n = 11
    ok = rng.random(n) > 0.3
    status = ["ok" if o else "corrupt" for o in ok]
    images = pa.table({"dataset": ["d"] * n, "role": ["id"] * n, "path": [f"{i}.jpg" for i in range(n)],
                       "label": list(range(n)), "status": status})  # fmt: skip
    columns = {"a": rng.standard_normal(ok.sum()), "b": rng.standard_normal(ok.sum())}
    columns["b"][0] = np.nan
    expected = images
    for name, values in columns.items():
        full = np.full(n, np.nan)
        full[ok] = values
        expected = expected.append_column(name, pa.array(full, pa.float64(), mask=np.isnan(full)))
    with ColumnSpill(tmp_path, int(ok.sum())) as spill:
        for name, values in columns.items():
            spill.add(name, values)
        with pytest.raises(ValueError, match="computed twice"):
            spill.add("a", columns["a"])
        for rows in (1, 3, 4, n, 100):
            parts = list(score_parts(images, ok, spill, rows=rows))
            assert len(parts) == -(-n // rows)
            assert pa.concat_tables(parts).equals(expected)
    assert not spill.folder.exists()


def test_scores_equal_the_pure_functions(run: tuple[JobConfig, pa.Table]) -> None:
    config, table = run
    ok = np.array([s == "ok" for s in table.column("status").to_pylist()])
    images = read_parquet(config.run_dir / "embed-images" / "images.parquet").filter(pa.array(ok))
    image = column_matrix(images, "embedding@torchvision")  # NegLabel's reference transform
    ids = read_parquet(config.run_dir / "embed-text" / "id_labels.parquet")
    negs = read_parquet(config.run_dir / "mine" / "negatives.parquet")
    neg = column_matrix(negs.filter(pa.compute.equal(negs.column("method"), "neglabel")), "embedding")
    pos = column_matrix(ids, "the_nice_raw")
    pos = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    want = scores.neglabel(image, pos, neg, n_groups=G, seed=0)
    np.testing.assert_allclose(table.column("neglabel").to_numpy(zero_copy_only=False)[ok], want, rtol=1e-6)
    np.testing.assert_allclose(
        table.column("mcm").to_numpy(zero_copy_only=False)[ok],
        scores.mcm(column_matrix(images, "embedding@clip"), column_matrix(ids, "mcm")),  # MCM's: CLIP's
    )
    # alpha * S_MM = negrefine - negrefine_nl, and S_MM is a probability.
    for tag in ("[wordnet]", "_nofilter"):
        mm = (table.column(f"negrefine{tag}").to_numpy(zero_copy_only=False)
              - table.column(f"negrefine_nl{tag}").to_numpy(zero_copy_only=False))[ok] / 2.0  # fmt: skip
        assert ((mm > 0) & (mm < 1)).all()
    stats = read_json(config.run_dir / "score" / "manifest.json")["stats"]
    # 7 cleaned nouns ("x" emptied, the two biosafety levels merged) + 4 adjectives; 6 kept.
    assert stats["negatives"]["negrefine_nofilter"] == {
        "negatives": 11,
        "kept": 9,
        "dropped": 2,
        "per_group": 3,
    }
    assert stats["negatives"]["negrefine[wordnet]"] == {
        "negatives": 6,
        "kept": 6,
        "dropped": 0,
        "per_group": 2,
    }


def test_pair_texts_are_embedded_once(run: tuple[JobConfig, pa.Table]) -> None:
    config, table = run
    pairs = read_json(config.run_dir / "score" / "manifest.json")["stats"]["pairs"]
    n_ok = table.num_rows - len(FAILED)
    assert pairs["without_dedup"] == n_ok * 5 * 5
    assert pairs["all_sets"] <= K * 11 < pairs["without_dedup"]  # at most every (ID, negative) pair
    assert pairs["texts_encoded"] == 8 * pairs["all_sets"]  # each distinct text once, 8 templates
    assert set(pairs["per_set"]) == {"negrefine[wordnet]", "negrefine_nofilter"}
    assert max(pairs["per_set"].values()) <= pairs["all_sets"] <= sum(pairs["per_set"].values())


def test_multi_matching_scores_matches_a_per_image_loop() -> None:
    rng = np.random.default_rng(1)
    image, id_text, neg_text = _unit(rng, 9), _unit(rng, K), _unit(rng, 8)
    id_names, neg_names = [f"p{i}" for i in range(K)], [f"n{j}" for j in range(8)]
    table: dict[str, np.ndarray] = {}  # a fixed random embedding per text, so a loop can recompute it
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.stack([table.setdefault(t, _unit(rng, 1)[0]) for t in texts])

    sets = {"all": np.arange(8), "some": np.array([5, 1, 6, 2])}
    out, counts = multi_matching_scores(
        image, id_text, neg_text, sets=sets, names=(id_names, neg_names), embed_pairs=embed, k_pos=3, k_neg=2
    )
    assert len(calls) == 1 and len(set(calls[0])) == len(calls[0]) == counts["all_sets"]
    assert counts["without_dedup"] == 9 * 3 * 2
    for key, idx in sets.items():
        for x, got in zip(image, out[key], strict=True):
            p = np.argsort(-(id_text @ x), kind="stable")[:3]
            n = idx[np.argsort(-(neg_text[idx] @ x), kind="stable")[:2]]
            best = max(100 * table[f"p{a} and n{b}"] @ x - 100 * neg_text[b] @ x for a in p for b in n)
            assert got == pytest.approx(1 / (1 + np.exp(-best)), rel=1e-5)


def test_report_markdown_and_metrics(run: tuple[JobConfig, pa.Table]) -> None:
    config, table = run
    folder = config.run_dir / "report"
    text = (folder / "report.md").read_text()
    assert text.splitlines()[0].startswith(RANDOM_WARNING)
    assert "| Method | Images | inat | open image | Average |" in text and "| NegRefine (wordnet) |" in text
    assert "NegRefine w/o NegFilter, w/o S_MM" in text and "| score |" in text and "| filter |" in text
    assert "| imagenet | id | 14 | 13 | corrupt 1 |" in text
    results, measured = text.split(f"### {MEASURED_HEADING}")  # every wall-clock figure below it
    assert "| filter |" in measured and "| filter |" not in results and "Questions/s" not in results
    result = read_json(folder / "metrics.json")
    status, role = table.column("status").to_pylist(), table.column("role").to_pylist()
    dataset = table.column("dataset").to_pylist()
    is_id = np.array([s == "ok" and r == "id" for s, r in zip(status, role, strict=True)])
    names = result["metrics"]
    for row, column in (("neglabel", "neglabel"), ("dnm", "dnm@open image"), ("negrefine[wordnet]", None)):
        values = table.column(column or row).to_numpy(zero_copy_only=False)
        is_ood = np.array([s == "ok" and d == "open image" for s, d in zip(status, dataset, strict=True)])
        assert result["rows"][row]["datasets"]["open image"] == compute_metrics(
            values[is_id], values[is_ood], names
        )
    entry = result["rows"]["mcm"]
    assert entry["average"]["auroc"] == pytest.approx(
        np.mean([entry["datasets"][d]["auroc"] for d in ("inat", "open image")])
    )
    assert "fpr95_openood" in entry["average"] and "std" not in entry
    assert sorted(p.name for p in (folder / "plots").iterdir()) == [
        "hist_inat.png", "hist_open_image.png", "roc_inat.png", "roc_open_image.png"
    ]  # fmt: skip


def test_grouping_follows_the_run_seed_only_when_asked(tmp_path: Path) -> None:
    columns = {}
    for policy, seed in (("run", 0), ("run", 1), ("fixed", 1)):
        config = _config(tmp_path / f"{policy}{seed}", permutation_seed=policy, methods=["mcm", "neglabel"])
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, seed=seed))
        _upstream(config)
        run_stage(get_stage("score"), config)
        columns[policy, seed] = read_parquet(config.run_dir / "score" / "scores.parquet").column("neglabel")
    assert not columns["run", 0].equals(columns["run", 1])  # another grouping permutation
    assert columns["fixed", 1].equals(columns["run", 0])  # group_seed 0, whatever the run's seed


@pytest.mark.parametrize(
    ("score", "message"),
    [
        ({"methods": ["neglable"]}, "Did you mean 'neglabel'?"),
        ({"n_groups": 50}, "set score.n_groups <= "),
        ({"device": "cuda"}, "score.device = 'cuda' but the process running the score stage has no GPU"),
    ],
)
def test_config_errors_name_the_fix(tmp_path: Path, score: dict[str, Any], message: str) -> None:
    """An unknown method is refused by the config itself; a value that needs the mined negatives'
    count (n_groups above it) by the score stage, before it scores anything."""
    if score.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this process has a GPU: score.device = 'cuda' is valid here")
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        config = _config(tmp_path, **score)
        _upstream(config)
        run_stage(get_stage("score"), config)


def test_package_import_stays_light_and_exports_the_api() -> None:
    code = (
        "import sys, negrefine_ray as nr\n"
        "heavy = {'torch', 'open_clip', 'ray', 'sklearn'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "import negrefine_ray.core.scores as sc, negrefine_ray.core.metrics as me\n"
        "assert nr.neglabel is sc.neglabel and nr.compute_metrics is me.compute_metrics\n"
        "assert nr.compute_metrics([3.0, 2.0], [1.0, 2.5], ['auroc'])['auroc'] == 0.75\n"
        "assert 'torch' in sys.modules and set(nr.__all__) <= set(dir(nr))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
