"""Stage embed-images: dataset listings -> CPU decode tasks (uint8 crops) -> CLIP actor pool -> Parquet.

Ray's batch-inference pattern (methods.md 3.5; ray_vllm.md 1.4): a stateless task reads and decodes
with the model's own open_clip preprocessing, one `ImageEmbedder` actor per GPU (or CPU) normalises,
encodes and L2-normalises (clip/image.py; the pool is sized and fitted by pools.py). Output:
images.parquet (dataset, role, path, label, status, embedding fixed_size_list<float32>[D], null
unless status is "ok") in listing order, and failures.parquet.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.artifacts import embedding_column, stable_hash, write_parquet
from negrefine_ray.clip.image import embed_rows_ray, image_pool_spec
from negrefine_ray.clip.image_cache import (
    EmbedResult,
    ImageEmbeddingCache,
    image_cache_base,
    image_cache_key,
)
from negrefine_ray.clip.model import resolve_precision, resolve_weights
from negrefine_ray.clip.preprocess import FAILURE_KINDS, OK, crop_spec_for_model, decode_options
from negrefine_ray.config import JobConfig
from negrefine_ray.data.datasets import Listing, list_datasets
from negrefine_ray.data.presets import resolve_datasets
from negrefine_ray.errors import StageError
from negrefine_ray.pools import cluster_gpus, fit_plan, plan_pool
from negrefine_ray.runfolder import StageContext, StageOutput

log = logging.getLogger(__name__)


def embed_images_settings(config: JobConfig) -> dict[str, Any]:
    """Exactly what determines the stage's output: the model, the decode options, the resolved
    datasets and the seed of their `limit` samples. The files themselves enter through
    `embed_images_sources` (the stage hash) and the cache keys."""
    m = config.model
    return {
        "model": {
            "arch": m.arch,
            "pretrained": m.pretrained,
            "init_seed": m.init_seed,
            "precision": m.precision,
            "device": m.device,
        },
        "decode": decode_options(config.images).describe(),
        "symlinks": config.images.symlinks,
        "datasets": [dataclasses.asdict(d) for d in resolve_datasets(config)],
        "seed": config.run.seed,
    }


def embed_images_sources(config: JobConfig) -> dict[str, str]:
    """The identity of every dataset's files as listed now (paths, sizes, mtimes and labels), so an
    added, removed, replaced or touched image makes the stage out of date. Unchanged images still
    come from the embedding cache when the stage reruns."""
    return {
        li.name: stable_hash([li.fingerprint(), li.table.column("label").to_pylist()])
        for li in list_datasets(resolve_datasets(config), config.run.seed, symlinks=config.images.symlinks)
    }


def _failure_counts(status: np.ndarray) -> dict[str, int]:
    return {k: int(np.count_nonzero(status == k)) for k in FAILURE_KINDS if np.any(status == k)}


def check_failed_fraction(listing: Listing, result: EmbedResult, limit: float) -> None:
    """Raise a StageError naming counts per kind and examples when too much of a dataset failed."""
    n, bad = listing.table.num_rows, np.flatnonzero(result.status != OK)
    if n and len(bad) / n > limit:
        kinds = ", ".join(f"{k} {v}" for k, v in _failure_counts(result.status).items())
        paths = listing.table.column("path")
        examples = "; ".join(f"{paths[i].as_py()}: {result.status[i]} ({result.detail[i]})" for i in bad[:3])
        raise StageError(
            f"dataset '{listing.name}': {len(bad):,} of {n:,} images ({len(bad) / n:.1%}) are unreadable "
            f"({kinds}), above images.max_failed_fraction = {limit:g}. E.g. {examples}. Fix or remove "
            f"those files under {listing.root}, or raise images.max_failed_fraction."
        )


def check_listing(listing: Listing, limit: float) -> None:
    """Fail before any embedding work when a dataset lists nothing or too many of its files are missing."""
    n = listing.table.num_rows
    if n == 0:
        raise StageError(
            f"dataset '{listing.name}' lists no images under {listing.root} (format "
            f"{listing.config.format!r}); check datasets.{listing.name}.root and .format."
        )
    if listing.missing / n > limit:
        raise StageError(
            f"dataset '{listing.name}': {listing.missing:,} of {n:,} listed files do not exist under "
            f"{listing.root}, above images.max_failed_fraction = {limit:g}; check the root and image list."
        )


def _output_tables(listing: Listing, result: EmbedResult) -> tuple[pa.Table, pa.Table]:
    """(images rows, failure rows) of one dataset in listing order."""
    t, ok = listing.table, result.status == OK
    images = pa.table(
        {
            "dataset": t.column("dataset"),
            "role": t.column("role"),
            "path": t.column("path"),
            "label": t.column("label"),
            "status": pa.array(result.status.tolist(), pa.string()),
            "embedding": embedding_column(result.embedding, ok),
        }
    )
    bad = pa.array(np.flatnonzero(~ok))
    failures = pa.table(
        {
            "dataset": t.column("dataset").take(bad),
            "path": t.column("path").take(bad),
            "status": pa.array(result.status[~ok].tolist(), pa.string()),
            "detail": pa.array(result.detail[~ok].tolist(), pa.string()),
        }
    )
    return images, failures


def _embed_listings(
    listings: dict[str, Listing], embed: Callable[[pa.Table], EmbedResult]
) -> dict[str, EmbedResult]:
    """Embed the listings' rows (one listing per cache key) in one pass of `embed(work table)` and
    return them by key."""
    parts = list(listings.values())
    sizes = [li.table.num_rows for li in parts]
    roots = [li.root for li, k in zip(parts, sizes, strict=True) for _ in range(k)]
    work = pa.table(
        {
            "row": pa.array(np.arange(sum(sizes), dtype=np.int64)),
            "root": pa.array(roots, pa.string()),
            "path": pa.concat_arrays([li.table.column("path").combine_chunks() for li in parts]),
            # failures the listing found ("missing", "outside-root") are passed on without a read
            "status": pa.concat_arrays([li.table.column("status").combine_chunks() for li in parts]),
        }
    )
    out = embed(work)
    results, bounds = {}, np.cumsum([0, *sizes])
    for key, a, b in zip(listings, bounds[:-1], bounds[1:], strict=True):
        results[key] = EmbedResult(out.status[a:b], out.detail[a:b], out.embedding[a:b])
    return results


def _merge(reused: EmbedResult | None, fresh: EmbedResult | None, found: np.ndarray) -> EmbedResult:
    """One dataset's rows: `reused` where `found`, `fresh` (in order) elsewhere."""
    if reused is None or fresh is None:
        result = reused if fresh is None else fresh
        assert result is not None  # a listing has rows, so one of the two holds them
        return result
    status, detail, emb = reused.status.astype(object), reused.detail.astype(object), reused.embedding.copy()
    status[~found], detail[~found], emb[~found] = fresh.status, fresh.detail, fresh.embedding
    return EmbedResult(status.astype(str), detail.astype(str), emb)


def _embed_with_cache(
    listings: dict[str, tuple[str, Listing]],
    cache: ImageEmbeddingCache,
    embed: Callable[[pa.Table], EmbedResult],
) -> tuple[dict[str, EmbedResult], dict[str, int]]:
    """The datasets that missed their exact cache entry (key -> (base, listing)): unchanged files'
    rows from earlier entries of their base, the rest through `embed` in one pass; each stored under
    its key. Returns the results and, per key, how many rows went through `embed`."""
    reused, work = {}, {}
    for key, (base, li) in listings.items():
        reused[key] = cache.reusable(base, li.table)
        work[key] = dataclasses.replace(li, table=li.table.filter(pa.array(~reused[key][1])))
    work = {key: li for key, li in work.items() if li.table.num_rows}
    fresh = _embed_listings(work, embed) if work else {}
    results = {}
    for key, (base, li) in listings.items():
        results[key] = _merge(reused[key][0], fresh.get(key), reused[key][1])
        cache.put(base, key, li.table, results[key])
    return results, {key: li.table.num_rows for key, li in work.items()}


def _dataset_stats(listing: Listing, result: EmbedResult, key: str, embedded: int) -> dict[str, Any]:
    return {
        "rows": listing.table.num_rows,
        "embedded": embedded,
        "listed": listing.total,
        "expected": listing.config.expected,
        "ok": int(np.count_nonzero(result.status == OK)),
        "failures": _failure_counts(result.status),
        "cached": embedded == 0,
        "cache_key": key,
        "root": listing.root,
        "duplicates": listing.duplicates,
    }


def run_embed_images(ctx: StageContext) -> StageOutput:
    """The stage: list, reuse cached datasets, embed the rest in one Ray pass, write the artifacts."""
    t0, cfg = time.perf_counter(), ctx.config
    datasets = resolve_datasets(cfg)
    if not datasets:
        raise StageError("embed-images has no datasets; set images.preset and images.data_root, or add them.")
    listings = list_datasets(datasets, cfg.run.seed, symlinks=cfg.images.symlinks)
    for li in listings:
        check_listing(li, cfg.images.max_failed_fraction)
    ctx.ray()
    plan = plan_pool(image_pool_spec(cfg.images, cfg.model), cluster_gpus())
    spec, options = crop_spec_for_model(cfg.model), decode_options(cfg.images)
    precision, weights = resolve_precision(plan.device, cfg.model.precision), resolve_weights(cfg.model)
    preprocess = {"crop": spec.describe(), "decode": options.describe()}
    bases = [
        image_cache_base(weights.identity, cfg.model.arch, precision, preprocess, li.root) for li in listings
    ]
    keys = [image_cache_key(base, li.fingerprint()) for base, li in zip(bases, listings, strict=True)]
    pairs = list(zip(keys, listings, strict=True))
    cache = ImageEmbeddingCache(cfg.cache_dir / "image-embeddings")
    results: dict[str, EmbedResult] = {}
    for base, (key, li) in zip(bases, pairs, strict=True):
        if (hit := cache.get(base, key, li.table.column("path").to_pylist())) is not None:
            results[key] = hit
    # a key shared by two datasets runs once
    todo = {key: (base, li) for base, (key, li) in zip(bases, pairs, strict=True) if key not in results}
    embedded_rows: dict[str, int] = {}
    if todo:

        def embed(work: pa.Table) -> EmbedResult:
            nonlocal plan  # checked only when there is work: a cached run needs no free resources
            plan = fit_plan(plan)
            return embed_rows_ray(
                work, cfg.model, plan, batch_size=cfg.images.batch_size, options=options, spec=spec
            )

        fresh, embedded_rows = _embed_with_cache(todo, cache, embed)
        results.update(fresh)
    for key, li in pairs:
        check_failed_fraction(li, results[key], cfg.images.max_failed_fraction)
    tables = [_output_tables(li, results[key]) for key, li in pairs]
    write_parquet(ctx.out_dir / "images.parquet", pa.concat_tables([t[0] for t in tables]))
    write_parquet(ctx.out_dir / "failures.parquet", pa.concat_tables([t[1] for t in tables]))

    status = np.concatenate([results[key].status for key in keys])
    n, embedded = len(status), sum(embedded_rows.values())
    seconds = time.perf_counter() - t0
    failures = _failure_counts(status)
    mismatches = [m for li in listings if (m := li.expected_mismatch())]
    stats = {
        "images": n,
        "embedded": embedded,
        "from_cache": n - embedded,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 1),
        "actors": plan.describe(),
        "device": plan.device,
        "precision": precision,
        "weights": weights.identity,
        "preprocess": preprocess,
        "failures": failures,
        "expected_mismatches": mismatches,
        "datasets": {
            li.name: _dataset_stats(li, results[key], key, embedded_rows.get(key, 0)) for key, li in pairs
        },
    }
    summary = (
        f"{n:,} images in {seconds:.1f} s, {n / seconds:,.0f} img/s, {plan.describe()}, "
        f"{sum(failures.values()):,} unreadable"
        + (f", {n - embedded:,} from cache" if n > embedded else "")
        + (f", {len(mismatches)} count mismatch(es)" if mismatches else "")
    )
    log.info(summary)
    return StageOutput(("images.parquet", "failures.parquet"), summary, stats)
