"""CLIP image encoding for the embed-images stage: uint8 crops -> L2-normalised embeddings.

Pure core `embed_crops` (torch); `ImageEmbedder`, the actor (batch columns pixels, status ->
embedding, other columns except pixels passed through); and two drivers that return rows in order:
`embed_rows_ray` (CPU decode tasks feeding a pools.ActorPool, ray_vllm.md 1.4) and `embed_files_local`
(the same actor fed by a torch DataLoader, where Ray is absent: jobs/bench uses it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch

from negrefine_ray.clip.image_cache import EmbedResult
from negrefine_ray.clip.model import autocast, create_clip, resolve_device, resolve_precision
from negrefine_ray.clip.preprocess import (
    OK,
    CropSpec,
    DecodeOptions,
    crop_spec,
    decode_rows,
    normalise,
    read_and_decode,
)
from negrefine_ray.config import ImagesConfig, ModelConfig
from negrefine_ray.errors import StageError
from negrefine_ray.pools import ROW, ActorPool, PoolPlan, PoolSpec, reassemble, require_columns

DECODE_BATCH = 64  # rows per decode task: ~10 MB of 224x224 crops, small enough to stream
EMBED_COLUMNS = ("embedding", "status", "detail")  # what the stage keeps of each row


def embed_crops(model: torch.nn.Module, crops: torch.Tensor, spec: CropSpec, precision: str) -> torch.Tensor:
    """(N, H, W, 3) uint8 on the model's device -> (N, D) float32 L2-normalised image embeddings.

    Normalisation runs in fp32 on the device; encode_image under fp16/bf16 autocast on CUDA.
    """
    with torch.inference_mode(), autocast(crops.device.type, precision):
        feats = model.encode_image(normalise(crops, spec))  # type: ignore[operator]
    return torch.nn.functional.normalize(feats.float(), dim=-1)


class ImageEmbedder:
    """Actor: loads CLIP once; batch columns pixels (N, H, W, 3) uint8 (numpy from Ray, a CPU tensor
    from the DataLoader) + status (N,) -> embedding (N, D) float32, zeros where status is not "ok".
    Other columns except pixels pass through. `device` is where the pool plan runs it; inference
    runs at model.precision resolved for that device (clip.resolve_precision)."""

    def __init__(self, model: ModelConfig, spec: CropSpec, *, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self.model, preprocess, self.weights = create_clip(model, self.device)
        self.spec = spec
        if crop_spec(preprocess) != self.spec:
            raise StageError(
                f"The crops were made with {self.spec} but {model.arch}'s open_clip preprocessing is "
                f"{crop_spec(preprocess)}; the open_clip versions of the driver and workers differ."
            )
        self.precision = resolve_precision(self.device, model.precision)
        h, w = self.spec.out_size
        probe = torch.zeros((1, h, w, 3), dtype=torch.uint8, device=self.device)
        self.dim = int(embed_crops(self.model, probe, self.spec, self.precision).shape[1])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        require_columns(batch, ("pixels", "status"), "ImageEmbedder")
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


def _result(columns: dict[str, np.ndarray]) -> EmbedResult:
    return EmbedResult(columns["status"].astype(str), columns["detail"].astype(str), columns["embedding"])


def embed_rows_ray(
    work: pa.Table,
    model: ModelConfig,
    plan: PoolPlan,
    *,
    batch_size: int,
    options: DecodeOptions,
    spec: CropSpec,
    embedder_cls: type = ImageEmbedder,
) -> EmbedResult:
    """Run `work` (columns row = 0..N-1, root, path, status) through decode tasks and the actor pool
    of the fitted `plan`; rows come back in `work`'s order."""
    import ray

    blocks = [work.slice(i, DECODE_BATCH) for i in range(0, work.num_rows, DECODE_BATCH)]
    decoded = ray.data.from_arrow(blocks).map_batches(
        cast(Any, decode_rows),
        fn_kwargs={"spec": spec, "options": options},
        batch_size=DECODE_BATCH,
        num_cpus=plan.pool.task_cpus,
        batch_format="numpy",
        udf_modifying_row_count=False,
    )
    pool = ActorPool(embedder_cls, {"model": model, "spec": spec, "device": plan.device}, plan, batch_size)
    batches = pool.apply(decoded).iter_batches(batch_size=None, batch_format="numpy")
    return _result(reassemble(batches, work.num_rows, EMBED_COLUMNS, stage="embed-images"))


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
        ROW: np.array(rows),
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
    batches = (embedder(batch) for batch in loader)
    return _result(reassemble(batches, len(files), EMBED_COLUMNS, stage="embed-images"))
