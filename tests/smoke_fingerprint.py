"""The smoke job's golden fingerprint: what its results are, so that any unintended change fails.
It is taken of the session's smoke run (tests/conftest.py: jobs/smoke.toml on the demo images plus
two more unreadable OOD files).

Exact where results are discrete (which negatives each method mined, in order; every judge's
answers and decisions; which labels were kept; each image's status) and within float tolerance where
they are numbers (every score of every image, every metric), because CPUs round matrix products
differently (4.8e-7 between two x86 machines was seen here). The artifacts' sha256 are recorded too
and compared only with NEGREFINE_GOLDEN_BYTES=1, the check for a refactor on one machine.

Update after an intended change, in its own commit saying what changed and why:
    NEGREFINE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_pipeline.py -k golden
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from negrefine_ray.runfolder.atomic import file_sha256, read_json, read_parquet, stable_hash

GOLDEN = Path(__file__).parent / "golden" / "smoke.json"
BYTES = (
    "mine/negatives.parquet",
    "score/scores.parquet",
    "report/metrics.json",
    "embed-images/images.parquet",
)
ATOL, RTOL = 1e-4, 1e-4


def _rows(table: Any, columns: list[str]) -> str:
    return stable_hash([table.column(c).to_pylist() for c in columns])


def fingerprint(run_dir: Path) -> dict[str, Any]:
    """The results of a finished smoke run folder, as comparable JSON."""
    negatives = read_parquet(run_dir / "mine" / "negatives.parquet")
    scores = read_parquet(run_dir / "score" / "scores.parquet")
    metrics = read_json(run_dir / "report" / "metrics.json")
    judges = sorted(p.name for p in (run_dir / "filter").iterdir() if (p / "decisions.parquet").is_file())
    filtered = {}
    for judge in judges:
        decisions = read_parquet(run_dir / "filter" / judge / "decisions.parquet")
        kept = read_parquet(run_dir / "filter" / judge / "kept.parquet")
        filtered[judge] = {
            "decisions": _rows(decisions, ["qid", "kind", "answer", "decision_yes"]),
            "questions": decisions.num_rows,
            "kept": _rows(kept, ["label", "pos"]),
        }
    score_columns = [
        c for c in scores.column_names if c not in ("dataset", "role", "path", "label", "status")
    ]
    files = [*BYTES, *(f"filter/{j}/decisions.parquet" for j in judges)]
    return {
        "negatives": {
            "rows": negatives.num_rows,
            "order": _rows(negatives, ["method", "rank", "label", "pos"]),
        },
        "filter": filtered,
        "images": _rows(scores, ["dataset", "role", "path", "label", "status"]),
        "scores": {c: scores.column(c).to_pylist() for c in score_columns},
        "metrics": {
            row: {"datasets": e["datasets"], "average": e["average"]} for row, e in metrics["rows"].items()
        },
        "sha256": {f: file_sha256(run_dir / f) for f in files},
    }


def _close(a: Any, b: Any, where: str, problems: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            problems.append(f"{where}: keys {sorted(a)} != golden {sorted(b)}")
            return
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", problems)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{where}: {len(a)} values, golden has {len(b)}")
            return
        bad = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if not _same(x, y)]
        if bad:
            problems.append(f"{where}: {len(bad)} values differ, first [{bad[0]}] {a[bad[0]]} vs {b[bad[0]]}")
    elif not _same(a, b):
        problems.append(f"{where}: {a!r} != golden {b!r}")


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL)
    return bool(x == y)


def check(run_dir: Path) -> list[str]:
    """Differences between the run's fingerprint and the golden one (empty when they agree).
    With NEGREFINE_UPDATE_GOLDEN=1 the golden file is rewritten instead."""
    got = fingerprint(run_dir)
    if os.environ.get("NEGREFINE_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return []
    golden = json.loads(GOLDEN.read_text())
    problems: list[str] = []
    strict = os.environ.get("NEGREFINE_GOLDEN_BYTES") == "1"
    _close(
        {k: v for k, v in got.items() if strict or k != "sha256"},
        {k: v for k, v in golden.items() if strict or k != "sha256"},
        "smoke",
        problems,
    )
    return problems
