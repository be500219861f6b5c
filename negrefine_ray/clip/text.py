"""CLIP text embeddings for ID labels and negative-label candidates (methods.md 0.1-0.2, 2.3, 3.3).

Pure core: `encode_texts` (unnormalised CLIP text features, shortest exact sequence form),
`ensemble` (raw-mean of CSP/NegRefine/DNM or norm-mean of InterNeg/CLIP), `embed_labels`.
Ray adapter: `TextEmbedder` (column "text" -> column "embedding") and `embed_texts_ray` (a
pools.ActorPool; rows put back by pools.reassemble).
Cache: `TextEmbeddingCache`, Parquet files keyed by model, templates, ensembling, texts and precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np
import torch

from negrefine_ray.clip.model import (
    autocast,
    create_clip,
    get_tokenizer,
    register_bundled_configs,
    resolve_device,
    resolve_precision,
)
from negrefine_ray.config import ModelConfig, TextConfig
from negrefine_ray.core.templates import apply_templates
from negrefine_ray.core.vectors import l2_normalise
from negrefine_ray.distributed.pools import (
    NODE,
    ROW,
    ActorPool,
    PoolPlan,
    ResidentPool,
    count_nodes,
    node_id,
    reassemble,
    require_columns,
)
from negrefine_ray.errors import NegRefineError

Precision = Literal["fp32", "fp16", "bf16"]
EnsembleMode = Literal["raw-mean", "norm-mean"]
# Texts are tokenised and length-sorted in windows of this many, bounding the int64 token memory
# (77 x 8 bytes a text) while keeping batches of near-equal length.
SORT_WINDOW = 65536


def _causal_tower(model: torch.nn.Module) -> tuple[Any, str, int] | None:
    """(module holding the text tower's parts, pool type, eos id), or None when cutting the padding
    could change the output.

    open_clip's `encode_text` adds the full 77-row positional embedding and the 77x77 mask, so it
    rejects shorter inputs. With a causal mask and pooling at the end-of-text token, positions after
    that token never influence the pooled feature, so running on the first L tokens is exact.
    Bidirectional towers, padding masks, CoCa's appended CLS and 'first'/'last' pooling fall back.
    """
    text = getattr(model, "text", None)  # CustomTextCLIP keeps a TextTransformer; CLIP holds the parts
    src: Any = text if text is not None else model
    if not hasattr(src, "token_embedding") or not hasattr(src, "transformer"):
        return None
    pool = src.pool_type if text is not None else getattr(model, "text_pool_type", None)
    eos = src.eos_id if text is not None else getattr(model, "text_eos_id", None)
    unsafe = getattr(src, "cls_emb", None) is not None or getattr(src, "use_pad_mask", False)
    if src.attn_mask is None or pool not in ("argmax", "eos") or unsafe or (pool == "eos" and eos is None):
        return None
    return src, pool, -1 if eos is None else int(eos)


def _end_positions(tokens: torch.Tensor, pool_type: str, eos_id: int) -> torch.Tensor:
    """(B,) int64 position of the pooled token: argmax id (CLIP's EOT is the largest id) or the eos."""
    if pool_type == "eos":
        return tokens.eq(eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def _forward_short(tower: tuple[Any, str, int], tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's text forward on (B, L) tokens, L <= context length; returns (B, D) features."""
    src, pool_type, eos_id = tower
    dtype, length = src.transformer.get_cast_dtype(), tokens.shape[1]
    x = src.token_embedding(tokens).to(dtype) + src.positional_embedding[:length].to(dtype)
    x = src.transformer(x, attn_mask=src.attn_mask[:length, :length])
    # ln_final is per token, so pooling first gives the same result on 1 token instead of L.
    x = src.ln_final(x[torch.arange(x.shape[0], device=x.device), _end_positions(tokens, pool_type, eos_id)])
    if src.text_projection is None:
        return x
    if isinstance(src.text_projection, torch.nn.Linear):
        return src.text_projection(x)  # type: ignore[no-any-return]
    return x @ src.text_projection  # type: ignore[no-any-return]


def plan_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches over `lengths` (n,), longest first (stable), each at most `batch_size` long.

    Longest first makes an out-of-memory batch fail at once rather than at the end.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def text_embed_dim(arch: str) -> int:
    """D of an open_clip architecture's text features, read from its config (no model is built)."""
    import open_clip

    register_bundled_configs()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise NegRefineError(f"open_clip has no model config for '{arch}'; check model.arch.")
    return int(cfg["embed_dim"])


def encode_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 1024,
    device: str = "cpu",
    precision: str = "fp32",
    shortest: bool = True,
) -> np.ndarray:
    """UNNORMALISED CLIP text features (n, D) float32, row i for texts[i].

    With `shortest` (default) texts are sorted by token length within windows of SORT_WINDOW, each
    batch is cut to its longest sequence, and the tower runs on that length (exact for causal towers;
    see `_causal_tower`). `shortest=False` runs open_clip's `encode_text` on 77-token padding.
    `precision` fp16/bf16 means autocast on CUDA; on CPU everything runs in fp32.
    """
    if batch_size < 1:
        raise NegRefineError(f"batch_size = {batch_size}; it must be at least 1.")
    tower = _causal_tower(model) if shortest else None
    chunks = [np.empty((0, _output_dim(model)), dtype=np.float32)]
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(texts), SORT_WINDOW):
            tokens = tokenizer(list(texts[start : start + SORT_WINDOW]))
            chunks.append(_encode_window(model, tower, tokens, batch_size=batch_size, device=device))
    return np.concatenate(chunks)


def _encode_window(
    model: torch.nn.Module,
    tower: tuple[Any, str, int] | None,
    tokens: torch.Tensor,
    batch_size: int,
    device: str,
) -> np.ndarray:
    if tower is None:
        lengths = np.full(len(tokens), tokens.shape[1])
    else:
        lengths = _end_positions(tokens, tower[1], tower[2]).numpy() + 1
    order, parts = [], []
    for idx in plan_batches(lengths, batch_size):
        batch = tokens[torch.from_numpy(idx), : int(lengths[idx].max())].to(device)
        feats = _forward_short(tower, batch) if tower else cast(Any, model).encode_text(batch)
        order.append(idx)
        parts.append(feats.float().cpu().numpy())
    out = np.empty((len(tokens), parts[0].shape[1]), dtype=np.float32)
    out[np.concatenate(order)] = np.concatenate(parts)
    return out


def _output_dim(model: torch.nn.Module) -> int:
    proj = getattr(getattr(model, "text", model), "text_projection", None)
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    return int(getattr(model, "embed_dim", 0))


def ensemble(features: np.ndarray, n_templates: int, mode: EnsembleMode) -> np.ndarray:
    """Per-label embeddings (n_labels, D) float32, L2-normalised (methods.md 0.2).

    `features` is (n_labels * n_templates, D), label-major (row i*T + t = template t of label i, the
    layout of `templates.apply_templates`), unnormalised. raw-mean: normalise(mean_t g) (CSP,
    NegRefine, DNM); norm-mean: normalise(mean_t normalise(g)) (InterNeg, CLIP's recipe). Computed in
    float64; the references average in fp16 on GPU for negatives, which this does not replicate.
    """
    if mode not in ("raw-mean", "norm-mean"):
        raise NegRefineError(f"ensemble mode {mode!r} is unknown; use 'raw-mean' or 'norm-mean'.")
    if n_templates < 1 or features.ndim != 2 or features.shape[0] % n_templates:
        raise NegRefineError(
            f"features of shape {features.shape} cannot be split into groups of {n_templates} "
            f"templates; expected (n_labels * n_templates, D)."
        )
    grouped = features.astype(np.float64).reshape(-1, n_templates, features.shape[1])
    if mode == "norm-mean":
        grouped = l2_normalise(grouped)
    return l2_normalise(grouped.mean(axis=1)).astype(np.float32)


def embed_labels(
    model: torch.nn.Module,
    tokenizer: Any,
    labels: Sequence[str],
    templates: Sequence[str],
    mode: EnsembleMode,
    **encode_kwargs: Any,
) -> np.ndarray:
    """(n_labels, D) float32 normalised: every label through every template, then `ensemble`."""
    feats = encode_texts(model, tokenizer, apply_templates(labels, templates), **encode_kwargs)
    return ensemble(feats, len(templates), mode)


class TextEmbedder:
    """Ray Data actor: loads CLIP once, maps column "text" to "embedding" (B, D) float32 unnormalised,
    other columns passed through. `device` is where the pool plan runs it; inference runs at
    model.precision resolved for that device (clip.resolve_precision)."""

    def __init__(self, model: ModelConfig, text: TextConfig, *, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self.model, _, self.weights = create_clip(model, self.device)
        self.tokenizer = get_tokenizer(model.arch)
        self.precision = resolve_precision(self.device, model.precision)
        self.batch_size = text.batch_size
        self.node = node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_columns(batch, ("text",), "TextEmbedder")
        texts = [str(t) for t in batch["text"]]
        embedding = encode_texts(
            self.model, self.tokenizer, texts,
            batch_size=self.batch_size, device=self.device, precision=self.precision,
        )  # fmt: skip
        return {**batch, "embedding": embedding, NODE: np.full(len(texts), self.node)}


def text_pool(
    model: ModelConfig, text: TextConfig, plan: PoolPlan, actor: type = TextEmbedder
) -> ResidentPool:
    """The text actors of the fitted `plan`, started once: each loads CLIP once and encodes every
    text list the stage sends it (TextEncoder keeps it for the stage's whole run)."""
    return ResidentPool(
        ActorPool(actor, {"model": model, "text": text, "device": plan.device}, plan, text.batch_size)
    )


def embed_texts_ray(
    texts: Sequence[str],
    model: ModelConfig,
    text: TextConfig,
    plan: PoolPlan,
    *,
    actor: type = TextEmbedder,
    nodes: dict[str, int] | None = None,
    pool: ResidentPool | None = None,
) -> np.ndarray:
    """`encode_texts` on the text actors of the fitted `plan` (or the running `pool`), text.batch_size
    texts a batch; (n, D) float32 unnormalised, row i for texts[i] (batches come back in any order
    and are put back by index). The texts each Ray node encoded are added to `nodes`.
    """
    n = len(texts)
    if n == 0:
        return np.empty((0, text_embed_dim(model.arch)), dtype=np.float32)
    size, rows = text.batch_size, np.arange(n, dtype=np.int64)
    batches = [
        {ROW: rows[i : i + size], "text": np.array(list(texts[i : i + size]), dtype=object)}
        for i in range(0, n, size)
    ]
    own = pool is None
    actors = text_pool(model, text, plan, actor) if pool is None else pool
    try:
        out = reassemble(actors.map(batches), n, ["embedding", NODE], stage="text embedding")
    finally:
        if own:
            actors.close()
    count_nodes(out[NODE], nodes)
    return out["embedding"]
