"""filter.scope = "corpus" and mining.filtered_by (issue 14): the judges' input over every candidate
of the mining methods' pools, each method re-mined from the pool a judge filtered, the validation of
the two keys and which stages they rerun; end to end on jobs/smoke_scope.toml (two judges), whose
rerun with other mining settings asks the judges nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from negrefine_ray.cli import app
from negrefine_ray.config import JobConfig, build_config
from negrefine_ray.core import scores
from negrefine_ray.core.methods import get_method
from negrefine_ray.core.mining import clean_label, mine_by_id_distance
from negrefine_ray.errors import ConfigError, NegRefineError
from negrefine_ray.negatives.scope import filtered_kept, removed_by, reselect
from negrefine_ray.negatives.selection import mined_table
from negrefine_ray.pipeline import get_stage
from negrefine_ray.runfolder.artifacts import FILTER_POOL
from negrefine_ray.runfolder.atomic import column_matrix, embedding_column, read_json, read_parquet
from negrefine_ray.runfolder.folder import StageContext
from negrefine_ray.stages._filter_scope import corpus_input
from negrefine_ray.stages.mine import write_filter_pool

REPO = Path(__file__).resolve().parents[1]
D = 8
ID_NAMES = ["tench", "goldfish", "daisy", "mushroom"]
WORDS = [
    "aster",
    "birch",
    "cedar",
    "dahlia",
    "elm",
    "fern",
    "gorse",
    "heath",
    "iris",
    "juniper",
    "kelp",
    "larch",
]
NOUNS = [*WORDS, 'x"', "daisy"]  # 'x"' cleans to nothing; "daisy" is an ID name
ADJS = ["gooey", "rutted", "alpine", "tabby"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # type: ignore[no-any-return]


def _inputs() -> tuple[pa.Table, pa.Table]:
    """embed-text's candidates and id_labels tables, random embeddings."""
    rng = np.random.default_rng(0)
    n = len(NOUNS) + len(ADJS)
    cands = pa.table({
        "word": NOUNS + ADJS, "pos": ["noun"] * len(NOUNS) + ["adj"] * len(ADJS),
        "phrase": [None] * len(NOUNS) + [f"{a} scene" for a in ADJS],
        "single_raw": embedding_column(3 * rng.normal(size=(n, D))),
        "ensemble": embedding_column(_unit(rng.normal(size=(n, D)))),
    })  # fmt: skip
    ids = pa.table({
        "label": ID_NAMES, "the_nice_raw": embedding_column(3 * rng.normal(size=(len(ID_NAMES), D))),
        "csp_noun8": embedding_column(_unit(rng.normal(size=(len(ID_NAMES), D)))),
    })  # fmt: skip
    return cands, ids


def _pools() -> dict[str, pa.Table]:
    """NegLabel: every word (adjectives bare); NegRefine: the last nouns and two adjectives (as phrases)."""

    def pool(words: list[str], pos: list[str]) -> pa.Table:
        return pa.table({"word": words, "pos": pos, "lexname": [f"{p}.x" for p in pos]})

    return {
        "neglabel": pool(NOUNS + ADJS, ["noun"] * len(NOUNS) + ["adj"] * len(ADJS)),
        "negrefine": pool(NOUNS[4:12] + ADJS[:2], ["noun"] * 8 + ["adj"] * 2),
    }


class _Nearest:
    """A stand-in for the bare-string CLIP lookup that records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, labels: list[str]) -> dict[str, list[str]]:
        self.calls.append(list(labels))
        return {c: ID_NAMES[len(c) % 4 :] + ID_NAMES[: len(c) % 4] for c in labels}


def _config(tmp_path: Path, **sections: Any) -> JobConfig:
    methods = ["neglabel", "negrefine"]
    return build_config({
        "run": {"output_dir": str(tmp_path), "name": "r"}, **sections,
        "mining": {"methods": methods, "top_fraction": 0.5}, "score": {"methods": methods},
    })  # fmt: skip


def _filter_pool(tmp_path: Path) -> tuple[pa.Table, _Nearest, Any]:
    nearest = _Nearest()
    (tmp_path / "r" / "mine").mkdir(parents=True)
    lookup = write_filter_pool(tmp_path / "r" / "mine", _pools(), _inputs()[0], nearest)
    return read_parquet(FILTER_POOL.path(tmp_path / "r")), nearest, lookup


def test_the_corpus_input_asks_every_distinct_candidate_once(tmp_path: Path) -> None:
    pool, nearest, lookup = _filter_pool(tmp_path)
    assert pool.num_rows == sum(p.num_rows for p in _pools().values())
    # One pass over the distinct cleaned labels: the nouns, NegLabel's bare adjectives and NegRefine's
    # phrases ('x"' cleans to nothing and is never asked about).
    wanted = [*WORDS, "daisy", *ADJS, "gooey scene", "rutted scene"]
    assert nearest.calls == [wanted]
    config = _config(tmp_path, filter={"scope": "corpus", "n_id_labels": 3})
    table = corpus_input(StageContext(config, "filter", tmp_path / "out", config.run_dir))
    assert table.column_names == ["label", "pos", "nearest_id_labels"]
    assert table.column("label").to_pylist() == wanted
    assert table.column("pos").to_pylist() == ["noun"] * 13 + ["adj"] * 6
    assert all(
        ids == nearest([c])[c][:3]
        for c, ids in zip(wanted, table.column("nearest_id_labels").to_pylist(), strict=True)
    )
    assert lookup(["gooey scene"]) == {"gooey scene": nearest(["gooey scene"])["gooey scene"]}
    with pytest.raises(NegRefineError, match=r"lower filter\.n_id_labels or raise mining\.n_nearest"):
        config = _config(tmp_path, filter={"scope": "corpus", "n_id_labels": 5})
        corpus_input(StageContext(config, "filter", tmp_path / "out", config.run_dir))


def test_reselection_drops_what_the_judge_removed_and_mines_the_rest(tmp_path: Path) -> None:
    pool, _, _ = _filter_pool(tmp_path)
    config = _config(tmp_path)
    inputs = _inputs()
    before, _ = mined_table(get_method("neglabel"), _pools()["neglabel"], inputs, config=config)
    chosen = before.column("source_word").to_pylist()
    # The judge removes NegLabel's two first-ranked nouns and one of NegRefine's phrases; of 12 nouns
    # left NegLabel keeps 6, so the 7th-ranked noun moves up into its selection.
    gone = {("noun", chosen[0]), ("noun", chosen[1]), ("adj", "gooey scene")}
    inputs_table = pool.filter(pool.column("filter_input"))
    keys = zip(
        inputs_table.column("pos").to_pylist(), inputs_table.column("clean_label").to_pylist(), strict=True
    )
    labels = pa.table({
        "label": inputs_table.column("clean_label"), "pos": inputs_table.column("pos"),
        "kept": [k not in gone for k in keys],
    })  # fmt: skip
    assert removed_by(labels) == gone
    mined = reselect(pool, removed_by(labels), inputs, config=config)
    assert mined.schema.names == [*before.schema.names, "clean_label", "filter_input", "nearest_id_labels"]
    for row in mined.to_pylist():  # nothing the judge removed is ever selected again
        assert (row["pos"], clean_label(row["label"])) not in gone
    # NegLabel from the filtered pool = its rule run on the pool without those words.
    cands, ids = inputs
    words, pos = NOUNS + ADJS, ["noun"] * len(NOUNS) + ["adj"] * len(ADJS)
    left = [i for i, key in enumerate(zip(pos, words, strict=True)) if key not in gone]
    want = mine_by_id_distance(
        _unit(column_matrix(cands, "single_raw")[left]), _unit(column_matrix(ids, "the_nice_raw")),
        [pos[i] for i in left], q=0.95, csp_guard=False, top_fraction=0.5,
    )  # fmt: skip
    got = mined.filter(pc.equal(mined.column("method"), "neglabel")).sort_by("rank")
    assert got.column("source_word").to_pylist() == [words[left[i]] for i in want.indices]
    assert set(got.column("source_word").to_pylist()) - set(chosen)  # a candidate moved up into the selection
    assert (
        'x"' in _pools()["neglabel"].column("word").to_pylist()
    )  # uncleanable: never removed, still minable
    # NegRefine's rows carry NegFilter's columns from the filter pool (the same nearest labels).
    refined = mined.filter(pc.equal(mined.column("method"), "negrefine"))
    assert "gooey scene" not in refined.column("label").to_pylist()
    assert all(refined.column("filter_input").to_pylist())


def test_negrefine_keeps_only_its_mined_labels_of_a_corpus_wide_kept_table() -> None:
    negatives = pa.table({
        "method": ["neglabel", "negrefine", "negrefine", "negrefine"], "pos": ["noun"] * 4,
        "clean_label": [None, "a", "b", "b"], "filter_input": [None, True, True, False],
    })  # fmt: skip
    kept = pa.table({"label": ["z", "b", "a", "q"], "pos": ["noun", "noun", "adj", "noun"]})
    assert filtered_kept(kept, negatives, "negatives").equals(kept)
    assert filtered_kept(kept, negatives, "corpus").to_pylist() == [{"label": "b", "pos": "noun"}]


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"mining": {"filtered_by": ["wordnet"]}}, 'set filter.scope = "corpus" or empty mining.filtered_by'),
        (
            {"mining": {"filtered_by": ["wordnt"]}, "filter": {"scope": "corpus"}},
            "mining.filtered_by[0] = 'wordnt' is not among filter.judges = ['wordnet']. Did you mean",
        ),
        (
            {"mining": {"filtered_by": ["wordnet", "wordnet"]}, "filter": {"scope": "corpus"}},
            "mining.filtered_by lists wordnet twice",
        ),
        ({"filter": {"scope": "pool"}}, "filter.scope = 'pool' is not one of 'negatives', 'corpus'"),
    ],
)
def test_filtered_by_needs_the_corpus_scope_and_a_running_judge(
    sections: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(sections)
    assert needle in str(info.value)
    ok = build_config({"mining": {"filtered_by": ["wordnet"]}, "filter": {"scope": "corpus"}})
    assert ok.mining.filtered_by == ("wordnet",) and ok.filter.scope == "corpus"


def test_the_new_keys_rerun_the_stages_they_change() -> None:
    def settings(stage: str, **sections: Any) -> Any:
        return get_stage(stage).settings(build_config(sections))

    default, corpus = {}, {"filter": {"scope": "corpus"}}
    by = {**corpus, "mining": {"filtered_by": ["wordnet"]}}
    by_more = {**corpus, "mining": {"filtered_by": ["wordnet"], "top_fraction": 0.3}}
    assert "filter_scope" not in settings("mine", **default)  # default runs keep their mine hash
    assert settings("mine", **corpus) != settings("mine", **default)  # mine then writes filter_pool
    assert settings("mine", **by) == settings("mine", **corpus)  # filtered_by is not mine's business
    assert settings("filter", **corpus) != settings("filter", **default)
    assert settings("filter", **by) != settings("filter", **corpus)
    assert settings("filter", **by_more) != settings("filter", **by)  # the re-selection's settings
    assert settings("score", **by) != settings("score", **corpus) != settings("score", **default)
    assert "embed-text" in get_stage("filter").needs  # the re-selection reads the candidates' embeddings


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _shards(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in (cache / "answers").rglob("part-*.parquet"))


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_scope_job_scores_every_method_per_judge_pool_and_reuses_answers(
    ray_session: Any, tmp_path: Path
) -> None:
    code, out = _run("demo-images", str(tmp_path / "images"))
    assert code == 0, out
    cache = tmp_path / "cache"
    sets = ["--set", f"run.output_dir={tmp_path}", "--set", f"run.cache_dir={cache}",
            "--set", "labels.id_labels=imagenet10", "--set", "corpus.max_words_per_lexname=25",  # quick
            "--set", "score.n_groups=20",
            "--set", f"datasets.demo-id.root={tmp_path / 'images' / 'id'}",
            "--set", f"datasets.demo-ood.root={tmp_path / 'images' / 'ood'}"]  # fmt: skip
    job = str(REPO / "jobs" / "smoke_scope.toml")
    code, out = _run("run", job, *sets)
    assert code == 0, out
    run_dir, judges = tmp_path / "smoke-scope", ("wordnet", "wordnet-capitalized")
    report = (run_dir / "report" / "report.md").read_text()
    for judge in judges:
        assert f"| NegRefine ({judge}) |" in report
        for method in ("NegLabel", "CSP", "NegRefine", "NegRefine w/o S_MM", "DNM"):
            assert f"| {method} (filtered by {judge}) |" in report
    metrics = read_json(run_dir / "report" / "metrics.json")["rows"]
    assert {"neglabel[pool=wordnet]", "dnm[pool=wordnet-capitalized]", "negrefine[pool=wordnet]"} <= set(
        metrics
    )
    # A filtered-pool column is NegLabel's score over that judge's re-mined negatives.
    table = read_parquet(run_dir / "score" / "scores.parquet")
    ok = np.array([s == "ok" for s in table.column("status").to_pylist()])
    images = read_parquet(run_dir / "embed-images" / "images.parquet").filter(pa.array(ok))
    mined = read_parquet(run_dir / "filter" / "wordnet" / "mined.parquet")
    neg = column_matrix(
        mined.filter(pc.equal(mined.column("method"), "neglabel")).sort_by("rank"), "embedding"
    )
    ids = _unit(column_matrix(read_parquet(run_dir / "embed-text" / "id_labels.parquet"), "the_nice_raw"))
    want = scores.neglabel(column_matrix(images, "embedding@torchvision"), ids, neg, n_groups=20, seed=0)
    got = table.column("neglabel[pool=wordnet]").to_numpy(zero_copy_only=False)[ok]
    np.testing.assert_allclose(got, want, rtol=1e-6)

    # Other mining settings: mine, filter (its re-selections), score and report rerun; every answer
    # comes from the answer store (questions are keyed by content), so no judge is asked anything.
    shards, before = _shards(cache), mined
    code, out = _run("run", job, *sets, "--set", "mining.top_fraction=0.3")
    assert code == 0, out
    assert "filter: up to date" not in out and "filter: wordnet: " in out
    assert _shards(cache) == shards
    stats = read_json(run_dir / "filter" / "manifest.json")["stats"]
    for judge in judges:
        assert stats[judge]["accounting"]["questions_sent"] == 0, stats[judge]["accounting"]
        assert stats[judge]["accounting"]["answers_from_store"] > 0
    after = read_parquet(run_dir / "filter" / "wordnet" / "mined.parquet")
    assert after.num_rows > before.num_rows  # twice the fraction, from the same filtered pool
