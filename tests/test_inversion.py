"""Online textual inversion on the tiny random CLIP: the "$" slot from the tokenizer, the text forward
equal to open_clip's encode_text, falling loss, unit outputs, seeding, a frozen model, and a batch
equal to its images inverted one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negrefine_ray.clip.inversion import (
    OnlineInverter,
    _encode_with_pseudo,
    _text_tower,
    call_seed,
    draw_template_indices,
    init_pseudo_tokens,
    invert_images,
    optimise_pseudo_tokens,
    pseudo_token_id,
    token_width,
    tokenize_templates,
)
from negrefine_ray.clip.model import create_clip, get_tokenizer
from negrefine_ray.config import ModelConfig
from negrefine_ray.core.templates import IMAGENET80
from negrefine_ray.errors import NegRefineError

TINY = "nr-tiny-vit"


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    model, _, _ = create_clip(ModelConfig(arch=TINY, pretrained="none", init_seed=5))
    return model, get_tokenizer(TINY)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn((n, 32), generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True)


def test_slot_found_from_the_tokenizer(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    dollar = pseudo_token_id(tok)
    assert dollar == 259  # OpenAI BPE's "$</w>", the id InterNeg hard-codes
    chosen = ["a bad photo of a {}.", "the {} in a video game.", "{}.", "itap of my {}."]
    table = tokenize_templates(tok, chosen, _text_tower(model)[1:])
    # After the start token; 'itap' is two BPE tokens, so no word count gives the slot.
    assert table.slot.tolist() == [6, 2, 1, 5]
    assert (table.tokens[torch.arange(4), table.slot] == dollar).all()
    assert table.length.tolist() == [9, 9, 4, 8]  # up to and including the end-of-text token
    full = tokenize_templates(tok, IMAGENET80, _text_tower(model)[1:])
    assert (full.tokens[torch.arange(80), full.slot] == dollar).all()


def test_template_without_slot_is_rejected(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    with pytest.raises(NegRefineError, match="no '\\$' token"):
        invert_images(model, tok, _images(2), seed=0, templates=["a photo.", "a photo of a {}."])


def test_forward_equals_open_clip_encode_text(tiny: tuple[torch.nn.Module, object]) -> None:
    """With the "$" token's own embedding as pseudo token, the forward is open_clip's encode_text."""
    model, tok = tiny
    tower = _text_tower(model)
    table = tokenize_templates(tok, IMAGENET80[:6], tower[1:])
    cut = table.tokens[:, : int(table.length.max())]
    dollar = model.token_embedding.weight[pseudo_token_id(tok)].expand(6, -1)  # type: ignore[union-attr, index]
    with torch.no_grad():
        got = _encode_with_pseudo(tower, cut, table.slot, dollar + 0.0)
        want = model.encode_text(table.tokens)  # type: ignore[operator]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_loss_falls_outputs_unit_and_seeded(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    images = _images(8)
    feats, losses = invert_images(model, tok, images, seed=1, steps=10, return_losses=True)
    assert feats.shape == (8, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(8))
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.05
    final = float((1 - (feats * images).sum(-1)).mean())
    assert final < losses[0]
    again = invert_images(model, tok, images, seed=1)
    torch.testing.assert_close(again, feats, rtol=0, atol=0)
    other = invert_images(model, tok, images, seed=2)
    assert (other - feats).abs().max() > 1e-3
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_draws_and_init_are_documented_streams() -> None:
    import random

    rng = random.Random(7)
    want = [rng.choices(range(80), k=3) for _ in range(4)]
    assert draw_template_indices(3, 4, n_templates=80, seed=7).tolist() == want
    init = init_pseudo_tokens(3, 5, seed=7, std=0.02)
    torch.testing.assert_close(init, torch.randn((3, 5), generator=torch.Generator().manual_seed(7)) * 0.02)


def test_batch_equals_images_inverted_separately(tiny: tuple[torch.nn.Module, object]) -> None:
    """The images of a batch share only AdamW's eps (the mean's 1/n scales each gradient): given the
    same per-image template draws and initial tokens, the batch matches single-image runs."""
    model, tok = tiny
    images = _images(3, seed=4)
    idx = draw_template_indices(3, 6, n_templates=80, seed=11)
    init = init_pseudo_tokens(3, token_width(model), seed=11)
    joint = optimise_pseudo_tokens(model, tok, images, template_idx=idx, init=init)
    for i in range(3):
        alone = optimise_pseudo_tokens(
            model, tok, images[i : i + 1], template_idx=idx[:, i : i + 1], init=init[i : i + 1]
        )
        torch.testing.assert_close(alone.features[0], joint.features[i], rtol=0, atol=1e-4)
        torch.testing.assert_close(alone.pseudo_tokens[0], joint.pseudo_tokens[i], rtol=0, atol=1e-4)


def test_online_inverter_numpy_callback(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    images = _images(4).numpy()
    invert = OnlineInverter(model, tok, seed=3, steps=3)
    first, second = invert(images), invert(images)
    assert first.dtype == np.float32 and first.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert invert.calls == 2 and not np.allclose(first, second)  # a fresh seed per call
    want = invert_images(model, tok, torch.from_numpy(images), seed=call_seed(3, 1), steps=3)
    np.testing.assert_array_equal(second, want.numpy())
    assert invert(np.zeros((0, 32), dtype=np.float32)).shape == (0, 32)
    assert call_seed(0, 1) != call_seed(1, 0)


def test_runs_inside_a_callers_inference_mode(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    want = invert_images(model, tok, _images(2), seed=0, steps=2)
    with torch.inference_mode():
        got = invert_images(model, tok, _images(2), seed=0, steps=2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(NegRefineError, match="D = 16"):
        invert_images(model, tok, _images(2)[:, :16], seed=0, steps=1)
