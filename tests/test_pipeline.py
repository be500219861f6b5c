"""The pipeline through the CLI on the smoke job: a second run does no work and changes nothing,
--force recomputes, bad configs stop before any work, unbuilt stages never pretend to run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import smoke_fingerprint
from typer.testing import CliRunner

from negrefine_ray.artifacts import read_json, read_parquet
from negrefine_ray.cli import app

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "jobs" / "smoke.toml")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_job_runs_then_resumes_without_work(ray_session: Any, tmp_path: Path, cache_dir: Path) -> None:
    code, out = _run("demo-images", str(tmp_path / "images"))
    assert code == 0, out
    sets = ["--set", f"run.output_dir={tmp_path}", "--set", f"run.cache_dir={cache_dir}",
            "--set", "corpus.max_words_per_lexname=40",
            "--set", f"datasets.demo-id.root={tmp_path / 'images' / 'id'}",
            "--set", f"datasets.demo-ood.root={tmp_path / 'images' / 'ood'}",
            "--set", f"datasets.demo-prototype.root={tmp_path / 'images' / 'prototype'}"]  # fmt: skip
    code, out = _run("run", SMOKE, *sets)
    assert code == 0, out
    for stage in (
        "corpus: 1,0",
        "mine: ",
        "filter: wordnet: ",
        "embed-images: 1,049 images",
        "score: 48 images",
    ):
        assert stage in out, out
    # The golden fingerprint: any unintended change to the smoke job's results fails here.
    assert smoke_fingerprint.check(tmp_path / "smoke") == []
    report = (tmp_path / "smoke" / "report" / "report.md").read_text()
    assert report.startswith("**Random-initialised CLIP: these numbers are meaningless.**")
    run_dir = tmp_path / "smoke"
    corpus = read_parquet(run_dir / "corpus" / "corpus.parquet")
    assert (
        corpus.num_rows
        == read_json(run_dir / "corpus" / "manifest.json")["artifacts"]["corpus.parquet"]["rows"]
    )
    assert set(corpus.column("lexname").to_pylist()) >= {"noun.plant", "adj.all"}

    before = _snapshot(run_dir)
    code, out = _run("run", SMOKE, *sets)
    assert code == 0 and out.count("up to date, skipped") == 7
    assert _snapshot(run_dir) == before  # same bytes, same modification times

    code, out = _run("corpus", str(run_dir), "--force")  # a stage against the run folder
    assert code == 0 and "corpus: " in out and "skipped" not in out
    assert read_parquet(run_dir / "corpus" / "corpus.parquet").equals(corpus)
    code, out = _run("mine", str(run_dir))  # same corpus content, so the same hash downstream
    assert code == 0 and "mine: up to date, skipped" in out


def test_config_errors_stop_before_any_work(tmp_path: Path) -> None:
    code, out = _run("run", SMOKE, "--set", f"run.output_dir={tmp_path}", "--set", "model.precision=fp64")
    assert code == 2 and "model.precision = 'fp64' is not one of" in out
    assert not any(tmp_path.iterdir())


@pytest.mark.ray
@pytest.mark.slow
def test_a_multi_seed_job_reruns_only_what_depends_on_the_seed(
    ray_session: Any, tmp_path: Path, cache_dir: Path
) -> None:
    code, out = _run("demo-images", str(tmp_path / "images"))
    sets = ["--set", f"run.output_dir={tmp_path}", "--set", f"run.cache_dir={cache_dir}",
            "--set", "corpus.max_words_per_lexname=40", "--set", "run.seeds=[0, 1]",
            "--set", f"datasets.demo-id.root={tmp_path / 'images' / 'id'}",
            "--set", f"datasets.demo-ood.root={tmp_path / 'images' / 'ood'}",
            "--set", f"datasets.demo-prototype.root={tmp_path / 'images' / 'prototype'}"]  # fmt: skip
    code, out = _run("run", SMOKE, *sets)
    assert code == 0, out
    job = tmp_path / "smoke"
    assert "mean ± std over seeds" in out and (job / "report-seeds.md").is_file()
    corpora = [read_parquet(job / f"seed-{s}" / "corpus" / "corpus.parquet") for s in (0, 1)]
    assert corpora[0].equals(corpora[1])
    phrases = [
        read_parquet(job / f"seed-{s}" / "embed-text" / "candidates.parquet").column("phrase") for s in (0, 1)
    ]
    assert not phrases[0].equals(phrases[1])  # CSP's suffix draws follow the seed
    assert "| NegLabel | " in (job / "report-seeds.md").read_text()
