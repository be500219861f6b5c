"""What a grid costs against one run: the smoke job once, then a 4-point grid over score.alpha, each
from an empty cache and run folder, through the CLI (each its own process and local Ray), so both pay
the same start-up and the same cold caches. The target: grid <= 1.3 x one run + 4 x (score + report),
the last taken from the single run's manifests.

  python jobs/bench/grid_cost.py --work /tmp/grid-cost --out grid_cost.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ALPHAS = "[0.0, 1.0, 2.0, 4.0]"


def _run(work: Path, name: str, *extra: str) -> float:
    images = work / "images"
    sets = {
        "run.name": name,
        "run.output_dir": work / "runs",
        "run.cache_dir": work / f"cache-{name}",
        "datasets.demo-id.root": images / "id",
        "datasets.demo-ood.root": images / "ood",
        "datasets.demo-prototype.root": images / "prototype",
    }
    args = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "negrefine_ray", "run", str(REPO / "jobs" / "smoke.toml"), *args, *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "negrefine_ray", "demo-images", str(args.work / "images")], check=True
    )
    one = _run(args.work, "one")
    grid = _run(args.work, "grid", "--set", f"grid.score.alpha={ALPHAS}")
    stage = {
        s: json.loads((args.work / "runs" / "one" / s / "manifest.json").read_text())["seconds"]
        for s in ("score", "report")
    }
    budget = 1.3 * one + 4 * (stage["score"] + stage["report"])
    figures = {
        "one_run_s": round(one, 1), "grid_4_points_s": round(grid, 1), "score_s": stage["score"],
        "report_s": stage["report"], "budget_s": round(budget, 1), "grid_over_one_run": round(grid / one, 2),
        "within_budget": grid <= budget,
    }  # fmt: skip
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
