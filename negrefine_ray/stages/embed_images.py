"""Stage embed-images: dataset listings -> CPU decode tasks (uint8 crops) -> CLIP actor pool -> Parquet.

Ray's batch-inference pattern (methods.md 3.5; ray_vllm.md 1.4): a stateless task reads and decodes
each file once and cuts one crop per preprocessing the scored methods need (core.methods
PREPROCESSING, images.preprocess), one `ImageEmbedder` actor per GPU (or CPU) normalises, encodes
and L2-normalises each (clip/image.py; the pool is sized and fitted by distributed/pools.py); with
images.decode "gpu" the tasks only read bytes and the actors decode the JPEGs (clip/device_decode.py). Output:
images.parquet (dataset, role, path, label, status, one embedding@<variant>
fixed_size_list<float32>[D] per preprocessing, null unless status is "ok") in listing order, and
failures.parquet. Embeddings are cached per dataset listing, and while a pass runs its finished rows
are kept as partial cache entries (clip/image_checkpoint.py), so a resumed stage embeds only the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.clip.device_decode import check_device_specs
from negrefine_ray.clip.image import LocalSpec, embed_rows_ray, image_pool_spec
from negrefine_ray.clip.image_cache import (
    EmbedResult,
    ImageEmbeddingCache,
    image_cache_base,
    image_cache_key,
)
from negrefine_ray.clip.model import resolve_precision, resolve_weights
from negrefine_ray.clip.preprocess import (
    FAILURE_KINDS,
    OK,
    crop_spec_for_model,
    decode_options,
    variant_specs,
)
from negrefine_ray.clip.text_service import TextEncoder
from negrefine_ray.config import DatasetConfig, JobConfig
from negrefine_ray.core.labels import load_id_labels
from negrefine_ray.core.methods import (
    PREPROCESSING,
    base_variant,
    embedding_name,
    image_preprocessing,
    local_templates,
    local_variant,
    local_variants,
    prototype_preprocessing,
)
from negrefine_ray.core.templates import get_templates
from negrefine_ray.data.datasets import Listing, list_datasets
from negrefine_ray.data.presets import resolve_datasets
from negrefine_ray.distributed.pools import cluster_gpus, fit_plan, plan_pool
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.atomic import embedding_column, stable_hash, write_parquet
from negrefine_ray.runfolder.folder import StageContext, StageOutput
from negrefine_ray.stages._embed_images_cache import OnBatch, Todo, embed_with_cache

log = logging.getLogger(__name__)


def embed_images_settings(config: JobConfig) -> dict[str, Any]:
    """Exactly what determines the stage's output: the model, the decode options, the resolved
    datasets and the seed of their `limit` samples. The files themselves enter through
    `embed_images_sources` (the stage hash) and the cache keys."""
    m, local = config.model, _local_settings(config)
    return {
        "model": {
            "arch": m.arch,
            "pretrained": m.pretrained,
            "init_seed": m.init_seed,
            "precision": m.precision,
            "device": m.device,
        },
        "decode": decode_options(config.images).describe(),
        "variants": list(image_variants(config)),
        "prototype_variant": prototype_variant(config),
        "seed_of_augment": config.run.seed,
        "symlinks": config.images.symlinks,
        "datasets": [dataclasses.asdict(d) for d in stage_datasets(config)],
        "seed": config.run.seed,
        **({"local": local} if local else {}),  # absent without GL-MCM: other runs keep their hash
    }


def _local_settings(config: JobConfig) -> dict[str, Any] | None:
    """What the images' local scores (GL-MCM's L-MCM, scored methods with `needs_local`) depend on
    beyond the crops: the ID prompts and the temperature; None when no scored method needs them."""
    variants = local_variants(config.score.methods, config.images.preprocess)
    if not variants:
        return None
    templates = local_templates(config.score.methods)  # GL-MCM's: MCM's 'a photo of a {}' (C.2)
    return {"variants": list(variants), "labels": config.labels.id_labels, "templates": templates,
            "temperature": config.glmcm.temperature}  # fmt: skip


def local_specs(ctx: StageContext) -> dict[str, LocalSpec]:
    """Each local variant's LocalSpec: the ID labels' 'a photo of a {}' features, L2-normalised, from
    the text encoder (its cache holds them once embed-text has run: MCM's view, the same texts)."""
    settings = _local_settings(ctx.config)
    if settings is None:
        return {}
    encoder = TextEncoder(ctx.config, ctx.ray)
    try:
        id_text = encoder.embed(
            load_id_labels(ctx.config.labels.id_labels), get_templates(settings["templates"])
        )
    finally:
        encoder.close()
    return {v: LocalSpec(id_text, settings["temperature"]) for v in settings["variants"]}


def prototype_variant(config: JobConfig) -> str | None:
    """The preprocessing of role-"prototype" images (core.methods.prototype_preprocessing)."""
    c = config
    return prototype_preprocessing(c.score.methods, c.images.preprocess, c.interneg.prototype_preprocess)


def stage_datasets(config: JobConfig) -> list[DatasetConfig]:
    """The datasets this stage embeds: every resolved one, except role-"prototype" datasets when no
    scored method uses prototypes (InterNeg)."""
    keep = prototype_variant(config) is not None
    return [d for d in resolve_datasets(config) if keep or d.role != "prototype"]


def image_variants(config: JobConfig) -> tuple[str, ...]:
    """The distinct preprocessings (core.methods.PREPROCESSING, in its order) the scored methods'
    images need under images.preprocess; one embedding column each."""
    chosen = set(image_preprocessing(config.score.methods, config.images.preprocess).values())
    return tuple(v for v in PREPROCESSING if v in chosen) or ("clip",)


def embed_images_sources(config: JobConfig) -> dict[str, str]:
    """The identity of every dataset's files as listed now (paths, sizes, mtimes and labels), so an
    added, removed, replaced or touched image makes the stage out of date. Unchanged images still
    come from the embedding cache when the stage reruns."""
    return {
        li.name: stable_hash([li.fingerprint(), li.table.column("label").to_pylist()])
        for li in list_datasets(stage_datasets(config), config.run.seed, symlinks=config.images.symlinks)
    }


def _failure_counts(status: np.ndarray) -> dict[str, int]:
    return {k: int(np.count_nonzero(status == k)) for k in FAILURE_KINDS if np.any(status == k)}


def check_failed_fraction(listing: Listing, status: np.ndarray, detail: np.ndarray, limit: float) -> None:
    """Raise a StageError naming counts per kind and examples when too much of a dataset failed."""
    n, bad = listing.table.num_rows, np.flatnonzero(status != OK)
    if n and len(bad) / n > limit:
        kinds = ", ".join(f"{k} {v}" for k, v in _failure_counts(status).items())
        paths = listing.table.column("path")
        examples = "; ".join(f"{paths[i].as_py()}: {status[i]} ({detail[i]})" for i in bad[:3])
        raise StageError(
            f"dataset '{listing.name}': {len(bad):,} of {n:,} images ({len(bad) / n:.1%}) are unreadable "
            f"({kinds}), above images.max_failed_fraction = {limit:g}. E.g. {examples}. Fix or remove "
            f"those files under {listing.root}, or raise images.max_failed_fraction."
        )


def check_listing(listing: Listing, limit: float) -> None:
    """Fail before any embedding work when a dataset lists nothing or too many of its files are missing."""
    n = listing.table.num_rows
    if n == 0 and listing.config.format == "imagelist":  # a listed path is a row, even when missing
        raise StageError(
            f"dataset '{listing.name}': its image list {listing.config.image_list} has no entries (the "
            f"file is empty or blank); check datasets.{listing.name}.image_list."
        )
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


def combined_status(results: Sequence[EmbedResult]) -> tuple[np.ndarray, np.ndarray]:
    """(status, detail) of each row over its variants' results: the first failure, else "ok". One
    decode feeds every variant, so they agree unless a variant came from an older cache entry."""
    status, detail = results[0].status.astype(object), results[0].detail.astype(object)
    for r in results[1:]:
        later = (status == OK) & (r.status != OK)
        status[later], detail[later] = r.status[later], r.detail[later]
    return status.astype(str), detail.astype(str)


def _output_tables(
    listing: Listing,
    results: Mapping[str, EmbedResult],
    dims: Mapping[str, int],
    status: np.ndarray,
    detail: np.ndarray,
) -> tuple[pa.Table, pa.Table]:
    """(images rows with one embedding@<variant> column per variant of `dims` (its dimension), null
    for the variants this dataset was not embedded with, failure rows) of one dataset in listing
    order; `status` and `detail` are its rows' combined_status."""
    t = listing.table
    ok = status == OK
    nothing = np.zeros(t.num_rows, dtype=bool)
    images = pa.table(
        {
            "dataset": t.column("dataset"),
            "role": t.column("role"),
            "path": t.column("path"),
            "label": t.column("label"),
            "status": pa.array(status.tolist(), pa.string()),
            **{
                embedding_name(v): embedding_column(results[v].embedding, ok)
                if v in results
                else embedding_column(np.zeros((t.num_rows, dim), np.float32), nothing)
                for v, dim in dims.items()
            },
        }
    )
    bad = pa.array(np.flatnonzero(~ok))
    failures = pa.table(
        {
            "dataset": t.column("dataset").take(bad),
            "path": t.column("path").take(bad),
            "status": pa.array(status[~ok].tolist(), pa.string()),
            "detail": pa.array(detail[~ok].tolist(), pa.string()),
        }
    )
    return images, failures


def _dataset_stats(
    listing: Listing, status: np.ndarray, keys: dict[str, str], embedded: int
) -> dict[str, Any]:
    return {
        "rows": listing.table.num_rows,
        "embedded": embedded,
        "listed": listing.total,
        "expected": listing.config.expected,
        "ok": int(np.count_nonzero(status == OK)),
        "failures": _failure_counts(status),
        "cached": embedded == 0,
        "cache_keys": keys,
        "root": listing.root,
        "duplicates": listing.duplicates,
    }


def _decoder(decode: str, device: str) -> str:
    """Where the images were decoded, for the stats and the summary line."""
    if decode != "gpu":
        return f"{decode} decode in CPU tasks"
    if device == "cpu":  # the CPU actors decode with torchvision: for tests, slower than "pil"
        return "JPEGs decoded by torchvision (libjpeg-turbo) in the CPU actors"
    return f"JPEGs decoded with nvJPEG on {device}"


def run_embed_images(ctx: StageContext) -> StageOutput:
    """The stage: list, reuse cached datasets and variants, embed the rest (one Ray pass per set of
    missing variants, each file decoded once per pass), write the artifacts."""
    t0, cfg = time.perf_counter(), ctx.config
    datasets = stage_datasets(cfg)
    if not datasets:
        raise StageError("embed-images has no datasets; set images.preset and images.data_root, or add them.")
    listings = list_datasets(datasets, cfg.run.seed, symlinks=cfg.images.symlinks)
    for li in listings:
        check_listing(li, cfg.images.max_failed_fraction)
    ctx.ray()
    plan = plan_pool(image_pool_spec(cfg.images, cfg.model), cluster_gpus())
    test_variants, proto = image_variants(cfg), prototype_variant(cfg)
    specs = variant_specs(
        crop_spec_for_model(cfg.model),
        list(dict.fromkeys([*test_variants, *filter(None, [proto])])),
        cfg.run.seed,
    )

    local = local_specs(ctx)
    local_names = tuple(local_variant(v) for v in local)  # one float per image, cached like a variant

    def variants_of(li: Listing) -> tuple[str, ...]:
        return (proto,) if proto and li.config.role == "prototype" else (*test_variants, *local_names)

    options = decode_options(cfg.images)
    if options.decode == "gpu":
        check_device_specs(specs.values())
    precision, weights = resolve_precision(plan.device, cfg.model.precision), resolve_weights(cfg.model)
    preprocess = {v: {"crop": spec.describe(), "decode": options.describe()} for v, spec in specs.items()}
    for v, ls in local.items():  # the local score also depends on the ID prompts and the temperature
        text_id = hashlib.sha256(np.ascontiguousarray(ls.id_text, np.float32).tobytes()).hexdigest()
        preprocess[local_variant(v)] = {**preprocess[v], "local": {"id_text": text_id, "t": ls.temperature}}
    cache = ImageEmbeddingCache(cfg.cache_dir / "image-embeddings")
    # (variant, listing) -> (base, key); a listing's identity is its root and fingerprint, so two
    # datasets with the same files share their entries and run once
    idents = [stable_hash([li.root, li.fingerprint()]) for li in listings]
    results: dict[str, dict[str, EmbedResult]] = {ident: {} for ident in idents}
    keys: dict[str, dict[str, str]] = {ident: {} for ident in idents}
    todo: dict[str, Todo] = {}
    for ident, li in zip(idents, listings, strict=True):
        for v in variants_of(li):
            base = image_cache_base(weights.identity, cfg.model.arch, precision, preprocess[v], li.root)
            key = keys[ident][v] = image_cache_key(base, li.fingerprint())
            if (hit := cache.get(base, key, li.table.column("path").to_pylist())) is not None:
                results[ident][v] = hit
            elif v not in results[ident]:
                todo.setdefault(ident, Todo(li, {})).variants[v] = (base, key)
    embedded_rows: dict[str, int] = {}
    nodes: dict[str, int] = {}  # rows each Ray node's actors embedded
    if todo:

        def embed(work: pa.Table, variants: Sequence[str], on_batch: OnBatch) -> dict[str, EmbedResult]:
            nonlocal plan  # checked only when there is work: a cached run needs no free resources
            plan = fit_plan(plan)
            crops = dict.fromkeys(base_variant(v) for v in variants)  # a local score needs its crops
            done = embed_rows_ray(
                work, cfg.model, plan, batch_size=cfg.images.batch_size, options=options,
                specs={v: specs[v] for v in crops}, nodes=nodes, on_batch=on_batch,
                local={base_variant(v): local[base_variant(v)] for v in variants if v in local_names},
            )  # fmt: skip
            return {v: done[v] for v in variants}

        groups: dict[tuple[str, ...], dict[str, Todo]] = {}
        for ident, item in todo.items():
            groups.setdefault(tuple(item.variants), {})[ident] = item
        for group in groups.values():
            fresh, rows = embed_with_cache(group, cache, embed, cfg.images.checkpoint_seconds)
            for ident, by_variant in fresh.items():
                results[ident].update(by_variant)
            embedded_rows.update(rows)
    ordered = [
        {v: results[ident][v] for v in variants_of(li)} for ident, li in zip(idents, listings, strict=True)
    ]
    statuses = [combined_status(list(by_variant.values())) for by_variant in ordered]
    for li, (status, detail) in zip(listings, statuses, strict=True):
        check_failed_fraction(li, status, detail, cfg.images.max_failed_fraction)
    dims = {v: r.embedding.shape[1] for by_variant in ordered for v, r in by_variant.items()}
    tables = [
        _output_tables(li, by_variant, dims, *st)
        for li, by_variant, st in zip(listings, ordered, statuses, strict=True)
    ]
    write_parquet(ctx.out_dir / "images.parquet", pa.concat_tables([t[0] for t in tables]))
    write_parquet(ctx.out_dir / "failures.parquet", pa.concat_tables([t[1] for t in tables]))

    status = np.concatenate([s for s, _ in statuses])
    n, embedded = len(status), sum(embedded_rows.values())
    seconds = time.perf_counter() - t0
    failures = _failure_counts(status)
    mismatches = [m for li in listings if (m := li.expected_mismatch())]
    per_dataset = {
        li.name: _dataset_stats(li, s, keys[ident], embedded_rows.get(ident, 0))
        for li, ident, (s, _) in zip(listings, idents, statuses, strict=True)
    }
    stats = {
        "images": n,
        "decode": _decoder(options.decode, plan.device),
        "embedded": embedded,
        "from_cache": n - embedded,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 1),
        "actors": plan.describe(),
        "nodes": nodes,
        "device": plan.device,
        "precision": precision,
        "weights": weights.identity,
        "variants": list(specs),
        "preprocess": preprocess,
        "failures": failures,
        "expected_mismatches": mismatches,
        "datasets": per_dataset,
    }
    summary = (
        f"{n:,} images in {seconds:.1f} s, {n / seconds:,.0f} img/s, {len(specs)} preprocessing(s) "
        f"({', '.join(specs)}), {plan.describe()}, "
        + (f"{stats['decode']}, " if options.decode == "gpu" else "")
        + f"{sum(failures.values()):,} unreadable"
        + (f", {n - embedded:,} from cache" if n > embedded else "")
        + (f", {len(mismatches)} count mismatch(es)" if mismatches else "")
    )
    log.debug(summary)  # the CLI prints the stage summary line
    return StageOutput(("images.parquet", "failures.parquet"), summary, stats)
