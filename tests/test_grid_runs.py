"""Grid jobs over the real smoke job (slow: each runs the pipeline at several points, ~1-2 min on 2
cores): a 2 x 2 grid with two seeds computes every stage once per distinct input (counted from the
manifests), its summary holds each point's own metrics.json and a rerun is all up to date; a backbone
grid over two tiny architectures caches the embeddings per model."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import SMOKE_JOB, SmokeRun, run_cli

from negrefine_ray.pipeline import STAGE_NAMES
from negrefine_ray.runfolder.atomic import read_json, read_parquet

pytestmark = pytest.mark.slow


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_2x2_grid_with_two_seeds_runs_each_stage_once_per_distinct_input(
    smoke_run: SmokeRun, tmp_path: Path
) -> None:
    sets = smoke_run.sets(**{
        "run.output_dir": tmp_path, "run.seeds": "[0, 1]",
        "grid.score.alpha": "[0.0, 2.0]", "grid.mining.top_fraction": "[0.15, 0.2]",
    })  # fmt: skip
    code, out = run_cli("run", str(SMOKE_JOB), *sets)
    assert code == 0, out
    job = tmp_path / "smoke"
    assert "grid summary: " in out and (job / "grid.md").is_file() and (job / "grid.html").is_file()
    computed: dict[str, int] = defaultdict(int)
    hashes: dict[str, set[str]] = defaultdict(set)
    folders = sorted(job.glob("*/seed-*"))
    assert len(folders) == 8
    for folder in folders:
        for stage in STAGE_NAMES:
            manifest = read_json(folder / stage / "manifest.json")
            hashes[stage].add(manifest["hash"])
            computed[stage] += "reused_from" not in manifest
    # once per distinct input: as many runs as distinct hashes, and these many of them
    assert computed == {s: len(hashes[s]) for s in STAGE_NAMES}
    assert computed == {"corpus": 1, "embed-text": 2, "mine": 4, "filter": 4, "embed-images": 2,
                        "score": 8, "report": 8}  # fmt: skip
    summary = read_json(job / "grid.json")
    assert summary["stage_runs"]["mine"] == {"ran": 4, "reused": 4}
    for point in summary["points"]:
        for i, seed in enumerate(point["seeds"]):
            own = read_json(job / point["name"] / f"seed-{seed}" / "report" / "metrics.json")
            for row, entry in own["rows"].items():
                for dataset, values in entry["datasets"].items():
                    for metric, value in values.items():
                        assert point["metrics"][row][dataset][metric]["per_seed"][i] == value
    # alpha reaches NegRefine's score and no other (the tiny model's S_MM is near constant: the
    # metrics may not move)
    low, high = (
        read_parquet(job / f"alpha-{a}_top_fraction-0.15" / "seed-0" / "score" / "scores.parquet")
        for a in ("0.0", "2.0")
    )
    assert low.column("neglabel").equals(high.column("neglabel"))
    assert not low.column("negrefine[wordnet]").equals(high.column("negrefine[wordnet]"))
    before = _files(job)
    code, again = run_cli("run", str(SMOKE_JOB), *sets)
    assert code == 0, again
    stage_lines = [
        line for line in again.splitlines() if line.startswith(tuple(f"{s}: " for s in STAGE_NAMES))
    ]
    assert len(stage_lines) == 8 * len(STAGE_NAMES)
    assert all("up to date" in line for line in stage_lines), again
    assert _files(job) == before


def test_a_backbone_grid_caches_embeddings_per_model(smoke_run: SmokeRun, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(smoke_run.cache, cache)  # nr-tiny-vit's embeddings are there, nr-tiny-vit-2l's not
    small = {
        "run.cache_dir": cache, "mining.methods": '["neglabel", "negrefine"]',
        "score.methods": '["mcm", "neglabel", "negrefine"]', "grid.mode": "zip",
        "grid.model.arch": '["nr-tiny-vit", "nr-tiny-vit-2l"]', "grid.model.pretrained": '["none", "none"]',
    }  # fmt: skip

    def run(output: Path) -> dict[str, list[str]]:
        code, out = run_cli("run", str(SMOKE_JOB), *smoke_run.sets(**{**small, "run.output_dir": output}))
        assert code == 0, out
        points = out.split("== grid point ")[1:]
        return {p.split(":")[0]: p.splitlines() for p in points}

    first = run(tmp_path / "first")
    tiny, two = first["arch-nr-tiny-vit_pretrained-none"], first["arch-nr-tiny-vit-2l_pretrained-none"]
    assert any(line.startswith("corpus: reused from") for line in two)
    for stage in ("embed-text", "embed-images"):  # their own model: computed at each point
        assert any(line.startswith(f"{stage}: ") and "reused" not in line for line in two)
    images = [next(line for line in lines if line.startswith("embed-images: ")) for lines in (tiny, two)]
    assert "51 images" in images[0] and "51 from cache" in images[0] and "from cache" not in images[1]
    # new run folders, the same cache: both models' embeddings are there, neither overwrote the other
    second = run(tmp_path / "second")
    for lines in second.values():
        assert "51 from cache" in next(line for line in lines if line.startswith("embed-images: "))
        assert "(0 texts through CLIP" in next(line for line in lines if line.startswith("embed-text: "))
    summary = read_json(tmp_path / "second" / "smoke" / "grid.json")
    assert [p["values"]["model.arch"] for p in summary["points"]] == ["nr-tiny-vit", "nr-tiny-vit-2l"]
    assert (tmp_path / "second" / "smoke" / "plots" / "line_model.arch_model.pretrained.png").is_file()


def test_points_at_once_share_stages_and_give_the_same_scores(smoke_run: SmokeRun, tmp_path: Path) -> None:
    sets = smoke_run.sets(**{
        "run.output_dir": tmp_path, "grid.parallel": 2,
        "grid.score.alpha": "[0.0, 2.0]", "grid.mining.top_fraction": "[0.15, 0.2]",
    })  # fmt: skip
    code, out = run_cli("run", str(SMOKE_JOB), *sets)
    assert code == 0, out
    job = tmp_path / "smoke"
    assert "alpha-2.0_top_fraction-0.2: score: " in out  # each line names its point
    computed: dict[str, int] = defaultdict(int)
    hashes: dict[str, set[str]] = defaultdict(set)
    for folder in sorted(p for p in job.iterdir() if p.is_dir() and p.name != "plots"):
        for stage in STAGE_NAMES:
            manifest = read_json(folder / stage / "manifest.json")
            hashes[stage].add(manifest["hash"])
            computed[stage] += "reused_from" not in manifest
    assert computed == {s: len(hashes[s]) for s in STAGE_NAMES}
    assert (computed["corpus"], computed["mine"], computed["score"]) == (1, 2, 4)
    # the job's own settings (alpha 2, top_fraction 0.15) give the session run's scores
    point = read_parquet(job / "alpha-2.0_top_fraction-0.15" / "score" / "scores.parquet")
    assert point.equals(read_parquet(smoke_run.run_dir / "score" / "scores.parquet"))
