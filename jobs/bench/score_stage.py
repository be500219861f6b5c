"""The score stage itself at scale: its wall time and the driver's peak memory, with the per-image
math in the driver (score.workers = "driver") and as Ray tasks on the cluster's workers ("cluster").

Upstream files are written once, through the artifact contracts, into a run folder: N random unit
image embeddings (half ID, half OOD, D = 512, one preprocessing), 1,000 ID labels and 6,370 NegLabel
negatives. Each setting then runs the stage (`run_stage`, forced) in its own process, so the peak
resident memory (ru_maxrss) is that setting's alone, and the columns of the two settings must agree
within 1e-9. The embeddings alone are N x 2 KB in the driver (about 2 GB at 1M images): the score
columns are spilled to disk as they come, so the peak does not grow with the number of columns
(--methods mcm,neglabel,csp against mcm shows it).

  python jobs/bench/score_stage.py --images 1000000 --out score_stage.json       # local Ray
  python jobs/bench/score_stage.py --images 200000 --settings driver:cpu,driver:cuda   # a GPU
  cluster/local_cluster.sh start /tmp/nrc.b 2 1 && . /tmp/nrc.b/cluster.env
  RAY_AUTH_MODE=token python jobs/bench/score_stage.py --images 1000000 --address $GCS
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

D, K, M = 512, 1000, 6370
TEXT_VIEWS = ("the_nice_raw", "csp_noun8", "bare", "mcm")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, D), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _config(root: Path, methods: list[str], setting: str, address: str | None) -> Any:
    """The bench job; `setting` is "<score.workers>[:<score.device>]"."""
    from negrefine_ray.config import build_config

    return build_config({
        "run": {"name": "bench", "output_dir": str(root / "runs"), "cache_dir": str(root / "cache")},
        "model": {"arch": "nr-tiny-vit", "pretrained": "none", "precision": "fp32", "device": "cpu"},
        "ray": {"address": address or ""},
        "images": {"preprocess": "shared"},
        "mining": {"methods": [m for m in methods if m != "mcm"]},
        "score": {"methods": methods, "workers": setting.partition(":")[0], "n_groups": 100,
                  "device": setting.partition(":")[2] or "auto"},
    })  # fmt: skip


def prepare(root: Path, images: int, methods: list[str]) -> None:
    """The upstream stages' files, written by stand-in stages so run_stage trusts them."""
    from negrefine_ray.runfolder.artifacts import ID_LABELS, IMAGES, NEGATIVES
    from negrefine_ray.runfolder.atomic import embedding_column, write_json
    from negrefine_ray.runfolder.folder import Stage, StageOutput, run_stage

    rng = np.random.default_rng(0)
    half = images // 2
    ids = pa.table({"label": [f"class {i}" for i in range(K)],
                    **{v: embedding_column(_unit(rng, K)) for v in TEXT_VIEWS}})  # fmt: skip
    mined = [m for m in methods if m != "mcm"]
    negatives = pa.concat_tables([pa.table({
        "method": [m] * M, "rank": pa.array(range(M), pa.int32()), "label": [f"neg {i}" for i in range(M)],
        "pos": ["noun"] * M, "embedding": embedding_column(_unit(rng, M)),
    }) for m in mined])  # fmt: skip
    emb = _unit(rng, images)
    table = pa.table({
        "dataset": (roles := ["id"] * half + ["ood"] * (images - half)), "role": roles,
        "path": [f"{i}.jpg" for i in range(images)], "label": pa.array(np.full(images, -1), pa.int64()),
        "status": ["ok"] * images, "embedding@clip": embedding_column(emb),
    })  # fmt: skip
    del emb
    config = _config(root, methods, "driver", None)

    def stand_in(name: str, needs: tuple[str, ...], write: Any) -> Stage:
        def fn(ctx: Any) -> StageOutput:
            return StageOutput((write(ctx.out_dir),), f"{name}: stand-in", {})

        return Stage(name, "stand-in", needs, 1, lambda cfg: {"stand-in": name}, fn)

    for stage in (
        stand_in("embed-text", (), lambda out: ID_LABELS.write(out, ids)),
        stand_in("mine", ("embed-text",), lambda out: NEGATIVES.write(out, negatives)),
        stand_in("filter", ("mine",), lambda out: write_json(out / "none.json", {}) or "none.json"),
        stand_in("embed-images", (), lambda out: IMAGES.write(out, table)),
    ):
        run_stage(stage, config)


def one(root: Path, methods: list[str], setting: str, address: str | None) -> dict[str, Any]:
    """Run the score stage (forced) in this process; its seconds and this process's peak memory."""
    from negrefine_ray.pipeline import get_stage
    from negrefine_ray.runfolder.atomic import read_json
    from negrefine_ray.runfolder.folder import run_stage

    config = _config(root, methods, setting, address)
    t0 = time.perf_counter()
    run_stage(get_stage("score"), config, force=True)
    seconds = time.perf_counter() - t0
    stats = read_json(config.run_dir / "score" / "manifest.json")["stats"]
    return {"seconds": round(seconds, 1), "driver_peak_rss_gb": round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "columns": stats["columns"],
        "workers": stats["workers"]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--methods", default="mcm,neglabel")
    ap.add_argument("--address", default=None, help="a Ray cluster's GCS address (default: a local Ray)")
    ap.add_argument("--settings", default="driver,cluster", help="score.workers[:score.device] values to run")
    ap.add_argument("--data-dir", default="", help="keep the run folder here (default: a temp dir)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one setting, this process
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    if args.one:
        result = one(Path(args.data_dir), methods, args.one, args.address)
        print(json.dumps(result))
        return result
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="score-stage-"))
    t0 = time.perf_counter()
    prepare(root, args.images, methods)
    out: dict[str, Any] = {
        "images": args.images,
        "methods": methods,
        "prepare_s": round(time.perf_counter() - t0),
    }
    columns: dict[str, Path] = {}
    for workers in args.settings.split(","):
        cmd = [sys.executable, __file__, "--one", workers, "--images", str(args.images),
               "--methods", args.methods, "--data-dir", str(root)]  # fmt: skip
        if args.address:
            cmd += ["--address", args.address]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"score_stage: {workers} failed:\n{done.stderr[-3000:]}")
        out[workers] = json.loads(done.stdout.strip().splitlines()[-1])
        print(workers, out[workers], file=sys.stderr)
        kept = root / f"scores-{workers.replace(':', '-')}.parquet"
        shutil.copy(root / "runs" / "bench" / "score" / "scores.parquet", kept)
        columns[workers] = kept
    if len(columns) > 1:  # every setting's columns against the first's
        import pyarrow.parquet as pq

        first, *rest = (pq.read_table(p) for p in columns.values())
        names = [n for n in first.column_names if n not in ("dataset", "role", "path", "label", "status")]
        out["max_abs_difference"] = max(
            float(np.nanmax(np.abs(first.column(n).to_numpy() - other.column(n).to_numpy())))
            for other in rest
            for n in names
        )
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.data_dir:
        shutil.rmtree(root, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
