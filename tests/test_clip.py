"""CLIP loading: the local-checkpoint path a user takes, and clear failures for bad checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from negrefine_ray.clip.model import create_clip, get_tokenizer, resolve_weights
from negrefine_ray.config import ModelConfig
from negrefine_ray.errors import NegRefineError

TINY = "nr-tiny-vit"


def _embed(model: torch.nn.Module, arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = get_tokenizer(arch)(["a photo of a tench", "the nice daisy"])
    images = torch.linspace(-1, 1, 2 * 3 * 224 * 224).reshape(2, 3, 224, 224)
    with torch.no_grad():
        return model.encode_text(tokens), model.encode_image(images)


def test_local_checkpoint_gives_the_saved_models_embeddings(tmp_path: Path) -> None:
    source, _, _ = create_clip(ModelConfig(arch=TINY, pretrained="none", init_seed=123))
    ckpt = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), ckpt)

    loaded, preprocess, weights = create_clip(ModelConfig(arch=TINY, pretrained=str(ckpt)))
    assert weights.kind == "file" and weights.identity.startswith("sha256:")
    expected, got = _embed(source, TINY), _embed(loaded, TINY)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert preprocess is not None


def test_random_init_is_reproducible_from_its_seed() -> None:
    a, _, wa = create_clip(ModelConfig(arch=TINY, pretrained="none", init_seed=1))
    b, _, _ = create_clip(ModelConfig(arch=TINY, pretrained="none", init_seed=1))
    c, _, _ = create_clip(ModelConfig(arch=TINY, pretrained="none", init_seed=2))
    assert wa.is_random and wa.identity == "random-init-seed1"
    assert torch.equal(_embed(a, TINY)[0], _embed(b, TINY)[0])
    assert not torch.equal(_embed(a, TINY)[0], _embed(c, TINY)[0])


def test_truncated_checkpoint_fails_clearly(tmp_path: Path) -> None:
    model, _, _ = create_clip(ModelConfig(arch=TINY, pretrained="none"))
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(NegRefineError, match=r"unreadable|could not be loaded"):
        create_clip(ModelConfig(arch=TINY, pretrained=str(ckpt)))


def test_checkpoint_of_another_architecture_fails_clearly(tmp_path: Path) -> None:
    other, _, _ = create_clip(ModelConfig(arch="nr-tiny-vit-2l", pretrained="none"))
    ckpt = tmp_path / "two-layer.pt"
    torch.save(other.state_dict(), ckpt)
    with pytest.raises(NegRefineError, match=f"does not match architecture '{TINY}'"):
        create_clip(ModelConfig(arch=TINY, pretrained=str(ckpt)))


def test_missing_checkpoint_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(NegRefineError, match="no such file exists"):
        resolve_weights(ModelConfig(arch=TINY, pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(NegRefineError, match="Did you mean 'ViT-B-16'"):
        resolve_weights(ModelConfig(arch="ViT-B-61"))
    with pytest.raises(NegRefineError, match="Did you mean 'openai'"):
        resolve_weights(ModelConfig(arch="ViT-B-16", pretrained="opnai"))


def test_pretrained_tag_is_identified_without_download() -> None:
    weights = resolve_weights(ModelConfig(arch="ViT-B-16", pretrained="openai"))
    # OpenAI's weights were trained with QuickGELU, which open_clip's ViT-B-16 config lacks: the
    # model is built with it (as the references' clip.load), and the identity (every cache key) says so
    assert (weights.kind, weights.identity, weights.quick_gelu) == (
        "tag", "open_clip:ViT-B-16:openai:quickgelu", True
    )  # fmt: skip
    for arch, tag in (("ViT-B-16-quickgelu", "openai"), ("ViT-B-16", "laion2b_s34b_b88k")):
        weights = resolve_weights(ModelConfig(arch=arch, pretrained=tag))
        assert (weights.identity, weights.quick_gelu) == (f"open_clip:{arch}:{tag}", False)
    assert resolve_weights(ModelConfig(arch="RN50", pretrained="openai")).quick_gelu


def test_openai_weights_are_loaded_into_a_quickgelu_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_clip asks open_clip for QuickGELU with OpenAI's weights under a GELU name. A test double
    stands in for open_clip's download (no network here): it records the call and builds the model
    without weights, so the activation it would have is checked."""
    import open_clip

    calls: list[dict[str, object]] = []
    real = open_clip.create_model_and_transforms

    def without_download(arch: str, pretrained: str | None = None, **kw: object) -> object:
        calls.append({"arch": arch, "pretrained": pretrained, **kw})
        return real(arch, pretrained=None, **kw)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", without_download)
    model, _, _ = create_clip(ModelConfig(arch="ViT-B-16", pretrained="openai"))
    assert calls[0]["force_quick_gelu"] is True and calls[0]["pretrained"] == "openai"
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    create_clip(ModelConfig(arch="ViT-B-16", pretrained="laion2b_s34b_b88k"))
    assert calls[1]["force_quick_gelu"] is False
