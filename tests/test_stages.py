"""Run-folder stages: resumption, invalidation, atomic hand-over, and recovery from killed runs.

These tests use small stages defined here (the real stages are exercised in test_pipeline.py), so
that they can fail, be killed or write partial output on purpose.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from negrefine_ray.config import JobConfig, build_config
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.atomic import read_json
from negrefine_ray.runfolder.folder import (
    MANIFEST,
    STAGING,
    Stage,
    StageContext,
    StageOutput,
    run_folder_lock,
    run_stage,
)

CALLS: list[str] = []


def _write_words(ctx: StageContext) -> StageOutput:
    CALLS.append("words")
    n = ctx.config.run.seed + 3
    (ctx.out_dir / "words.txt").write_text("\n".join(f"w{i}" for i in range(n)))
    return StageOutput(("words.txt",), f"{n} words", {"n": n})


def _count(ctx: StageContext) -> StageOutput:
    CALLS.append("count")
    text = ctx.input("words", "words.txt").read_text()
    (ctx.out_dir / "count.txt").write_text(str(len(text.split())))
    return StageOutput(("count.txt",), "counted")


WORDS = Stage("words", "toy", (), 1, lambda c: {"seed": c.run.seed}, _write_words)
COUNT = Stage("count", "toy", ("words",), 1, lambda c: {}, _count)


def _config(tmp_path: Path, seed: int = 0) -> JobConfig:
    return build_config({"run": {"output_dir": str(tmp_path), "name": "r", "seed": seed}})


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_second_run_does_no_work_and_changes_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    CALLS.clear()
    assert [run_stage(s, cfg).status for s in (WORDS, COUNT)] == ["ran", "ran"]
    before = _snapshot(cfg.run_dir)
    assert [run_stage(s, cfg).status for s in (WORDS, COUNT)] == ["skipped", "skipped"]
    assert CALLS == ["words", "count"]
    assert _snapshot(cfg.run_dir) == before


def test_manifest_records_hash_versions_rows_and_time(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run_stage(WORDS, cfg)
    manifest = read_json(cfg.run_dir / "words" / MANIFEST)
    assert manifest["stage"] == "words" and len(manifest["hash"]) == 64
    assert manifest["settings"] == {"seed": 0} and manifest["stats"] == {"n": 3}
    assert {"python", "negrefine_ray", "pyarrow"} <= set(manifest["versions"])
    assert manifest["artifacts"]["words.txt"]["bytes"] > 0 and manifest["seconds"] >= 0


def test_changed_setting_reruns_the_stage_and_its_dependents(tmp_path: Path) -> None:
    run_stage(WORDS, _config(tmp_path))
    run_stage(COUNT, _config(tmp_path))
    changed = _config(tmp_path, seed=2)
    assert run_stage(WORDS, changed).status == "ran"
    assert run_stage(COUNT, changed).status == "ran"  # its input hash changed
    assert (changed.run_dir / "count" / "count.txt").read_text() == "5"


def test_force_recomputes(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run_stage(WORDS, cfg)
    assert run_stage(WORDS, cfg, force=True).status == "ran"


def test_tampered_artifact_is_not_trusted(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run_stage(WORDS, cfg)
    path = cfg.run_dir / "words" / "words.txt"
    path.write_text("w0\nwX\nw2")  # same size, other content
    assert run_stage(WORDS, cfg).status == "ran"
    assert path.read_text() == "w0\nw1\nw2"


def test_failing_stage_leaves_nothing_trusted(tmp_path: Path) -> None:
    cfg = _config(tmp_path)

    def explode(ctx: StageContext) -> StageOutput:
        (ctx.out_dir / "words.txt").write_text("half")
        raise RuntimeError("boom")

    broken = Stage("words", "toy", (), 1, WORDS.settings, explode)
    with pytest.raises(RuntimeError):
        run_stage(broken, cfg)
    assert not (cfg.run_dir / "words").exists()
    assert run_stage(WORDS, cfg).status == "ran"


def test_downstream_needs_upstream(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="needs the output of stage 'words'"):
        run_stage(COUNT, _config(tmp_path))


def test_killed_process_leaves_only_debris_that_the_next_run_clears(tmp_path: Path) -> None:
    script = tmp_path / "kill.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal
            from negrefine_ray.config import build_config
            from negrefine_ray.runfolder.folder import Stage, StageOutput, run_stage
            def fn(ctx):
                (ctx.out_dir / "words.txt").write_text("partial")
                os.kill(os.getpid(), signal.SIGKILL)
            cfg = build_config({{"run": {{"output_dir": {str(tmp_path)!r}, "name": "r"}}}})
            run_stage(Stage("words", "toy", (), 1, lambda c: {{"seed": c.run.seed}}, fn), cfg)
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], check=False)
    assert proc.returncode == -9
    cfg = _config(tmp_path)
    assert not (cfg.run_dir / "words").exists()
    assert any((cfg.run_dir / STAGING).iterdir())
    with run_folder_lock(cfg.run_dir):
        assert not (cfg.run_dir / STAGING).exists()
        assert run_stage(WORDS, cfg).status == "ran"


def test_run_folder_lock_is_exclusive(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with run_folder_lock(run_dir):
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path\n"
                "from negrefine_ray.runfolder.folder import run_folder_lock\n"
                "try:\n    run_folder_lock(Path(sys.argv[1])).__enter__()\n"
                "except Exception as e:\n    print(e); sys.exit(3)",
                str(run_dir),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    assert probe.returncode == 3 and "in use by another negrefine-ray process" in probe.stdout


def test_a_stage_without_code_never_pretends_to_run(tmp_path: Path) -> None:
    planned = Stage("later", "toy", (), 0, lambda c: {}, None, planned_in="a later release")
    with pytest.raises(StageError, match=r"not implemented yet \(a later release\)"):
        run_stage(planned, _config(tmp_path))
    assert not (tmp_path / "r" / "later").exists()
