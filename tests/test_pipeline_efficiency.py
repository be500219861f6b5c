"""jobs/bench/pipeline_efficiency.py --quick runs end to end (a tiny CLIP, the fake judge, its own
local Ray) and reports, per stage, positive capacities, a bound and an efficiency figure. Wiring only:
no timing is asserted (the figures of a quick run on a shared machine mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "bench" / "pipeline_efficiency.py"


@pytest.mark.slow  # its own Ray and three actor pools: ~1-2 min on 2 cores
@pytest.mark.cluster
def test_quick_run_reports_an_efficiency_per_stage(tmp_path: Path) -> None:
    out = tmp_path / "eff.json"
    # a separate process: the script starts (and stops) its own local Ray
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert set(report["stages"]) == {"images", "text", "filter"}
    for name, stage in report["stages"].items():
        capacities = [c["rate"] for c in stage["capacity"].values()]
        assert capacities and all(c > 0 for c in capacities), name
        assert stage["bound"] > 0 and stage["bound_rule"], name
        e2e = stage["end_to_end"]
        assert e2e["items"] > 0 and e2e["rate_overall"] > 0 and e2e["startup_s"] >= 0, name
        assert stage["efficiency"] > 0 and stage["efficiency_overall"] > 0, name
    assert set(report["stages"]["images"]["capacity"]) == {"decode", "encode"}
    assert report["stages"]["images"]["bound_name"] == "harmonic"  # CPU only: the parts share the cores
