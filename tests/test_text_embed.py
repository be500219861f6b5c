"""Text embeddings: the shortest-sequence encoder equals open_clip's 77-token encode_text, both
ensembling conventions by hand, order restoration, the Parquet cache, and one Ray round trip."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from negrefine_ray.clip.model import create_clip, get_tokenizer, register_bundled_configs, resolve_precision
from negrefine_ray.clip.text import (
    _causal_tower,
    embed_labels,
    embed_texts_ray,
    encode_texts,
    ensemble,
    plan_batches,
)
from negrefine_ray.clip.text_cache import TextEmbeddingCache, text_cache_key, texts_hash
from negrefine_ray.config import ModelConfig, TextConfig
from negrefine_ray.core.templates import CSP_ADJ4, CSP_NOUN8, apply_templates
from negrefine_ray.distributed.pools import PoolPlan
from negrefine_ray.distributed.resources import PoolRequest
from negrefine_ray.errors import NegRefineError

TINY = "nr-tiny-vit-2l"
TEXTS = [
    "the nice tench",
    "!",  # token id 0 is '!': lengths must come from the end-of-text position, not non-zero counts
    "a close-up photo of the nice great white shark, carcharodon carcharias.",
    "",
    "This is a gooey photo",
    " ".join(["very long"] * 60),  # over 77 tokens: truncated, end-of-text at position 76
    "a good photo with the nice biosafety level ",
    "x",
]


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    model, _, _ = create_clip(ModelConfig(arch=TINY, pretrained="none", init_seed=3))
    return model, get_tokenizer(TINY)


def _reference(model: torch.nn.Module, tokenizer: object, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return model.encode_text(tokenizer(texts)).numpy()  # type: ignore[operator, no-any-return]


def test_shortest_form_equals_open_clip_encode_text(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    assert _causal_tower(model) is not None
    got = encode_texts(model, tok, TEXTS, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, _reference(model, tok, TEXTS), rtol=0, atol=1e-5)
    # Padded to 77 tokens the computation is open_clip's own, batched differently: matmul kernels
    # may sum in another order per batch size (4.8e-7 seen on AMD EPYC), so equal within float32 noise.
    np.testing.assert_allclose(
        encode_texts(model, tok, TEXTS, batch_size=3, shortest=False),
        _reference(model, tok, TEXTS),
        rtol=0,
        atol=5e-6,
    )


def test_shortest_form_on_custom_text_tower() -> None:
    import open_clip

    register_bundled_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, force_custom_text=True).eval()
    tok = get_tokenizer(TINY)
    assert _causal_tower(model) is not None
    np.testing.assert_allclose(encode_texts(model, tok, TEXTS), _reference(model, tok, TEXTS), atol=1e-5)


def test_vit_b16_random_init_text_tower_matches() -> None:
    model, _, _ = create_clip(ModelConfig(arch="ViT-B-16", pretrained="none", init_seed=0))
    tok = get_tokenizer("ViT-B-16")
    texts = [*TEXTS[:3], "a photo of the nice maleficent landscape"]
    got = encode_texts(model, tok, texts, batch_size=2)
    assert got.shape == (4, 512)
    np.testing.assert_allclose(got, _reference(model, tok, texts), rtol=0, atol=1e-5)


def test_bidirectional_tower_falls_back_to_encode_text(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    bidirectional = copy.deepcopy(model)
    bidirectional.attn_mask = None  # type: ignore[assignment]
    assert _causal_tower(bidirectional) is None
    np.testing.assert_allclose(
        encode_texts(bidirectional, tok, TEXTS), _reference(bidirectional, tok, TEXTS), rtol=0, atol=5e-6
    )


def test_batches_are_sorted_longest_first_and_cover_every_row() -> None:
    lengths = np.array([3, 9, 3, 5, 9, 1, 5])
    batches = plan_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[1, 4, 3], [6, 0, 2], [5]]
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))


def test_order_is_restored_whatever_the_batching(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    one_by_one = np.concatenate([encode_texts(model, tok, [t]) for t in TEXTS])
    for batch_size in (1, 2, 5, 100):
        np.testing.assert_allclose(
            encode_texts(model, tok, TEXTS, batch_size=batch_size), one_by_one, atol=1e-5
        )
    assert encode_texts(model, tok, []).shape == (0, 32)


def test_raw_mean_by_hand() -> None:
    # label 0: templates (3, 4) and (1, 0) -> mean (2, 2) -> (0.7071, 0.7071)
    # label 1: (0, 10) and (2, 0) -> mean (1, 5) -> (1, 5) / sqrt(26)
    feats = np.array([[3, 4], [1, 0], [0, 10], [2, 0]], dtype=np.float32)
    got = ensemble(feats, 2, "raw-mean")
    expected = np.array([[1, 1], [1, 5]]) / np.array([[np.sqrt(2)], [np.sqrt(26)]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.dtype == np.float32


def test_norm_mean_by_hand() -> None:
    # label 0: (0.6, 0.8) and (1, 0) -> mean (0.8, 0.4) -> (2, 1) / sqrt(5)
    # label 1: (0, 1) and (1, 0) -> mean (0.5, 0.5) -> (0.7071, 0.7071)
    feats = np.array([[3, 4], [1, 0], [0, 10], [2, 0]], dtype=np.float32)
    got = ensemble(feats, 2, "norm-mean")
    expected = np.array([[2, 1], [1, 1]]) / np.array([[np.sqrt(5)], [np.sqrt(2)]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # One template: both conventions are plain normalisation.
    np.testing.assert_allclose(ensemble(feats, 1, "raw-mean"), ensemble(feats, 1, "norm-mean"))


def test_ensemble_rejects_bad_input() -> None:
    with pytest.raises(NegRefineError, match="groups of 3"):
        ensemble(np.zeros((4, 2), np.float32), 3, "raw-mean")
    with pytest.raises(NegRefineError, match="unknown"):
        ensemble(np.zeros((4, 2), np.float32), 2, "mean")  # type: ignore[arg-type]


def test_embed_labels_uses_label_major_templates(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    labels = ["tench", "gooey landscape"]
    raw = encode_texts(model, tok, apply_templates(labels, CSP_ADJ4))
    got = embed_labels(model, tok, labels, CSP_ADJ4, "raw-mean")
    expected = raw.reshape(2, 4, -1).mean(axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_cache_round_trip(tmp_path: Path) -> None:
    cache = TextEmbeddingCache(tmp_path / "text")
    texts = ["tench", "gooey landscape", "biosafety level "]
    emb = np.arange(3 * 5, dtype=np.float32).reshape(3, 5) / 7
    key = text_cache_key("random-init-seed0", TINY, CSP_NOUN8, "raw-mean", texts_hash(texts), "fp32")
    assert cache.get(key) is None
    path = cache.put(key, texts, emb)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    got_texts, got_emb = cache.get(key)  # type: ignore[misc]
    assert got_texts == texts
    np.testing.assert_array_equal(got_emb, emb)
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[5]"
    with pytest.raises(NegRefineError, match="expected"):
        cache.put(key, texts[:2], emb)


def test_cache_key_changes_with_every_input() -> None:
    base = dict(
        weights_identity="open_clip:ViT-B-16:openai",
        arch="ViT-B-16",
        templates=CSP_NOUN8,
        mode="raw-mean",
        texts_hash=texts_hash(["tench"]),
        precision="fp16",
    )
    key = text_cache_key(**base)  # type: ignore[arg-type]
    assert key == text_cache_key(**base)  # type: ignore[arg-type]
    changes = dict(
        weights_identity="sha256:abc",
        arch="ViT-B-32",
        templates=(*CSP_NOUN8[:-1], "the nice {}."),
        mode="norm-mean",
        texts_hash=texts_hash(["tench", "goldfish"]),
        precision="fp32",
    )
    for field, value in changes.items():
        assert text_cache_key(**{**base, field: value}) != key, field  # type: ignore[arg-type]
    assert resolve_precision("cpu", "fp16") == "fp32" and resolve_precision("cuda", "bf16") == "bf16"


@pytest.mark.ray
def test_ray_embedding_equals_local(ray_session: None, tiny: tuple[torch.nn.Module, object]) -> None:
    model, tok = tiny
    texts = [f"the nice {w}{i}" for i, w in enumerate(["tench", "daisy", "gooey landscape"] * 17)]
    cfg = ModelConfig(arch=TINY, pretrained="none", init_seed=3)
    plan = PoolPlan("cpu", PoolRequest("text embedding", 2, 0.5))
    got = embed_texts_ray(texts, cfg, TextConfig(batch_size=8), plan)
    np.testing.assert_allclose(got, encode_texts(model, tok, texts), atol=1e-5)
