"""The score stage's growth: time and peak memory of its math at 10k, 100k and 1M
images against 1,000 ID labels and 6,370 negatives (random embeddings, D = 512), with numpy (the
stage's code) and with torch on the CPU. Each size runs bench_score.py in its own process, so its
peak resident memory (the kernel's ru_maxrss of that process) is its own; the input embeddings alone
take N x 512 x 4 bytes, the rest is working memory, which the chunked scores keep bounded.

S_MM's distinct (ID, negative) pairs grow with the images (random embeddings share none), so the 1M
run times NegLabel and DNM only; torch runs up to 100k to stay inside the time limit on 2 cores.

  python jobs/bench/score_scaling.py --out score_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).with_name("bench_score.py")
PLAN = [  # (images, backend, methods): every method to 100k, NegLabel + DNM at every size
    (10_000, "numpy", "neglabel,s_mm,dnm"),
    (100_000, "numpy", "neglabel,s_mm,dnm"),
    (10_000, "numpy", "neglabel,dnm"),
    (10_000, "torch", "neglabel,dnm"),
    (100_000, "numpy", "neglabel,dnm"),
    (100_000, "torch", "neglabel,dnm"),
    (1_000_000, "numpy", "neglabel,dnm"),
    (1_000_000, "torch", "neglabel,dnm"),
]


def run_one(images: int, backend: str, methods: str) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, str(BENCH), "--images", str(images), "--backend", backend,
               "--methods", methods, "--out", out.name]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({status})")
        res = json.loads(Path(out.name).read_text())
    input_mb = images * 512 * 4 / 2**20
    return {
        "images": images, "backend": backend, "methods": methods, "score_s": res["total_s"],
        "images_per_s": round(res["images_per_s"], 1), "process_wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "input_mb": round(input_mb, 1),
        "working_mb": round(usage.ru_maxrss / 1024 - input_mb, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=900.0, help="skip what would run past it")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start, rows = time.perf_counter(), []
    for images, backend, methods in PLAN:
        done = [r for r in rows if r["backend"] == backend and r["methods"] == methods]
        rate = float(done[-1]["images_per_s"]) if done else None  # type: ignore[arg-type]
        left = args.time_limit - (time.perf_counter() - start)
        if rate and images / rate > left:
            need = images / rate
            print(f"skipped: {images:,} images, {backend}, {methods} (~{need:.0f} s, {left:.0f} s left)")
            continue
        rows.append(run_one(images, backend, methods))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
