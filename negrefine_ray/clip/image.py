"""CLIP image encoding for the embed-images stage: uint8 crops -> L2-normalised embeddings.

Pure core `embed_crops` (torch); `ImageEmbedder`, the actor (batch columns status and one
pixels@<variant> per preprocessing variant, or with images.decode "gpu" the files' bytes it decodes
itself, clip/device_decode.py -> embedding@<variant>, other columns passed through);
and two drivers that return each variant's rows in order: `embed_rows_ray` (CPU decode tasks
feeding a pools.ActorPool, ray_vllm.md 1.4) and `embed_files_local` (the same actor fed by a torch
DataLoader, where Ray is absent: jobs/bench uses it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch

from negrefine_ray.clip.decode_task import decode_rows
from negrefine_ray.clip.device_decode import ENCODED, check_device_specs, decode_payloads, read_encoded
from negrefine_ray.clip.image_cache import EmbedResult
from negrefine_ray.clip.model import autocast, create_clip, resolve_device, resolve_precision
from negrefine_ray.clip.preprocess import (
    OK,
    CropSpec,
    DecodeOptions,
    crop_spec,
    normalise,
    pixels_column,
    read_and_decode,
    variant_specs,
)
from negrefine_ray.config import ImagesConfig, ModelConfig
from negrefine_ray.core.glmcm import encode_with_local, last_block, lmcm
from negrefine_ray.core.methods import embedding_name, local_variant
from negrefine_ray.distributed.pools import (
    NODE,
    ROW,
    ActorPool,
    PoolPlan,
    PoolSpec,
    count_nodes,
    node_id,
    reassemble,
    require_columns,
)
from negrefine_ray.errors import StageError

DECODE_BATCH = 64  # rows per decode task: ~10 MB of 224x224 crops, small enough to stream


def embed_crops(model: torch.nn.Module, crops: torch.Tensor, spec: CropSpec, precision: str) -> torch.Tensor:
    """(N, H, W, 3) uint8 on the model's device -> (N, D) float32 L2-normalised image embeddings.

    Normalisation runs in fp32 on the device; encode_image under fp16/bf16 autocast on CUDA.
    """
    with torch.inference_mode(), autocast(crops.device.type, precision):
        feats = model.encode_image(normalise(crops, spec))  # type: ignore[operator]
    return torch.nn.functional.normalize(feats.float(), dim=-1)


@dataclass(frozen=True)
class LocalSpec:
    """What a variant's local score needs (GL-MCM's L-MCM, core.glmcm): the ID prompts' (K, D)
    float32 features and the softmax temperature."""

    id_text: np.ndarray
    temperature: float


def embed_crops_local(
    model: torch.nn.Module,
    crops: torch.Tensor,
    spec: CropSpec,
    precision: str,
    id_text: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`embed_crops` and, from the same forward pass, each image's L-MCM against `id_text` (N,)
    float32: the local features never leave the device."""
    with torch.inference_mode():
        with autocast(crops.device.type, precision):
            feats, local = encode_with_local(model, normalise(crops, spec))
        return torch.nn.functional.normalize(feats.float(), dim=-1), lmcm(local, id_text, temperature)


class ImageEmbedder:
    """Actor: loads CLIP once; batch columns status (N,) and, per variant of `specs`, pixels@<variant>
    (N, H, W, 3) uint8 (numpy from Ray, a CPU tensor from the DataLoader) -> embedding@<variant>
    (N, D) float32, zeros where status is not "ok". Other columns except the pixels pass through.
    With options.decode "gpu" the batch holds status, detail, path and encoded (device_decode's
    `encode_rows`) instead of pixels: the actor decodes the JPEGs once on its device for every
    variant and returns the resolved status and detail. `device` is where the pool plan runs it;
    inference runs at model.precision resolved for that device (clip.resolve_precision). A variant
    in `local` also gets its images' local score, embedding@local-mcm:<variant> (N, 1) float32,
    from the same forward pass."""

    options = DecodeOptions()

    def __init__(
        self,
        model: ModelConfig,
        specs: Mapping[str, CropSpec],
        *,
        device: str = "cpu",
        options: DecodeOptions | None = None,
        local: Mapping[str, LocalSpec] | None = None,
    ) -> None:
        self.options = options or DecodeOptions()
        if self.options.decode == "gpu":
            check_device_specs(specs.values())
        self.device = resolve_device(device)
        self.model, preprocess, self.weights = create_clip(model, self.device)
        self.specs = dict(specs)
        mine = variant_specs(crop_spec(preprocess), list(self.specs))
        if mine != self.specs:
            raise StageError(
                f"The crops were made with {self.specs} but {model.arch}'s open_clip preprocessing gives "
                f"{mine}; the open_clip versions of the driver and workers differ."
            )
        self.precision = resolve_precision(self.device, model.precision)
        spec = next(iter(self.specs.values()))
        probe = torch.zeros((1, *spec.out_size, 3), dtype=torch.uint8, device=self.device)
        self.dim = int(embed_crops(self.model, probe, spec, self.precision).shape[1])
        self.node = node_id()
        self.local = {}
        for variant, ls in (local or {}).items():
            last_block(self.model)  # a tower without local features fails here, naming the supported ones
            text = torch.from_numpy(np.array(ls.id_text, np.float32)).to(self.device)  # a writable copy
            self.local[variant] = (text, ls.temperature)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        crops, ok, rest = self._decoded(batch) if self.options.decode == "gpu" else self._moved(batch)
        for variant, spec in self.specs.items():
            out = np.zeros((len(ok), self.dim), dtype=np.float32)
            if variant in self.local:
                score = np.zeros((len(ok), 1), dtype=np.float32)
                if ok.any():
                    feats, local = embed_crops_local(
                        self.model, crops[variant], spec, self.precision, *self.local[variant]
                    )
                    out[ok], score[ok, 0] = feats.cpu().numpy(), local.cpu().numpy()
                rest[embedding_name(local_variant(variant))] = score
            elif ok.any():
                out[ok] = embed_crops(self.model, crops[variant], spec, self.precision).cpu().numpy()
            rest[embedding_name(variant)] = out
        rest[NODE] = np.full(len(ok), self.node)
        return rest

    def _moved(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], np.ndarray, dict[str, Any]]:
        """(each variant's crops of the ok rows on the device, the ok mask, the other columns)."""
        pixels = [pixels_column(v) for v in self.specs]
        require_columns(batch, ("status", *pixels), "ImageEmbedder")
        ok = np.asarray(batch["status"]) == OK
        moved = {}
        for variant in self.specs if ok.any() else ():
            crops = batch[pixels_column(variant)]
            if isinstance(crops, torch.Tensor):  # DataLoader: shared-memory, maybe pinned, tensor
                crops = crops if ok.all() else crops[torch.from_numpy(ok)]
            else:  # Ray: boolean indexing copies, so the tensor never aliases the read-only batch
                crops = torch.from_numpy(np.asarray(crops)[ok])
            moved[variant] = crops.to(self.device, non_blocking=crops.is_pinned())
        return moved, ok, {k: v for k, v in batch.items() if k not in pixels}

    def _decoded(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], np.ndarray, dict[str, Any]]:
        """`_moved` for images.decode "gpu": one decode on the device feeds every variant."""
        require_columns(batch, ("status", "detail", "path", ENCODED), "ImageEmbedder (images.decode 'gpu')")
        crops, status, detail = decode_payloads(batch, self.specs, self.options, device=self.device)
        ok = status == OK
        keep = torch.from_numpy(ok).to(self.device)
        rest = {k: v for k, v in batch.items() if k not in (ENCODED, "path")}
        rest["status"], rest["detail"] = status, detail
        return {v: c if ok.all() else c[keep] for v, c in crops.items()}, ok, rest


def image_pool_spec(images: ImagesConfig, model: ModelConfig) -> PoolSpec:
    """The embed-images pool: images.num_actors actors of images.gpus_per_actor GPU each, beside
    1-CPU decode tasks. CPU actors take 0.5 CPU, unlike the decode tasks: Ray fuses map operators
    with equal resources, which would run decoding inside the actor."""
    return PoolSpec(
        "embed-images",
        images.num_actors,
        images.gpus_per_actor,
        model.device,
        count_key="images.num_actors",
        gpus_key="images.gpus_per_actor",
        cpu_actor_cpus=0.5,
        task_cpus=1.0,
    )


def _results(columns: dict[str, np.ndarray], variants: Sequence[str]) -> dict[str, EmbedResult]:
    status, detail = columns["status"].astype(str), columns["detail"].astype(str)
    return {v: EmbedResult(status, detail, columns[embedding_name(v)]) for v in variants}


def _columns(variants: Sequence[str]) -> tuple[str, ...]:
    return ("status", "detail", *(embedding_name(v) for v in variants))


def embed_rows_ray(
    work: pa.Table,
    model: ModelConfig,
    plan: PoolPlan,
    *,
    batch_size: int,
    options: DecodeOptions,
    specs: Mapping[str, CropSpec],
    embedder_cls: type = ImageEmbedder,
    nodes: dict[str, int] | None = None,
    on_batch: Callable[[Mapping[str, np.ndarray]], None] | None = None,
    local: Mapping[str, LocalSpec] | None = None,
) -> dict[str, EmbedResult]:
    """Run `work` (columns row = 0..N-1, root, path, status) through decode tasks (one decode and
    one crop per variant of `specs` per file) and the actor pool of the fitted `plan`; returns each
    variant's rows in `work`'s order. The rows each Ray node's actors embedded are added to `nodes`;
    `on_batch` sees each batch of the pool's output once the reassembly has accepted it (the stage's
    checkpoints, clip/image_checkpoint.py). The variants of `local` also return their local score,
    as the pseudo-variant local_variant(v) (an "embedding" of dimension 1)."""
    import ray

    blocks = [work.slice(i, DECODE_BATCH) for i in range(0, work.num_rows, DECODE_BATCH)]
    decoded = ray.data.from_arrow(blocks).map_batches(
        cast(Any, decode_rows),
        fn_kwargs={"specs": dict(specs), "options": options},
        batch_size=DECODE_BATCH,
        num_cpus=plan.pool.task_cpus,
        batch_format="numpy",
        udf_modifying_row_count=False,
    )
    args: dict[str, Any] = {"model": model, "specs": dict(specs), "device": plan.device}
    if options.decode == "gpu":  # the actors decode; the tasks above only read bytes
        args["options"] = options
    if local:
        args["local"] = dict(local)
    pool = ActorPool(embedder_cls, args, plan, batch_size)
    batches = pool.apply(decoded).iter_batches(batch_size=None, batch_format="numpy")
    if on_batch is not None:
        batches = _observed(batches, on_batch)
    variants = [*specs, *(local_variant(v) for v in local or {})]
    columns = reassemble(batches, work.num_rows, [*_columns(variants), NODE], stage="embed-images")
    count_nodes(columns[NODE], nodes)
    return _results(columns, variants)


def _observed(
    batches: Iterable[Mapping[str, np.ndarray]], on_batch: Callable[[Mapping[str, np.ndarray]], None]
) -> Iterator[Mapping[str, np.ndarray]]:
    """`batches`, each handed to `on_batch` after its consumer has taken it (and checked its rows)."""
    for batch in batches:
        yield batch
        on_batch(batch)


class _DecodeDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(
        self, files: Sequence[tuple[str, str]], specs: Mapping[str, CropSpec], options: DecodeOptions
    ) -> None:
        self.files, self.specs, self.options = list(files), dict(specs), options

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, list[np.ndarray] | bytes, str, str, str]:
        """(row, crops, status, detail, path); with images.decode "gpu" the bytes for the embedder's
        device decoder (device_decode's `read_encoded`) in place of the crops."""
        root, path = self.files[i]
        if self.options.decode == "gpu":
            return i, *read_encoded(root, path, tuple(self.specs.values()), self.options), path
        crops, status, detail = read_and_decode(root, path, tuple(self.specs.values()), self.options)
        if crops is None:
            crops = [np.zeros((*spec.out_size, 3), np.uint8) for spec in self.specs.values()]
        return i, crops, status, detail, path


def _collate(
    items: list[tuple[int, list[np.ndarray] | bytes, str, str, str]], variants: Sequence[str]
) -> dict[str, Any]:
    rows, crops, status, detail, paths = zip(*items, strict=True)
    out = {ROW: np.array(rows), "status": np.array(status), "detail": np.array(detail)}
    if isinstance(crops[0], bytes):  # images.decode "gpu": the embedder decodes
        encoded = np.empty(len(crops), dtype=object)
        for i, payload in enumerate(crops):  # one by one: numpy would make them NUL-stripped bytes_
            encoded[i] = payload
        return {**out, "path": np.array(paths, dtype=object), ENCODED: encoded}
    # A tensor travels from the worker through shared memory; a numpy array would be pickled.
    pixels = {
        pixels_column(v): torch.from_numpy(np.stack([c[j] for c in crops])) for j, v in enumerate(variants)
    }
    return {**out, **pixels}


def embed_files_local(
    files: Sequence[tuple[str, str]],
    embedder: ImageEmbedder,
    options: DecodeOptions,
    *,
    workers: int = 4,
    batch_size: int = 256,
) -> dict[str, EmbedResult]:
    """The Ray stage without Ray: a torch DataLoader (`workers` decode processes) feeds `embedder`.
    `files` are (root, path) pairs; each variant's results come back in their order. With
    options.decode "gpu" the workers only read bytes and `embedder` (built with the same options)
    decodes them on its device."""
    if (options.decode == "gpu") != (embedder.options.decode == "gpu"):
        raise StageError(
            f"embed_files_local got decode '{options.decode}' but the embedder was built with "
            f"'{embedder.options.decode}'; pass the same DecodeOptions to both."
        )
    variants = list(embedder.specs)
    outputs = [*variants, *(local_variant(v) for v in embedder.local)]
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(files, embedder.specs, options),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=functools.partial(_collate, variants=variants),
        pin_memory=embedder.device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    batches = (embedder(batch) for batch in loader)
    return _results(reassemble(batches, len(files), _columns(outputs), stage="embed-images"), outputs)
