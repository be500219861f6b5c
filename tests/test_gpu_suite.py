"""jobs/bench/gpu_suite.sh --dry-run (issue 15): every part of the GPU suite starts, parses its flags
and writes its JSON on CPU at tiny shapes, and the one table lists every figure with no part failed.
This is the suite's CI check (CI runs pytest), so a GPU loan is not spent on wiring errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = (
    "environment: imports + GPU",
    "image embedding fp16 vs fp32",
    "image embedding bf16 vs fp32",
    "text embedding fp16 vs fp32",
    "text embedding bf16 vs fp32",
    "CUDA grouping permutation = references' stream",
    "scores CUDA vs CPU (float64)",
    "scores CUDA vs CPU (float32)",
    "images end to end (decode+embed",
    "images end to end, per-method",
    "image tower, device-resident",
    "mining text: 71,392 candidates x 1 template",
    "text tower, texts/s",
    "NegRefine text workload",
    "image tower nr-tiny-vit, img/s without / with GL-MCM",
    "image tower with GL-MCM's local score / without",
    "score stage on the device",
    "score stage in numpy on the CPU",
    "score stage, device vs CPU columns",
    "NegFilter, tiny Qwen2, 73,037 questions projected",
)
DECODE = "GPU JPEG decode + crop (bench_gpu_decode.py)"  # when that script exists
CLEAN = {"ok", "ok (dry run)", "skipped (no CUDA)", "pass"}  # "pass": the GPU checks where CUDA exists


@pytest.mark.slow
def test_dry_run_runs_every_part_and_prints_one_table(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    done = subprocess.run(
        ["bash", "jobs/bench/gpu_suite.sh", "--dry-run", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    parts = summary["parts"]
    expected_parts = {"env", "checks", "score", "text", "filter", "images", "glmcm"}
    figures = FIGURES
    if (ROOT / "jobs/bench/bench_gpu_decode.py").exists():
        expected_parts.add("decode")
        figures = (*FIGURES, DECODE)
    assert expected_parts <= set(parts), parts
    assert {name: p["status"] for name, p in parts.items() if p["status"] != "ok"} == {}
    rows = {r["figure"]: r["result"] for r in summary["rows"]}
    for figure in figures:
        matching = [f for f in rows if f.startswith(figure)]
        assert matching, f"no row for {figure!r} in {list(rows)}"
        assert rows[matching[0]] in CLEAN, (matching[0], rows[matching[0]])
    assert all(result in CLEAN for result in rows.values()), rows
    table = done.stdout[done.stdout.index("| figure") :]
    assert all(figure in table for figure in rows), table
    for name in ("env", "score", "text", "filter", "images", "glmcm"):
        assert json.loads((out / f"{name}.json").read_text()), name
