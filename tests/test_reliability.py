"""Reproductions of the adversarial run's findings (issue 9): changed images must not give stale
results, config errors stop the job before any work, names never escape the run folder, a set whose
every image failed stays visible in the report, and a fresh rerun writes the same bytes."""

from __future__ import annotations

import errno
import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import SmokeRun
from typer.testing import CliRunner

from negrefine_ray import pipeline
from negrefine_ray.cli import app
from negrefine_ray.clip.model import check_checkpoint
from negrefine_ray.config import build_config, load_config
from negrefine_ray.data.demo_data import make_demo_images
from negrefine_ray.errors import ConfigError, NegRefineError
from negrefine_ray.report.page import MEASURED
from negrefine_ray.runfolder.atomic import embedding_matrix, read_json, read_parquet
from negrefine_ray.stages.report import MEASURED_HEADING, evaluate, markdown_tables

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "jobs" / "smoke.toml")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _sets(tmp: Path, images: Path, cache: Path | None = None) -> list[str]:
    pairs = {
        "run.output_dir": tmp / "runs",
        "run.cache_dir": cache or tmp / "cache",
        "corpus.max_words_per_lexname": 40,
        "datasets.demo-id.root": images / "id",
        "datasets.demo-ood.root": images / "ood",
        "datasets.demo-prototype.root": images / "prototype",
    }
    return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]


# 1. Changed images -------------------------------------------------------------------------------


@pytest.mark.ray
def test_added_replaced_and_touched_images_make_embed_images_rerun(ray_session: Any, tmp_path: Path) -> None:
    images = make_demo_images(tmp_path / "x", per_class=3, n_ood=10, prototype_classes=0)
    # The smoke job without InterNeg: the test is about the scored rows, and each image pass starts an
    # actor pool (~6 s), so the prototypes' pass is left out (test_image_embed covers every variant).
    job = tomllib.loads(Path(SMOKE).read_text())
    job["datasets"] = [d for d in job["datasets"] if d["role"] != "prototype"]
    # AdaNeg is left out too (its OpenOOD crops would be a third image pass of the same kind).
    job["mining"]["methods"] = [m for m in job["mining"]["methods"] if m not in ("interneg", "adaneg")]
    job["score"]["methods"] = [m for m in job["score"]["methods"] if m not in ("interneg", "adaneg")]
    del job["interneg"], job["adaneg"]
    sets = [s for s in _sets(tmp_path, images) if s != "--set" and "demo-prototype" not in s]
    config = build_config(job, sets)
    images_parquet = config.run_dir / "embed-images" / "images.parquet"

    def embed() -> str:
        [result] = pipeline.run_pipeline(config, only=["embed-images"])
        return result.status

    def scored_rows() -> pa.Table:
        return read_parquet(images_parquet)

    assert embed() == "ran" and scored_rows().num_rows == 20
    assert embed() == "skipped"
    before = scored_rows()

    shutil.copy(images / "ood" / "ood_001.jpg", images / "ood" / "ood_new.jpg")  # added
    shutil.copy(images / "id" / "tench" / "tench_001.jpg", images / "id" / "tench" / "tench_000.jpg")
    assert embed() == "ran"
    after = scored_rows()
    assert after.num_rows == 21 and "ood_new.jpg" in after.column("path").to_pylist()
    columns = [c for c in after.column_names if c.startswith("embedding@")]
    # the methods' preprocessings, and GL-MCM's local score of the torchvision crops (one float)
    assert columns == ["embedding@clip", "embedding@torchvision", "embedding@local-mcm:torchvision"]
    for column in columns:
        emb = {p: e for p, e in zip(after["path"].to_pylist(), after[column].to_pylist(), strict=True)}
        # The replaced image now has tench_001's content (equal up to batch-dependent float rounding).
        np.testing.assert_allclose(emb["tench/tench_000.jpg"], emb["tench/tench_001.jpg"], atol=1e-5)
        old = {p: e for p, e in zip(before["path"].to_pylist(), before[column].to_pylist(), strict=True)}
        changed = 1e-3 if len(old["tench/tench_000.jpg"]) > 1 else 1e-5  # L-MCM is ~1e-3 at random weights
        assert not np.allclose(emb["tench/tench_000.jpg"], old["tench/tench_000.jpg"], atol=changed)
    manifest = read_json(config.run_dir / "embed-images" / "manifest.json")
    assert manifest["stats"]["embedded"] == 2  # only the new and the replaced image went through CLIP

    (images / "id" / "goldfish" / "goldfish_000.jpg").touch()  # same bytes, new mtime
    assert embed() == "ran"
    assert read_json(config.run_dir / "embed-images" / "manifest.json")["stats"]["embedded"] == 1
    touched = scored_rows()
    assert touched.drop_columns(columns).equals(after.drop_columns(columns))
    for column in columns:
        np.testing.assert_allclose(
            embedding_matrix(touched[column], nulls_as_zero=True),
            embedding_matrix(after[column], nulls_as_zero=True),
            atol=1e-5,
        )


# 3. Config errors before any work ----------------------------------------------------------------


def _garbage_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff" * 8 + b"not a header")
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "datasets.demo-ood.root={tmp}/nowhere",
            "datasets.demo-ood.root = '{tmp}/nowhere' is not an existing",
        ),
        ("images.preset=imagenet_negrefin", "Did you mean 'imagenet_negrefine'?"),
        ('score.methods=["mcm", "neglable"]', "score.methods[1] = 'neglable' is not allowed. Did you mean"),
        (
            'mining.methods=["neglabel", "cps"]',
            "mining.methods[1] = 'cps' is not allowed. Did you mean 'csp'",
        ),
        ('mining.methods=["neglabel"]', "score.methods[4] = 'csp' needs negatives, but mining.methods"),
        (
            "model.arch=ViT-B-61",
            "Unknown CLIP architecture (model.arch) 'ViT-B-61'. Did you mean 'ViT-B-16'?",
        ),
        ("model.pretrained={tmp}/model.safetensors", "model.safetensors (model.pretrained) is unreadable"),
        ("images.max_failed_fraction=nan", "images.max_failed_fraction = nan is not a finite number"),
        ("mining.top_fraction=nan", "mining.top_fraction = nan is not a finite number"),
        ("score.alpha=inf", "score.alpha = inf is not a finite number"),
        ('filter.judges=["wordnte"]', "filter.judges[0] = 'wordnte' is not a judge of this job"),
        ("run.name=../escape", "run.name = '../escape' is not a plain name"),
        ("run.output_dir=/proc/negrefine-test", "run.output_dir: cannot write in /proc/negrefine-test"),
        # issue 21, items 9, 10 and 16: refused before any stage, not after corpus or embed-text
        ("run.cache_dir=/proc/negrefine-test", "run.cache_dir: cannot write in /proc/negrefine-test"),
        ("mining.dnm_preset=bogus", "DNM has no hyper-parameters for 'bogus' (mining.dnm_preset"),
        ("model.init_seed=99999999999999999999999", "model.init_seed = 99999999999999999999999 is above"),
        pytest.param(
            "model.device=cuda",
            "model.device = 'cuda' but the job runs on a local Ray and this machine has no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU"),
        ),
        ("ray.address=garbage:1", "Cannot reach the Ray cluster at garbage:1"),
        ("ray.address=no-port", "Ray address 'no-port' (ray.address, --address or RAY_ADDRESS) is not"),
    ],
)
def test_config_errors_stop_the_job_before_any_stage(tmp_path: Path, override: str, message: str) -> None:
    images = make_demo_images(tmp_path / "x", per_class=1, n_ood=1, prototype_classes=1)
    _garbage_checkpoint(tmp_path)
    code, out = _run("run", SMOKE, *_sets(tmp_path, images), "--set", override.format(tmp=tmp_path))
    assert code == 2, out
    assert message.format(tmp=tmp_path) in " ".join(out.split()), out
    assert not (tmp_path / "runs").exists()  # not even the run folder


def test_judge_and_dataset_names_cannot_leave_the_run_folder(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[filter]\njudges = ["../../../x"]\n[[judges]]\nname = "../../../x"\nbackend = "wordnet"\n'
    )
    with pytest.raises(
        ConfigError, match=r"judges\.\.\./\.\./\.\./x\.name = '\.\./\.\./\.\./x' is not a plain"
    ):
        load_config(job)
    job.write_text('[[datasets]]\nname = "a/b"\nrole = "ood"\nroot = "."\nformat = "files"\n')
    with pytest.raises(ConfigError, match="is not a plain name"):
        load_config(job)
    # issue 21, item 11: a 250-character name failed in the report stage (File name too long)
    job.write_text(f'[[datasets]]\nname = "{"n" * 250}"\nrole = "ood"\nroot = "."\nformat = "files"\n')
    with pytest.raises(ConfigError, match="has 250 characters; it becomes part of folder and file names"):
        load_config(job)
    job.write_text(f'[[datasets]]\nname = "{"n" * 64}"\nrole = "ood"\nroot = "."\nformat = "files"\n')
    assert load_config(job).datasets[0].name == "n" * 64


def test_a_one_element_seed_list_runs_that_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda config, **kw: seen.append(config) or [])
    config = load_config(SMOKE, [f"run.output_dir={tmp_path}", "run.seeds=[5]"])
    pipeline.run_job(config)
    [ran] = seen
    assert ran.run.seed == 5 and ran.run.seeds == () and ran.run_dir == config.run_dir


def test_garbage_checkpoints_give_a_message_naming_the_file(tmp_path: Path) -> None:
    for name, data in [
        ("a.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"),
        ("b.safetensors", b"\xff" * 20),
        ("c.pt", b"PK\x03\x04truncated zip"),
        ("d.bin", b"hello, not a checkpoint"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(
            NegRefineError, match=re.escape(f"Checkpoint {tmp_path / name} (model.pretrained)")
        ):
            check_checkpoint(tmp_path / name)


def test_real_checkpoints_pass_the_header_check(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "m.safetensors"))
    torch.save({"w": torch.zeros(3)}, tmp_path / "m.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    for name in ("m.safetensors", "m.pt", "old.pt"):
        check_checkpoint(tmp_path / name)


def test_an_unwritable_output_dir_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    from negrefine_ray.runfolder.folder import run_folder_lock

    lock = run_folder_lock(Path("/proc/negrefine-x"))
    with pytest.raises(NegRefineError, match="Cannot create the run folder /proc/negrefine-x"), lock:
        pass


def test_an_unwritable_local_dir_names_run_local_dir(tmp_path: Path) -> None:
    """Issue 21, item 17: an object-store run's working copy lives in run.local_dir; the error named
    run.output_dir. Checked before any stage, and by the lock for a run started without preflight."""
    from negrefine_ray.preflight import preflight
    from negrefine_ray.runfolder.folder import run_folder_lock
    from negrefine_ray.runfolder.mirror import RemoteRun
    from negrefine_ray.runfolder.storage import ObjectPath

    overrides = ["run.output_dir=s3://bucket/runs?endpoint_override=127.0.0.1:9&scheme=http",
                 f"run.cache_dir={tmp_path / 'cache'}", "run.local_dir=/proc/negrefine-x"]  # fmt: skip
    config = load_config(SMOKE, overrides)
    with pytest.raises(ConfigError, match=r"run\.local_dir: cannot write in /proc/negrefine-x"):
        preflight(config, ["report"])
    remote = RemoteRun(ObjectPath.from_uri(config.run_location), Path("/proc/negrefine-x/run"))
    lock = run_folder_lock(Path("/proc/negrefine-x/run"), remote)
    with pytest.raises(NegRefineError, match=r"set run\.local_dir to a folder you can write to"), lock:
        pass


@pytest.mark.ray
def test_a_judge_that_keeps_nothing_stops_the_filter_stage_naming_it(
    smoke_run: SmokeRun, tmp_path: Path
) -> None:
    """Issue 21, item 7: it broke the score stage (a (0, D) matrix) after every other stage. A fake
    judge with threshold 0 says yes to every question, so it removes every label."""
    job = tmp_path / "job.toml"
    judge = '\n[[judges]]\nname = "yes-to-all"\nbackend = "fake"\nthreshold = 0.0\n'
    job.write_text(Path(SMOKE).read_text() + judge)
    sets = [s for s in smoke_run.sets(**{"run.output_dir": tmp_path / "runs"}) if s != "--set"]
    config = load_config(job, [*sets, 'filter.judges=["yes-to-all"]'])
    config.run_dir.mkdir(parents=True)
    for stage in ("corpus", "embed-text", "mine"):  # the session run's text side
        shutil.copytree(smoke_run.run_dir / stage, config.run_dir / stage)
    with pytest.raises(NegRefineError, match=r"judge 'yes-to-all' kept none of its .* labels .* leave"):
        pipeline.run_pipeline(config, only=["filter"])
    assert not (config.run_dir / "filter").exists()


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        ({"backend": "transformers"}, "judges.llm.model: An LLM judge needs `model`"),
        ({"backend": "transformers", "model": "/nonexistent/model"}, "llm.model = '/nonexistent/model' is"),
        ({"backend": "vllm", "model": "~/nowhere/smol.gguf"}, "is not an existing folder or file"),
        ({"backend": "replay"}, "judges.llm (replay) needs log_noun and/or log_adj"),
        ({"backend": "replay", "log_noun": "/nonexistent/noun.txt"}, "judges.llm.log_noun = '/nonexistent"),
    ],
)
def test_judge_settings_are_checked_before_any_stage(tmp_path: Path, judge: dict, message: str) -> None:
    """Issue 21, item 8: they failed after the mine stage, with an ActorDiedError traceback."""
    from negrefine_ray.preflight import preflight

    config = build_config({
        "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")},
        "mining": {"methods": ["negrefine"]}, "score": {"methods": ["negrefine"]},
        "filter": {"judges": ["llm"]}, "judges": [{"name": "llm", **judge}],
    })  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(message)):
        preflight(config, ["filter"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("error", "sets", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "{tmp}/runs/smoke/score/scores.parquet"), [],
         "Storage failed: no space left writing {tmp}/runs/smoke/score/scores.parquet; "),
        (OSError(errno.EROFS, "Read-only file system", "{tmp}/runs/smoke/.staging"), [],
         "Storage failed: read-only file system writing {tmp}/runs/smoke/.staging; "),
        (OSError("When uploading part: AWS Error NETWORK_CONNECTION"),
         ["run.output_dir=s3://b/runs?endpoint_override=127.0.0.1:9&scheme=http"],
         "Storage failed: the object store failed (When uploading part: AWS Error NETWORK_CONNECTION)."),
    ],
)  # fmt: skip
def test_storage_failing_mid_run_is_a_message_that_says_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, sets: list[str], message: str
) -> None:
    """Issue 21, item 13: a full disk, a run folder turned read-only and a store dropping out gave raw
    OSError tracebacks (nothing was lost: the resume is byte-identical, test_faults)."""
    from negrefine_ray import cli

    if error.filename:
        error.filename = error.filename.format(tmp=tmp_path)
    monkeypatch.setattr(cli, "run_job", lambda *a, **k: (_ for _ in ()).throw(error))
    overrides = [f"run.output_dir={tmp_path / 'runs'}", *sets]
    code, out = _run("run", SMOKE, *(a for o in overrides for a in ("--set", o)))
    assert code == 2, out
    text = " ".join(out.split())
    assert message.format(tmp=tmp_path) in text and "run the same command again to resume" in text
    if error.errno is not None:
        assert "GB free on" in text
    monkeypatch.setattr(cli, "run_job", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EACCES, "x")))
    with pytest.raises(PermissionError):  # any other OSError is not dressed up
        CliRunner().invoke(app, ["run", SMOKE], catch_exceptions=False)


# 5. A dataset whose every image failed -------------------------------------------------------------


def test_an_ood_set_without_a_readable_image_is_reported_as_failed() -> None:
    rng = np.random.default_rng(0)
    dataset = ["id"] * 6 + ["good"] * 4 + ["broken"] * 3
    status = ["ok"] * 10 + ["corrupt"] * 3
    values = rng.normal(size=13)
    values[10:] = np.nan
    table = pa.table(
        {
            "dataset": dataset,
            "role": ["id"] * 6 + ["ood"] * 7,
            "status": status,
            "neglabel": values,
        }
    )
    catalogue = [{"name": "neglabel", "row": "neglabel", "method": "neglabel", "judge": None,
                  "s_mm": False, "ood_dataset": None}]  # fmt: skip
    result = evaluate(table, catalogue)
    assert result["ood_datasets"] == ["good"] and result["failed_ood_datasets"] == {"broken": 3}
    assert result["rows"]["neglabel"]["average"] == result["rows"]["neglabel"]["datasets"]["good"]
    text = "\n".join(markdown_tables(result))
    assert "| Method | Images | good | broken | Average of 1 |" in text
    assert "| failed |" in text and "broken (0 of 3 images scored)" in text
    assert "The average covers good only." in text


# 7. Byte-identical reruns ---------------------------------------------------------------------------


def _artifacts(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run folder, timings aside: manifests (times, summaries) are left out and the
    report's measured times (its last section) are blanked."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.name in ("manifest.json", ".lock"):
            continue
        data = path.read_bytes()
        if path.name == "report.md":
            heading = re.escape(f"### {MEASURED_HEADING}".encode())
            data = re.sub(heading + rb".*?<details>", b"", data, flags=re.S)
        if path.name == "report.html":
            start, end = (re.escape(m.encode()) for m in MEASURED)
            data = re.sub(start + rb".*?" + end, b"", data, flags=re.S)
        out[str(path.relative_to(run_dir))] = data
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_the_smoke_job_rerun_from_scratch_writes_the_same_bytes(smoke_run: SmokeRun, tmp_path: Path) -> None:
    """The session's smoke run against a second run from scratch at the same paths (no run folder, no
    cache): its work folder is moved aside for the second run and put back afterwards."""
    first = _artifacts(smoke_run.run_dir)
    aside = tmp_path / "first"
    smoke_run.work.rename(aside)
    try:
        code, out = smoke_run.run()
        assert code == 0, out
        second = _artifacts(smoke_run.run_dir)
    finally:
        if smoke_run.work.exists():
            shutil.rmtree(smoke_run.work)
        aside.rename(smoke_run.work)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    failures = read_parquet(smoke_run.run_dir / "embed-images" / "failures.parquet")
    assert sorted(failures.column("status").to_pylist()) == ["corrupt", "empty", "not-an-image"]
    assert not any(" at 0x" in d for d in failures.column("detail").to_pylist())
    metrics = json.loads(first["report/metrics.json"])
    assert metrics["failed_ood_datasets"] == {}
