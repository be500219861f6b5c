"""Stage embed-images: dataset listings -> CPU decode tasks (uint8 crops) -> CLIP actor pool -> Parquet.

Ray's batch-inference pattern (methods.md 3.5; ray_vllm.md 1.4): a stateless task reads and decodes
with the model's own open_clip preprocessing, one `ImageEmbedder` actor per GPU (or CPU) normalises,
encodes and L2-normalises. `embed_files_local` drives the same actor class through a torch DataLoader
where Ray is absent. Output: images.parquet (dataset, role, path, label, status, embedding
fixed_size_list<float32>[D], null unless status is "ok") in listing order, and failures.parquet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch

from negrefine_ray.artifacts import embedding_column, stable_hash, write_parquet
from negrefine_ray.clip import create_clip, resolve_device, resolve_weights
from negrefine_ray.config import ImagesConfig, JobConfig, ModelConfig
from negrefine_ray.datasets import Listing, list_datasets
from negrefine_ray.errors import StageError
from negrefine_ray.image_cache import (
    EmbedResult,
    ImageEmbeddingCache,
    image_cache_base,
    image_cache_key,
)
from negrefine_ray.images import (
    FAILURE_KINDS,
    OK,
    CropSpec,
    DecodeOptions,
    crop_spec,
    crop_spec_for_model,
    decode_options,
    decode_rows,
    normalise,
    read_and_decode,
)
from negrefine_ray.presets import resolve_datasets
from negrefine_ray.resources import Pool, fit_pool_on_cluster
from negrefine_ray.stages import StageContext, StageOutput
from negrefine_ray.text_embed import effective_precision

log = logging.getLogger(__name__)
DECODE_BATCH = 64  # rows per decode task: ~10 MB of 224x224 crops, small enough to stream


def embed_crops(model: torch.nn.Module, crops: torch.Tensor, spec: CropSpec, precision: str) -> torch.Tensor:
    """(N, H, W, 3) uint8 on the model's device -> (N, D) float32 L2-normalised image embeddings.

    Normalisation runs in fp32 on the device; encode_image under fp16/bf16 autocast on CUDA.
    """
    device = crops.device.type
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(effective_precision(device, precision))
    cast = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), cast:
        feats = model.encode_image(normalise(crops, spec))  # type: ignore[operator]
    return torch.nn.functional.normalize(feats.float(), dim=-1)


class ImageEmbedder:
    """Actor: loads CLIP once; batch columns pixels (N, H, W, 3) uint8 (numpy from Ray, a CPU tensor
    from the DataLoader) + status (N,) -> embedding (N, D) float32, zeros where status is not "ok".
    Other columns except pixels pass through."""

    def __init__(
        self, model: dict[str, Any], spec: dict[str, Any], *, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        self.device = resolve_device(device)
        self.model, preprocess, self.weights = create_clip(ModelConfig(**model), self.device)
        self.spec = CropSpec.from_dict(spec)
        if crop_spec(preprocess) != self.spec:
            raise StageError(
                f"The crops were made with {self.spec} but {model['arch']}'s open_clip preprocessing is "
                f"{crop_spec(preprocess)}; the open_clip versions of the driver and workers differ."
            )
        self.precision = effective_precision(self.device, precision)
        h, w = self.spec.out_size
        probe = torch.zeros((1, h, w, 3), dtype=torch.uint8, device=self.device)
        self.dim = int(embed_crops(self.model, probe, self.spec, self.precision).shape[1])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        missing = {"pixels", "status"} - set(batch)
        if missing:
            raise StageError(f"ImageEmbedder needs columns pixels and status; the batch has {sorted(batch)}.")
        ok = np.asarray(batch["status"]) == OK
        out = np.zeros((len(ok), self.dim), dtype=np.float32)
        if ok.any():
            pixels = batch["pixels"]
            if isinstance(pixels, torch.Tensor):  # DataLoader: shared-memory, maybe pinned, tensor
                crops = pixels if ok.all() else pixels[torch.from_numpy(ok)]
            else:  # Ray: boolean indexing copies, so the tensor never aliases the read-only batch
                crops = torch.from_numpy(np.asarray(pixels)[ok])
            crops = crops.to(self.device, non_blocking=crops.is_pinned())
            out[ok] = embed_crops(self.model, crops, self.spec, self.precision).cpu().numpy()
        rest = {k: v for k, v in batch.items() if k != "pixels"}
        return {**rest, "embedding": out}


@dataclass(frozen=True)
class ActorPlan:
    device: str
    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    decode_cpus: float = 1.0  # per decode task; below 1 only where the cluster is short of CPUs

    def describe(self) -> str:
        unit = f"{self.gpus_per_actor:g} GPU" if self.device == "cuda" else "CPU"
        return f"{self.num_actors} actor{'s' if self.num_actors > 1 else ''} x {unit}"


def plan_actors(images: ImagesConfig, model: ModelConfig, cluster_gpus: float) -> ActorPlan:
    """GPU actors (images.gpus_per_actor each; one per GPU share by default) when the cluster has GPUs
    and model.device allows, else CPU actors. CPU actors take 0.5 CPU, unlike the 1-CPU decode tasks:
    Ray fuses map operators with equal resources, which would run decoding inside the actor."""
    use_gpu = model.device != "cpu" and cluster_gpus > 0 and images.gpus_per_actor > 0
    if model.device == "cuda" and not use_gpu:
        raise StageError(
            f"model.device = 'cuda' but the Ray cluster has {cluster_gpus:g} GPUs (images.gpus_per_actor = "
            f"{images.gpus_per_actor:g}); use model.device = 'auto' or 'cpu', or add GPU workers."
        )
    if use_gpu:
        n = images.num_actors or max(1, int(cluster_gpus / images.gpus_per_actor + 1e-9))
        return ActorPlan("cuda", n, images.gpus_per_actor, 1.0)
    return ActorPlan("cpu", images.num_actors or 1, 0.0, 0.5)


def fit_to_cluster(plan: ActorPlan, images: ImagesConfig) -> ActorPlan:
    """`plan` sized to what the connected Ray has free next to the driver (resources.fit_pool): fewer
    automatic GPU actors, or smaller CPU shares for actors and decode tasks alike (their ratio keeps
    the two operators unfused); a StageError with the numbers when even that does not fit."""
    pool = Pool(
        "embed-images",
        plan.num_actors,
        plan.cpus_per_actor,
        plan.gpus_per_actor,
        task_cpus=plan.decode_cpus,
        count_key="images.num_actors",
        count_fixed=images.num_actors > 0,
    )
    fit = fit_pool_on_cluster(pool).pool
    return dataclasses.replace(
        plan, num_actors=fit.actors, cpus_per_actor=fit.actor_cpus, decode_cpus=fit.task_cpus
    )


def _collect(batches: Any, n: int) -> EmbedResult:
    """Rows back in place by their row index; each must arrive exactly once."""
    status, detail = np.empty(n, dtype=object), np.empty(n, dtype=object)
    emb: np.ndarray | None = None
    seen = np.zeros(n, dtype=np.int64)
    for batch in batches:
        rows = np.asarray(batch["row"], dtype=np.int64)
        if emb is None:
            emb = np.zeros((n, np.asarray(batch["embedding"]).shape[1]), dtype=np.float32)
        emb[rows] = batch["embedding"]
        status[rows], detail[rows] = batch["status"], batch["detail"]
        np.add.at(seen, rows, 1)
    if emb is None or not (seen == 1).all():
        lost, twice = int((seen == 0).sum()), int((seen > 1).sum())
        raise StageError(f"embed-images got {n:,} rows back with {lost} lost and {twice} duplicated.")
    return EmbedResult(status.astype(str), detail.astype(str), emb)


def embed_rows_ray(
    work: pa.Table,
    model: ModelConfig,
    plan: ActorPlan,
    *,
    batch_size: int,
    options: DecodeOptions,
    spec: CropSpec,
    embedder_cls: type = ImageEmbedder,
) -> EmbedResult:
    """Run `work` (columns row = 0..N-1, root, path) through decode tasks and the actor pool."""
    import ray

    blocks = [work.slice(i, DECODE_BATCH) for i in range(0, work.num_rows, DECODE_BATCH)]
    decoded = ray.data.from_arrow(blocks).map_batches(
        cast(Any, decode_rows),
        fn_kwargs={"spec": spec, "options": options},
        batch_size=DECODE_BATCH,
        num_cpus=plan.decode_cpus,
        batch_format="numpy",
        udf_modifying_row_count=False,
    )
    constructor = {
        "model": {"arch": model.arch, "pretrained": model.pretrained, "init_seed": model.init_seed},
        "spec": spec.describe(),
        "device": plan.device,
        "precision": model.precision,
    }
    # Actor restarts and task retries are Ray Data 2.60's defaults for actor pools (max_restarts=-1,
    # max_task_retries=-1): a retried batch replaces the lost one, so rows are neither lost nor doubled.
    ds = decoded.map_batches(
        embedder_cls,
        fn_constructor_kwargs=constructor,
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        num_gpus=plan.gpus_per_actor,
        num_cpus=plan.cpus_per_actor,
        batch_size=batch_size,
        batch_format="numpy",
        udf_modifying_row_count=False,
    )
    return _collect(ds.iter_batches(batch_size=None, batch_format="numpy"), work.num_rows)


class _DecodeDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, files: Sequence[tuple[str, str]], spec: CropSpec, options: DecodeOptions) -> None:
        self.files, self.spec, self.options = list(files), spec, options

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, str, str]:
        crop, status, detail = read_and_decode(*self.files[i], self.spec, self.options)
        h, w = self.spec.out_size
        return i, crop if crop is not None else np.zeros((h, w, 3), np.uint8), status, detail


def _collate(items: list[tuple[int, np.ndarray, str, str]]) -> dict[str, Any]:
    rows, crops, status, detail = zip(*items, strict=True)
    return {
        "row": np.array(rows),
        # A tensor travels from the worker through shared memory; a numpy array would be pickled.
        "pixels": torch.from_numpy(np.stack(crops)),
        "status": np.array(status),
        "detail": np.array(detail),
    }


def embed_files_local(
    files: Sequence[tuple[str, str]],
    embedder: ImageEmbedder,
    options: DecodeOptions,
    *,
    workers: int = 4,
    batch_size: int = 256,
) -> EmbedResult:
    """The Ray stage without Ray: a torch DataLoader (`workers` decode processes) feeds `embedder`.
    `files` are (root, path) pairs; results come back in their order."""
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(files, embedder.spec, options),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=embedder.device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    return _collect((embedder(batch) for batch in loader), len(files))


def embed_images_settings(config: JobConfig) -> dict[str, Any]:
    """Exactly what determines the stage's output: the model, the decode options, the resolved
    datasets and the seed of their `limit` samples. File contents enter through the cache key only."""
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
    import ray

    plan = plan_actors(cfg.images, cfg.model, float(ray.cluster_resources().get("GPU", 0)))
    spec, options = crop_spec_for_model(cfg.model), decode_options(cfg.images)
    precision, weights = effective_precision(plan.device, cfg.model.precision), resolve_weights(cfg.model)
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
            plan = fit_to_cluster(plan, cfg.images)
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
