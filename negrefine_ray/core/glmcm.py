"""GL-MCM (IJCV 2025, AtsuMiyai/GL-MCM; methods.md Appendix C): MCM on CLIP's global image feature
plus lambda x L-MCM, the maximum over the patches and ID labels of the softmax of the patches' local
features' raw cosines to the ID prompts.

The local features are those of the reference's modified CLIP (C.3). For open_clip ViTs: with z the
last residual block's input tokens, u = z + out_proj(W_v LN_1(z) + b_v) (the block with its attention
matrix replaced by the identity, each token attending only to itself), v = u + MLP(LN_2(u)) (residual
and MLP kept, layer scales where the model has them), and l_p = ln_post(v_p) @ proj for every patch
token p (the class token dropped). For open_clip's ModifiedResNet (RN50, RN101...): with h the attention
pool's input (layer4's output), l_p = c_proj(v_proj(h_p)) at every position p, without the positional
embedding or the attention. The global feature is the model's own, unchanged.

The image actors compute L-MCM where the images are encoded (`encode_with_local`, `lmcm`) and keep one
number per image; the score stage adds the global MCM (`glmcm`).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch

from negrefine_ray.errors import ConfigError

SUPPORTED = (
    "open_clip ViT models (ViT-B-16, ViT-B-32, ViT-L-14 and the like) and ModifiedResNet models "
    "(RN50, RN101, RN50x4 and the like)"
)


def _resnet_pool(model: torch.nn.Module) -> Any:
    """The attention pool of `model`'s ModifiedResNet image tower, or None."""
    pool = getattr(getattr(model, "visual", None), "attnpool", None)
    return pool if all(hasattr(pool, a) for a in ("v_proj", "c_proj")) else None


def last_block(model: torch.nn.Module) -> Any:
    """The module whose input the local features come from: the last residual block of a ViT image
    tower, or a ModifiedResNet's attention pool; else a ConfigError naming what is supported."""
    pool = _resnet_pool(model)
    if pool is not None:
        return pool
    visual = getattr(model, "visual", None)
    blocks: Any = getattr(getattr(visual, "transformer", None), "resblocks", None)
    attn = getattr(blocks[-1], "attn", None) if blocks else None
    if (
        not isinstance(attn, torch.nn.MultiheadAttention)
        or not hasattr(visual, "ln_post")
        or getattr(visual, "proj", None) is None
        or getattr(visual, "attn_pool", None) is not None
        or hasattr(blocks[-1], "ln_1_kv")
    ):
        raise ConfigError(
            f"GL-MCM and L-MCM need the local features of an image tower; {type(visual).__name__} has "
            f"none this project builds. Supported: {SUPPORTED}."
        )
    return blocks[-1]


def value_path(block: Any, z: torch.Tensor) -> torch.Tensor:
    """The last block on tokens z (B, L, C) with its attention replaced by each token's own value."""
    c = z.shape[-1]
    attn = block.attn
    values = torch.nn.functional.linear(
        block.ln_1(z), attn.in_proj_weight[2 * c :], attn.in_proj_bias[2 * c :]
    )
    u = z + block.ls_1(attn.out_proj(values))
    return u + block.ls_2(block.mlp(block.ln_2(u)))


def encode_with_local(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(global (B, D), local (B, P, D)) image features of normalised pixels, unnormalised, in the
    model's dtype: the global one from the model's own forward pass, the local ones from the last
    block's input tokens, captured by a hook on that pass."""
    block, visual = last_block(model), cast(Any, model).visual
    captured: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        global_feats = model.encode_image(pixels)  # type: ignore[operator]
    finally:
        handle.remove()
    z = captured[-1]
    if block is _resnet_pool(model):  # (B, C, H, W) -> every position's value, projected
        h = z.permute(0, 2, 3, 1).flatten(1, 2)
        return global_feats, block.c_proj(block.v_proj(h))
    if not getattr(visual.transformer, "batch_first", True):
        z = z.permute(1, 0, 2)  # LND -> NLD
    local = visual.ln_post(value_path(block, z)[:, 1:]) @ visual.proj
    return global_feats, local


def lmcm(local: torch.Tensor, id_text: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """L-MCM (C.4): (B,) float32 = max over patches p and labels k of softmax_k(cos(l_p, t_k) / T), from
    local features (B, ..., D) and ID prompt features (K, D), both L2-normalised here in float32 as
    the reference does (no logit scale: softmax over raw cosines)."""
    if not temperature > 0:
        raise ConfigError(f"glmcm.temperature must be > 0; got {temperature}.")
    feats = local.float().flatten(1, -2)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    text = id_text.float()
    text = text / text.norm(dim=-1, keepdim=True)
    return torch.softmax(feats @ text.T / temperature, dim=-1).amax(dim=(1, 2))


def glmcm(mcm: np.ndarray, local_mcm: np.ndarray, lambda_local: float = 0.5) -> np.ndarray:
    """GL-MCM (C.4): MCM(x) + lambda x L-MCM(x), (N,) float64; larger = more in-distribution."""
    return np.asarray(mcm, np.float64) + lambda_local * np.asarray(local_mcm, np.float64)
