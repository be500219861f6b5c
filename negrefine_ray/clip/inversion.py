"""InterNeg's online textual inversion (OTI, methods.md 5.5 steps 3-4): each activated image gets one
pseudo word embedding, optimised so that CLIP's frozen text tower, reading "<template with $>" with the
"$" token's embedding replaced by it, matches the image. Input: (n, D) image embeddings; output: (n, D)
unit text features. All images of a call share one optimisation, one batched text forward per step.

Pure core: `invert_images` (draws, then `optimise_pseudo_tokens`). Callback: `OnlineInverter`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from negrefine_ray.clip.model import autocast, create_clip, get_tokenizer, resolve_device, resolve_precision
from negrefine_ray.clip.text import _causal_tower, _end_positions
from negrefine_ray.config import ModelConfig
from negrefine_ray.core.templates import IMAGENET80
from negrefine_ray.errors import NegRefineError

PSEUDO_WORD = "$"
# InterNeg formats its templates with " $ " (spaces included), e.g. 'a bad photo of a  $ .'.
PSEUDO_FILL = f" {PSEUDO_WORD} "


def pseudo_token_id(tokenizer: Any) -> int:
    """The id of the "$" word token: the one id that tokenising "$" adds to tokenising "" (the start,
    end and padding ids are shared). InterNeg hard-codes 259, which only holds for OpenAI's BPE."""
    alone = set(tokenizer([PSEUDO_WORD])[0].tolist())
    added = alone - set(tokenizer([""])[0].tolist())
    if len(added) != 1:
        raise NegRefineError(
            f"The tokenizer turns {PSEUDO_WORD!r} into token ids {sorted(added)}; textual inversion needs "
            f"it to be exactly one word token. Use a CLIP architecture with a BPE tokenizer."
        )
    return added.pop()


@dataclass(frozen=True)
class TemplateTokens:
    """The templates filled with " $ ", tokenised once: `tokens` (T, C) int64, `slot` (T,) position of
    the first "$" token (the one InterNeg replaces), `length` (T,) tokens up to the pooled one."""

    tokens: torch.Tensor
    slot: torch.Tensor
    length: torch.Tensor


def tokenize_templates(tokenizer: Any, templates: Sequence[str], pool: tuple[str, int]) -> TemplateTokens:
    """Tokenise every template once; raise when one has no "$" token left (no "{}" in it, or the
    tokenizer truncated or merged it), naming the template."""
    if not templates:
        raise NegRefineError("No templates given for textual inversion; pass e.g. core.templates.IMAGENET80.")
    tokens = tokenizer([t.format(PSEUDO_FILL) for t in templates])
    is_slot = tokens.eq(pseudo_token_id(tokenizer))
    missing = [templates[i] for i in torch.nonzero(~is_slot.any(dim=1)).flatten().tolist()]
    if missing:
        raise NegRefineError(
            f"Template(s) {missing[:3]} give no {PSEUDO_WORD!r} token when formatted with {PSEUDO_FILL!r}; "
            f"every inversion template needs one '{{}}' that stays a separate word ('a photo of a {{}}.')."
        )
    length = _end_positions(tokens, *pool) + 1
    return TemplateTokens(tokens, is_slot.int().argmax(dim=1), length)


def draw_template_indices(n: int, steps: int, *, n_templates: int, seed: int) -> np.ndarray:
    """(steps, n) int64 template indices. Draw order: one `random.Random(seed)`; step by step, one
    `rng.choices(range(n_templates), k=n)` (image 0 first), as InterNeg's `random.choices` per step."""
    rng = random.Random(seed)
    return np.array([rng.choices(range(n_templates), k=n) for _ in range(steps)], dtype=np.int64).reshape(
        steps, n
    )


def init_pseudo_tokens(n: int, width: int, *, seed: int, std: float = 0.02) -> torch.Tensor:
    """(n, width) float32 on CPU, N(0, std^2), from a `torch.Generator` seeded with `seed` (row-major:
    image 0's width values first), so the draw is the same on every device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, width), generator=gen) * std


@dataclass(frozen=True)
class InversionResult:
    """`features` (n, D) float32 unit: text features of the last step's templates with the final pseudo
    tokens; `pseudo_tokens` (n, W) float32; `losses` the mean(1 - cos) of each step, before its update."""

    features: torch.Tensor
    pseudo_tokens: torch.Tensor
    losses: tuple[float, ...]


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters set to requires_grad=False for the block, so only the pseudo tokens get gradients
    (and the forward saves nothing for weight gradients); the caller's flags are restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _encode_with_pseudo(
    tower: tuple[Any, str, int], tokens: torch.Tensor, slot: torch.Tensor, pseudo: torch.Tensor
) -> torch.Tensor:
    """open_clip's causal text forward on (n, L) tokens with row i's token at `slot[i]` embedded as
    `pseudo[i]`; (n, D) unnormalised. Same steps as clip.text._forward_short (cast, positional
    embedding and mask cut to L, ln_final at the pooled token, projection)."""
    src, pool_type, eos_id = tower
    dtype, length = src.transformer.get_cast_dtype(), tokens.shape[1]
    x = src.token_embedding(tokens).to(dtype)
    rows = torch.arange(len(tokens), device=tokens.device)
    x = x.index_put((rows, slot), pseudo.to(dtype))  # out of place, so autograd reaches `pseudo`
    x = x + src.positional_embedding[:length].to(dtype)
    x = src.transformer(x, attn_mask=src.attn_mask[:length, :length])
    x = src.ln_final(x[rows, _end_positions(tokens, pool_type, eos_id)])
    if src.text_projection is None:
        return x  # type: ignore[no-any-return]
    if isinstance(src.text_projection, torch.nn.Linear):
        return src.text_projection(x)  # type: ignore[no-any-return]
    return x @ src.text_projection  # type: ignore[no-any-return]


def _text_tower(model: torch.nn.Module) -> tuple[Any, str, int]:
    tower = _causal_tower(model)
    if tower is None:
        raise NegRefineError(
            f"Textual inversion needs open_clip's causal text transformer pooled at the end-of-text token; "
            f"{type(model).__name__} has another text tower. Use a CLIP architecture such as ViT-B-16."
        )
    return tower


def optimise_pseudo_tokens(
    model: torch.nn.Module,
    tokenizer: Any,
    image_emb: torch.Tensor,
    *,
    template_idx: np.ndarray,
    init: torch.Tensor,
    templates: Sequence[str] = IMAGENET80,
    lr: float = 2e-2,
    weight_decay: float = 0.01,
    precision: str = "fp32",
) -> InversionResult:
    """OTI with given draws: `template_idx` (steps, n) indices into `templates`, `init` (n, W) start.

    AdamW(lr, weight_decay) over the (n, W) pseudo tokens jointly; step s feeds templates
    `template_idx[s]`, cut to the longest of the n sequences, in one batched forward; loss =
    mean_i (1 - cos(text_i, image_i)). fp16 runs under autocast with a GradScaler as InterNeg does,
    bf16 under autocast; on CPU everything is fp32. Images interact only through AdamW's eps (the
    mean scales each image's gradient by 1/n), so a batch matches separate runs to float noise.
    """
    _check_draws(image_emb, template_idx, init, len(templates))
    tower = _text_tower(model)
    table = tokenize_templates(tokenizer, templates, tower[1:])
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler("cuda") if resolve_precision(str(device), precision) == "fp16" else None
    losses: list[float] = []
    # Leaving inference mode before copying the inputs lets this run inside a caller's inference_mode.
    with torch.inference_mode(False), torch.enable_grad(), _frozen(model):
        target = image_emb.detach().to(device=device, dtype=torch.float32).clone()
        pseudo = torch.nn.Parameter(init.detach().to(device=device, dtype=torch.float32).clone())
        optimiser = torch.optim.AdamW([pseudo], lr=lr, weight_decay=weight_decay)
        for idx in torch.from_numpy(np.asarray(template_idx, dtype=np.int64)):
            tokens, slot = _step_tokens(table, idx, device)
            optimiser.zero_grad(set_to_none=True)
            with autocast(str(device), precision):
                text = _encode_with_pseudo(tower, tokens, slot, pseudo)
            if text.shape[1] != target.shape[1]:
                raise NegRefineError(
                    f"image_emb has D = {target.shape[1]} but the text tower gives {text.shape[1]}; "
                    f"invert image embeddings made with the same CLIP model."
                )
            loss = (1.0 - F.cosine_similarity(text.float(), target, dim=-1)).mean()
            losses.append(float(loss.detach()))
            if scaler is None:
                loss.backward()
                optimiser.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
        with torch.no_grad(), autocast(str(device), precision):
            final = _encode_with_pseudo(tower, tokens, slot, pseudo)
    features = F.normalize(final.float(), dim=-1).to(image_emb.device)
    return InversionResult(features, pseudo.detach().to(image_emb.device), tuple(losses))


def _check_draws(
    image_emb: torch.Tensor, template_idx: np.ndarray, init: torch.Tensor, n_templates: int
) -> None:
    n = len(image_emb)
    shapes_fit = image_emb.ndim == 2 and template_idx.ndim == 2 and template_idx.shape[1] == n
    if not shapes_fit or template_idx.shape[0] < 1:
        raise NegRefineError(
            f"image_emb {tuple(image_emb.shape)} and template_idx {template_idx.shape} do not fit; "
            f"expected (n, D) and (steps >= 1, n)."
        )
    if template_idx.size and not 0 <= template_idx.min() <= template_idx.max() < n_templates:
        raise NegRefineError(f"template_idx has values outside [0, {n_templates}), the template count.")
    if init.ndim != 2 or init.shape[0] != n:
        raise NegRefineError(f"init has shape {tuple(init.shape)}; expected (n = {n}, token width).")


def _step_tokens(table: TemplateTokens, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    length = int(table.length[idx].max())
    return table.tokens[idx, :length].to(device), table.slot[idx].to(device)


def token_width(model: torch.nn.Module) -> int:
    """W, the width of the text tower's token embeddings (the pseudo token's size)."""
    return int(_text_tower(model)[0].token_embedding.embedding_dim)


@overload
def invert_images(
    model: torch.nn.Module,
    tokenizer: Any,
    image_emb: torch.Tensor,
    *,
    seed: int,
    templates: Sequence[str] = ...,
    steps: int = ...,
    lr: float = ...,
    weight_decay: float = ...,
    init_std: float = ...,
    precision: str = ...,
    return_losses: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def invert_images(
    model: torch.nn.Module,
    tokenizer: Any,
    image_emb: torch.Tensor,
    *,
    seed: int,
    templates: Sequence[str] = ...,
    steps: int = ...,
    lr: float = ...,
    weight_decay: float = ...,
    init_std: float = ...,
    precision: str = ...,
    return_losses: Literal[True],
) -> tuple[torch.Tensor, tuple[float, ...]]: ...


def invert_images(
    model: torch.nn.Module,
    tokenizer: Any,
    image_emb: torch.Tensor,
    *,
    seed: int,
    templates: Sequence[str] = IMAGENET80,
    steps: int = 10,
    lr: float = 2e-2,
    weight_decay: float = 0.01,
    init_std: float = 0.02,
    precision: str = "fp32",
    return_losses: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, tuple[float, ...]]:
    """(n, D) float32 unit text features inverted from `image_emb` (n, D) (methods.md 5.5 steps 3-4).

    From `seed`: templates by `draw_template_indices`, initial pseudo tokens by `init_pseudo_tokens`
    (N(0, init_std^2)); then `optimise_pseudo_tokens` for `steps` AdamW steps. Each output row is the
    text feature of that image's last-step template with its final pseudo token, as InterNeg returns.
    With `return_losses`, also the per-step mean(1 - cos) (steps,). n = 0 gives (0, D).
    """
    if image_emb.ndim != 2:
        raise NegRefineError(f"image_emb has shape {tuple(image_emb.shape)}; expected (n, D).")
    if steps < 1:
        raise NegRefineError(f"steps = {steps}; textual inversion needs at least 1 step.")
    n = len(image_emb)
    if n == 0:
        empty = torch.empty((0, image_emb.shape[1]), dtype=torch.float32, device=image_emb.device)
        return (empty, ()) if return_losses else empty
    result = optimise_pseudo_tokens(
        model, tokenizer, image_emb,
        template_idx=draw_template_indices(n, steps, n_templates=len(templates), seed=seed),
        init=init_pseudo_tokens(n, token_width(model), seed=seed, std=init_std),
        templates=templates, lr=lr, weight_decay=weight_decay, precision=precision,
    )  # fmt: skip
    return (result.features, result.losses) if return_losses else result.features


def call_seed(seed: int, call: int) -> int:
    """The seed of an `OnlineInverter`'s `call`-th inversion (0-based): distinct for every (seed, call)
    pair, unlike seed + call, which would repeat seed 1's draws one call late under seed 0."""
    return int(np.random.SeedSequence([seed, call]).generate_state(1, dtype=np.uint32)[0])


class OnlineInverter:
    """`invert(image_emb (n, D) np) -> (n, D) float32 unit` for an online loop (core.interneg's
    `run_online`). Call k (0-based) inverts with seed `call_seed(seed, k)`, so a run is reproducible
    from `seed` and the order of calls. InterNeg instead reseeds CUDA to 0 each batch (the same initial
    tokens every batch) and draws templates from one continuing global `random` stream."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, seed: int, **options: Any) -> None:
        self.model, self.tokenizer, self.seed, self.options = model, tokenizer, seed, options
        self.calls = 0

    @classmethod
    def load(cls, cfg: ModelConfig, *, seed: int, device: str = "auto", **options: Any) -> OnlineInverter:
        """Build CLIP from `cfg` on `device` and invert at cfg.precision (fp32 on CPU)."""
        resolved = resolve_device(device)
        model, _, _ = create_clip(cfg, resolved)
        return cls(model, get_tokenizer(cfg.arch), seed=seed, **{"precision": cfg.precision, **options})

    def __call__(self, image_emb: np.ndarray) -> np.ndarray:
        seed = call_seed(self.seed, self.calls)
        self.calls += 1
        device = next(self.model.parameters()).device
        emb = torch.as_tensor(np.asarray(image_emb, dtype=np.float32), device=device)
        out = invert_images(self.model, self.tokenizer, emb, seed=seed, **self.options)
        return out.cpu().numpy()  # type: ignore[no-any-return]
