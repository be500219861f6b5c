"""The pipeline through the CLI on the smoke job (the session's `smoke_run`): its results equal the
golden fingerprint, no score column is constant, a second run does no work and changes nothing,
stage commands work on the run folder, bad configs stop before any work, several seeds rerun only
what depends on the seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import smoke_fingerprint
from conftest import SMOKE_JOB, SmokeRun, run_cli

from negrefine_ray.runfolder.atomic import read_json, read_parquet

ROW_COLUMNS = ("dataset", "role", "path", "label", "status")


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_smoke_job_runs_every_stage_and_matches_the_golden_fingerprint(smoke_run: SmokeRun) -> None:
    out = smoke_run.output
    for stage in (
        "corpus: 1,0",
        "mine: ",
        "filter: wordnet: ",
        "embed-images: 1,051 images",
        "score: 48 images (3 excluded)",
    ):
        assert stage in out, out
    # The golden fingerprint: any unintended change to the smoke job's results fails here.
    assert smoke_fingerprint.check(smoke_run.run_dir) == []
    report = (smoke_run.run_dir / "report" / "report.md").read_text()
    assert report.startswith("**Random-initialised CLIP: these numbers are meaningless.**")
    corpus = read_parquet(smoke_run.run_dir / "corpus" / "corpus.parquet")
    manifest = read_json(smoke_run.run_dir / "corpus" / "manifest.json")
    assert corpus.num_rows == manifest["artifacts"]["corpus.parquet"]["rows"]
    assert set(corpus.column("lexname").to_pylist()) >= {"noun.plant", "adj.all"}
    failures = read_parquet(smoke_run.run_dir / "embed-images" / "failures.parquet")
    assert sorted(failures.column("status").to_pylist()) == ["corrupt", "empty", "not-an-image"]


def test_no_score_column_of_the_smoke_run_is_constant(smoke_run: SmokeRun) -> None:
    """Every method's scores vary over the scored images, so no golden row checks a constant."""
    scores = read_parquet(smoke_run.run_dir / "score" / "scores.parquet")
    scored = scores.filter(pc.equal(scores.column("status"), "ok"))
    flags = {f["name"] for f in read_json(smoke_run.run_dir / "score" / "columns.json")["flags"]}
    columns = [c for c in scores.column_names if c not in ROW_COLUMNS and c not in flags]
    assert columns and scored.num_rows > 2 and flags  # flags (InterNeg's bank) are 0/1, not scores
    for name in columns:
        values = scored.column(name).to_numpy(zero_copy_only=False)
        assert np.isfinite(values).all(), name
        assert np.unique(values).size > 1, f"{name} is constant: {values[0]!r}"
    metrics = read_json(smoke_run.run_dir / "report" / "metrics.json")
    for row, entry in metrics["rows"].items():
        for dataset, values in entry["datasets"].items():
            # exactly 0.5 is what tied scores give (a varying column could, by chance: then look)
            assert values["auroc"] != 0.5, (row, dataset, values)


def test_the_smoke_run_makes_no_deprecated_ray_call_and_says_random_weights_once(smoke_run: SmokeRun) -> None:
    """Warnings were recorded while the smoke job ran (in this process: the driver's own calls).
    None is a RayDeprecationWarning raised from this package's code, and the random-weights notice is
    the driver's one line, not open_clip's from each process that builds the model."""
    package = str(Path(__file__).resolve().parents[1] / "negrefine_ray")
    ours = [w for w in smoke_run.warnings if w[0] == "RayDeprecationWarning" and w[1].startswith(package)]
    assert ours == []
    # the way the fixture records does catch Ray's deprecation, named by the file that called Ray
    import warnings

    import ray.data

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ray.data.range(1).map_batches(lambda b: b, scheduling_strategy="SPREAD")  # lazy: nothing runs
    assert [w.filename for w in caught if w.category.__name__ == "RayDeprecationWarning"] == [__file__]
    notices = [message for message in smoke_run.logs if "No pretrained weights" in message]
    assert len(notices) == 1 and "model.init_seed" in notices[0], notices


def test_a_second_run_does_no_work_and_changes_nothing(smoke_run: SmokeRun) -> None:
    before = _snapshot(smoke_run.run_dir)
    code, out = smoke_run.run()
    assert code == 0 and out.count("up to date, skipped") == 7, out
    assert _snapshot(smoke_run.run_dir) == before  # same bytes, same modification times


def test_stage_commands_work_on_the_run_folder(smoke_run: SmokeRun) -> None:
    run_dir = smoke_run.run_dir
    negatives = read_parquet(run_dir / "mine" / "negatives.parquet")
    code, out = run_cli("mine", str(run_dir), "--force")  # a stage against the run folder
    assert code == 0 and "mine: " in out and "skipped" not in out
    assert read_parquet(run_dir / "mine" / "negatives.parquet").equals(negatives)
    code, out = run_cli("filter", str(run_dir))  # same negatives, so the same hash downstream
    assert code == 0 and "filter: up to date, skipped" in out


def test_config_errors_stop_before_any_work(tmp_path: Path) -> None:
    code, out = run_cli(
        "run", str(SMOKE_JOB), "--set", f"run.output_dir={tmp_path}", "--set", "model.precision=fp64"
    )
    assert code == 2 and "model.precision = 'fp64' is not one of" in out
    assert not any(tmp_path.iterdir())


@pytest.mark.ray
@pytest.mark.slow
def test_a_multi_seed_job_reruns_only_what_depends_on_the_seed(smoke_run: SmokeRun, tmp_path: Path) -> None:
    # the session run's images and caches: embeddings that do not depend on the seed come from there
    sets = smoke_run.sets(**{"run.output_dir": tmp_path, "run.seeds": "[0, 1]"})
    code, out = run_cli("run", str(SMOKE_JOB), *sets)
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
    # seed 0 of the sweep is the session's run: the same results
    seed0 = read_parquet(job / "seed-0" / "score" / "scores.parquet")
    assert seed0.equals(read_parquet(smoke_run.run_dir / "score" / "scores.parquet"))
