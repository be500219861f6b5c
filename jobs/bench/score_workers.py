"""The score stage's per-image math where score.workers puts it: NegLabel's grouped score (1,000 ID
labels, 6,370 negatives, G = 100, D = 512, random unit embeddings) over N images, once in the driver
(scoring.rows.Rows without tasks: the stage's "driver") and once as Ray tasks over blocks of 65,536
images (its "cluster"), on the Ray of `--address` (default: a local Ray of this machine's cores).
Prints each path's seconds, the driver's peak resident memory after it (ru_maxrss), the images each
node scored and the largest difference between the two (the columns must agree within 1e-9).

  python jobs/bench/score_workers.py --images 1000000 --out score_workers.json
  python jobs/bench/score_workers.py --images 100000 --address 127.0.0.1:6379   # a local cluster
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def unit(rng: np.random.Generator, n: int, d: int = 512) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--address", default=None, help="a Ray cluster's address (default: a local Ray)")
    ap.add_argument("--block", type=int, default=65_536)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import ray

    from negrefine_ray.core import scores
    from negrefine_ray.scoring.rows import Rows

    ray.init(address=args.address or "local", include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(0)
    image, id_text, neg_text = unit(rng, args.images), unit(rng, 1000), unit(rng, 6370)
    kw = {"id_text": id_text, "neg_text": neg_text, "n_groups": 100, "chunk_size": 1024,
          "permutation": scores.grouping_permutation(6370, 100, 0)}  # fmt: skip
    out: dict[str, object] = {"images": args.images, "nodes_alive": sum(n["Alive"] for n in ray.nodes())}
    values = {}
    for name, rows in (("driver", Rows()), ("cluster", Rows(tasks=True, block=args.block))):
        t0 = time.perf_counter()
        values[name] = rows.map(scores.neglabel, image, **kw)
        out[name] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "driver_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "nodes": rows.nodes,
        }
    out["max_abs_difference"] = float(np.abs(values["driver"] - values["cluster"]).max())
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
