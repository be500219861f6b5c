"""Grid jobs without Ray: `[grid]` parsed and expanded into points (product, zip, zip groups), every
bad value naming its point before any work, stages linked in from a donor run folder under the same
hash, and the summary (tables, plots, links) read from the points' own metrics.json, unchanged by a
rerun. The grid over the real smoke job is in test_grid_runs.py (slow)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import open_clip
import pytest
from test_stages import CALLS, COUNT, WORDS

from negrefine_ray.config import JobConfig, build_config, grid_points, load_config, point_config
from negrefine_ray.errors import ConfigError, StageError
from negrefine_ray.grid import grid_configs
from negrefine_ray.grid.summary import write_grid_summary
from negrefine_ray.runfolder.atomic import read_json, write_json
from negrefine_ray.runfolder.donors import Donors, HashLocks
from negrefine_ray.runfolder.folder import MANIFEST, Stage, StageContext, StageOutput, run_stage

REPO = Path(__file__).resolve().parents[1]


def _job(grid: dict, **sections: dict) -> JobConfig:
    return build_config({"run": {"name": "g", "output_dir": "/tmp/nr-grid"}, **sections, "grid": grid})


def test_points_are_the_product_in_file_order_the_last_key_fastest() -> None:
    job = _job({"score.alpha": [0.0, 2.0], "mining": {"top_fraction": [0.1, 0.2]}})  # dotted or nested
    points = grid_points(job.grid)
    assert [p.name for p in points] == [
        "alpha-0.0_top_fraction-0.1", "alpha-0.0_top_fraction-0.2",
        "alpha-2.0_top_fraction-0.1", "alpha-2.0_top_fraction-0.2",
    ]  # fmt: skip
    assert points[1].sets == ["score.alpha=0.0", "mining.top_fraction=0.2"]
    config = point_config(job, points[1])
    assert (config.score.alpha, config.mining.top_fraction, config.grid.axes) == (0.0, 0.2, ())
    assert config.run_dir == Path("/tmp/nr-grid/g/alpha-0.0_top_fraction-0.2")
    assert config.cache_dir == job.cache_dir


def test_zip_pairs_values_and_a_zip_group_combines_with_the_rest() -> None:
    backbones = {"model.arch": ["ViT-B-16", "RN50"], "model.pretrained": ["openai", "openai"]}
    zipped = _job({**backbones, "mode": "zip"})
    assert [p.name for p in grid_points(zipped.grid)] == [
        "arch-ViT-B-16_pretrained-openai", "arch-RN50_pretrained-openai",
    ]  # fmt: skip
    grouped = _job({**backbones, "score.alpha": [1.0, 2.0], "zip": [["model.arch", "model.pretrained"]]})
    values = [dict(p.values) for p in grid_points(grouped.grid)]
    assert len(values) == 4 and {(v["model.arch"], v["model.pretrained"]) for v in values} == {
        ("ViT-B-16", "openai"), ("RN50", "openai"),
    }  # fmt: skip


def test_any_set_key_sweeps_lists_and_named_entries() -> None:
    judges = [{"name": "wn2", "backend": "wordnet"}]
    grid = {"filter.judges": [["wordnet"], ["wordnet", "wn2"]], "judges.wn2.proper_rule": ["capitalized"]}
    job = _job(grid, judges=judges)
    points = grid_configs(job)
    assert [c.filter.judges for _, c in points] == [("wordnet",), ("wordnet", "wn2")]
    assert points[1][0].name == "judges-wordnet_wn2_proper_rule-capitalized"
    assert points[1][1].judges[0].proper_rule == "capitalized"


def test_the_grid_is_saved_with_the_job_and_set_adds_an_axis(tmp_path: Path) -> None:
    job = _job({"score.alpha": [0.0, 2.0]})
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(job.to_dict()))
    assert load_config(saved) == job
    more = load_config(saved, ["grid.score.k_pos=[3, 5]"])
    assert [a.key for a in more.grid.axes] == ["score.alpha", "score.k_pos"]
    assert load_config(saved, ["grid.score.alpha=[4.0]"]).grid.axes[0].values == (4.0,)


@pytest.mark.parametrize(
    ("grid", "needle"),
    [
        (
            {"score.alpha": [1.0, -1.0], "score.n_groups": [0]},
            r"point 'alpha-1.0_n_groups-0' .*score.n_groups = 0",
        ),
        ({"model.precision": ["fp32", "fp8"]}, r"point 'precision-fp8' \(model.precision=\"fp8\"\).*fp8"),
        ({"score.alpah": [1.0]}, r"Unknown key 'score.alpah'.*Did you mean 'alpha'"),
        ({"scor.alpha": [1.0]}, r"unknown section 'scor'.*Did you mean 'score'"),
        ({"score.alpha": 2.0}, r"grid.score.alpha = 2.0 is not a list of values"),
        ({"score.alpha": []}, r"is not a list of values"),
        ({"run.name": ["a", "b"]}, r"'run.name' cannot be swept"),
        ({"score.alpha": [1.0, 2.0], "score.k_pos": [5], "mode": "zip"}, r"differ in length"),
        (
            {"score.alpha": [1.0], "zip": [["score.k_pos"]]},
            r"grid.zip names 'score.k_pos', which is not swept",
        ),
        ({"score.alpha": [1.0, 1.0]}, r"has the point score.alpha=1.0 twice"),
        ({"score.alpha": [1.0], "mode": "zipped"}, r"grid.mode = 'zipped'.*Did you mean 'zip'"),
        ({"datasets.nope.root": ["/x"]}, r"address an entry of \[\[datasets\]\] by name"),
    ],
)
def test_a_bad_grid_fails_at_load_naming_the_point_or_key(grid: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _job(grid)


def test_a_grid_job_is_not_run_as_one_pipeline(tmp_path: Path) -> None:
    from negrefine_ray.pipeline import run_pipeline

    with pytest.raises(StageError, match="is a grid job"):
        run_pipeline(build_config({"run": {"output_dir": str(tmp_path)}, "grid": {"score.alpha": [1.0]}}))


def test_the_shipped_grid_jobs_expand() -> None:
    ablations = grid_configs(load_config(REPO / "jobs" / "ablations_negrefine.toml"))
    assert len(ablations) >= 4
    backbones = grid_configs(load_config(REPO / "jobs" / "backbones.toml"))
    assert [(c.model.arch, c.model.pretrained, c.mining.dnm_preset) for _, c in backbones] == [
        ("ViT-B-16-quickgelu", "openai", "ViT-B-16"), ("ViT-B-32-quickgelu", "openai", "ViT-B-32"),
        ("ViT-L-14-quickgelu", "openai", "ViT-L-14"), ("RN50-quickgelu", "openai", "RN50"),
    ]  # fmt: skip
    for _, config in backbones:  # open_clip knows each architecture and its `openai` tag
        assert "openai" in open_clip.list_pretrained_tags_by_model(config.model.arch)


def test_a_stage_is_linked_in_from_a_donor_with_the_same_hash(tmp_path: Path) -> None:
    def folder(name: str, seed: int = 0) -> JobConfig:
        return build_config({"run": {"output_dir": str(tmp_path), "name": name, "seed": seed}})

    first, second, other = folder("a"), folder("b"), folder("c", seed=1)
    CALLS.clear()
    assert [run_stage(s, first).status for s in (WORDS, COUNT)] == ["ran", "ran"]
    donors = Donors((first.run_dir,))
    assert [run_stage(s, second, donors=donors).status for s in (WORDS, COUNT)] == ["reused", "reused"]
    assert [run_stage(s, other, donors=donors).status for s in (WORDS, COUNT)] == ["ran", "ran"]
    assert CALLS == ["words", "count"] * 2  # the second folder computed nothing
    manifest = read_json(second.run_dir / "words" / MANIFEST)
    assert manifest["reused_from"] == "../../a/words" and "reused_from" not in read_json(
        first.run_dir / "words" / MANIFEST
    )
    # a chain names the folder that computed it; a rerun is up to date; the files are the donor's bytes
    third = folder("d")
    assert run_stage(WORDS, third, donors=Donors((second.run_dir,))).status == "reused"
    assert read_json(third.run_dir / "words" / MANIFEST)["reused_from"] == "../../a/words"
    assert run_stage(WORDS, second, donors=donors).status == "skipped"
    assert (second.run_dir / "words" / "words.txt").read_bytes() == (
        first.run_dir / "words" / "words.txt"
    ).read_bytes()
    assert run_stage(WORDS, second, donors=donors, force=True).status == "ran"  # --force computes


def test_points_at_once_compute_a_shared_stage_once(tmp_path: Path) -> None:
    """grid.parallel: runs in threads share a lock per stage hash; the first computes, the others
    wait and link it in."""

    def slow_words(ctx: StageContext) -> StageOutput:
        time.sleep(0.3)  # long enough for every thread to reach the stage meanwhile
        CALLS.append("words")
        (ctx.out_dir / "words.txt").write_text("w0 w1")
        return StageOutput(("words.txt",), "2 words")

    slow = Stage("words", "toy", (), 1, lambda c: {"seed": c.run.seed}, slow_words)
    configs = [build_config({"run": {"output_dir": str(tmp_path), "name": f"p{i}"}}) for i in range(3)]
    donors = Donors(tuple(c.run_dir for c in configs), HashLocks())
    CALLS.clear()
    with ThreadPoolExecutor(3) as pool:
        statuses = list(
            pool.map(lambda c: run_stage(slow, c, donors=donors.without(c.run_dir)).status, configs)
        )
    assert CALLS == ["words"] and sorted(statuses) == ["ran", "reused", "reused"]
    assert build_config({"grid": {"score.alpha": [1.0, 2.0], "parallel": 2}}).grid.parallel == 2
    with pytest.raises(ConfigError, match=r"grid\.parallel = 0 is not an integer >= 1"):
        build_config({"grid": {"score.alpha": [1.0], "parallel": 0}})


def _metrics(auroc: float, fpr: float) -> dict:
    values = {"auroc": auroc, "fpr95": fpr}
    rows = {
        "neglabel": {"label": "NegLabel", "datasets": {"inat": values, "sun": values}, "average": values},
        "mcm": {"label": "MCM", "datasets": {"inat": values, "sun": values}, "average": values},
    }
    return {"metrics": ["auroc", "fpr95"], "ood_datasets": ["inat", "sun"], "rows": rows}


def test_the_summary_holds_each_points_own_figures_and_a_rerun_changes_nothing(tmp_path: Path) -> None:
    job = build_config({
        "run": {"name": "g", "output_dir": str(tmp_path), "seeds": [0, 1]},
        "grid": {"score.alpha": [0.0, 2.0], "score.k_pos": [3, 5]},
    })  # fmt: skip
    points = grid_configs(job)
    for i, (_, config) in enumerate(points):
        for seed in (0, 1):
            run_dir = config.run_dir / f"seed-{seed}"
            write_json(run_dir / "report" / "metrics.json", _metrics(0.5 + 0.1 * i + 0.01 * seed, 0.4))
            write_json(
                run_dir / "corpus" / MANIFEST, {"hash": "h"} if i == 0 else {"reused_from": "../../../x"}
            )
    written = write_grid_summary(job, points)
    assert written == [
        "grid.json", "grid.md", "grid.html", "plots/line_score.alpha.png", "plots/line_score.k_pos.png",
        "plots/heatmap_score.alpha_score.k_pos.png",
    ]  # fmt: skip
    summary = read_json(job.run_dir / "grid.json")
    last = summary["points"][3]
    assert last["name"] == "alpha-2.0_k_pos-5" and last["values"] == {"score.alpha": 2.0, "score.k_pos": 5}
    assert last["metrics"]["neglabel"]["inat"]["auroc"]["per_seed"] == [0.8, 0.81]
    assert last["metrics"]["neglabel"]["inat"]["auroc"]["mean"] == pytest.approx(0.805)
    assert summary["stage_runs"]["corpus"] == {"ran": 2, "reused": 6}
    table = (job.run_dir / "grid.md").read_text()
    assert "| score.alpha | score.k_pos | MCM · inat | MCM · sun | MCM · average | NegLabel · inat |" in table
    assert "| 2.0 | 5 | 80.50 ± 0.50 | 80.50 ± 0.50 | 80.50 ± 0.50 |" in table
    assert "[seed 1](alpha-2.0_k_pos-5/seed-1/report/report.md)" in table
    assert "[mean ± std](alpha-2.0_k_pos-5/report-seeds.md)" in table
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in job.run_dir.rglob("grid*")}
    write_grid_summary(job, points)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in job.run_dir.rglob("grid*")}
    assert after == before and (job.run_dir / "grid.html").read_text().startswith("<!doctype html>")
    # the HTML report, where the report stage wrote one beside report.md, is linked instead
    (points[0][1].run_dir / "seed-0" / "report" / "report.html").write_text("<html></html>")
    write_grid_summary(job, points)
    assert "(alpha-0.0_k_pos-3/seed-0/report/report.html)" in (job.run_dir / "grid.md").read_text()
