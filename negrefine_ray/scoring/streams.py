"""The online methods' streams (InterNeg, AdaNeg): their scores depend on the order of one mixed,
shuffled stream of the ID images and one OOD dataset's, so each (OOD dataset, shuffle) stream is its
own Ray task, all at once, and the metrics' spread over the shuffles goes to the manifest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from negrefine_ray.config import JobConfig

Stream = tuple[np.ndarray, np.ndarray, int]  # (image rows, is_id, seed)


def run_streams(
    fn: Callable[..., Any],
    config: JobConfig,
    streams: list[Stream],
    shared: dict[str, np.ndarray],
    *,
    gpus: int = 0,
    **kwargs: Any,
) -> list[Any]:
    """`fn(config, image, is_id, **shared, seed=seed, **kwargs)` for every stream as its own Ray task
    (`gpus` GPUs each, else one CPU), so OOD datasets and shuffles run in parallel as far as the
    cluster fits them; `shared` travels through the object store once. Results in `streams` order."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(fn)
    refs = {k: ray.put(v) for k, v in shared.items()}
    pending = [
        task.remote(config, ray.put(image), is_id, **refs, seed=seed, **kwargs)
        for image, is_id, seed in streams
    ]
    return list(ray.get(pending))


def shuffle_spread(columns: dict[int, np.ndarray], is_id: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and std over the shuffles of each metric of one OOD dataset's stream scores."""
    from negrefine_ray.core.metrics import compute_metrics

    per = [compute_metrics(v[is_id], v[~is_id]) for v in columns.values()]
    return {
        m: {"mean": float(np.mean([p[m] for p in per])), "std": float(np.std([p[m] for p in per]))}
        for m in per[0]
    }


def seeded_rows(is_id: np.ndarray, seed: int) -> np.ndarray:
    """A stream's rows in the order seeded by `seed` (core.interneg.stream_order, which indexes
    [ID rows | OOD rows]), mapped onto the stream table's own rows."""
    from negrefine_ray.core.interneg import stream_order

    order = stream_order(int(is_id.sum()), int((~is_id).sum()), seed)
    return np.concatenate([np.flatnonzero(is_id), np.flatnonzero(~is_id)])[order]


def stream_rows(ood_of: np.ndarray, ood: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(is_id over all rows, each OOD dataset's stream rows: the ID rows and its own)."""
    is_id = np.array([d is None for d in ood_of], dtype=bool)
    return is_id, {name: is_id | (ood_of == name) for name in ood}


def ood_streams(
    fn: Callable[..., tuple[Any, ...]],
    config: JobConfig,
    image: np.ndarray,
    ood_of: np.ndarray,
    ood: tuple[str, ...],
    shared: dict[str, np.ndarray],
    shuffles: int,
    **kwargs: Any,
) -> dict[str, tuple[np.ndarray, dict[str, Any], np.ndarray | None]]:
    """Every OOD dataset's streams (shuffles run.seed .. run.seed + shuffles - 1) through `fn` (see
    `run_streams`), which returns (scores in row order, counts) and optionally a third item, per-row
    flags (0/1). Per dataset: the first shuffle's scores over all rows (NaN outside its stream), its
    manifest entry (counts, images, and with several shuffles each metric's mean and std over them)
    and the first shuffle's flags over all rows (NaN outside its stream; None if `fn` gives none)."""
    is_id, rows_of = stream_rows(ood_of, ood)
    jobs = [(name, s) for name in ood for s in range(shuffles)]
    streams = [(image[rows_of[name]], is_id[rows_of[name]], config.run.seed + s) for name, s in jobs]
    by_job = dict(zip(jobs, run_streams(fn, config, streams, shared, **kwargs), strict=True))
    out = {}
    for name in ood:
        rows = rows_of[name]
        values = np.full(image.shape[0], np.nan)
        values[rows] = by_job[name, 0][0]
        entry: dict[str, Any] = {"counts": by_job[name, 0][1], "images": int(rows.sum())}
        if shuffles > 1:
            by_shuffle = {s: by_job[name, s][0] for s in range(shuffles)}
            entry["shuffles"] = shuffle_spread(by_shuffle, is_id[rows])
        flags = None
        if len(by_job[name, 0]) > 2:
            flags = np.full(image.shape[0], np.nan)
            flags[rows] = np.asarray(by_job[name, 0][2], dtype=np.float64)
        out[name] = (values, entry, flags)
    return out
