"""GL-MCM and L-MCM (methods.md Appendix C) against the reference's own code: its scoring function
(`get_ood_scores_clip`, cut out of utils/detection_util.py) on synthetic features, and its modified
CLIP image tower (`VisionTransformer` and the blocks it uses, cut out of clip/model.py) loaded with a
tiny random open_clip ViT's weights, whose local features `encode_with_local` must reproduce. Where
no mirror of the reference exists (CI), the committed oracle (its outputs on the same seeded inputs)
stands in for it (tests/reference_code.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from reference_code import cut, load, oracle, require_source

from negrefine_ray.core import scores
from negrefine_ray.core.glmcm import encode_with_local, glmcm, last_block, lmcm
from negrefine_ray.errors import ConfigError

REPO = "AtsuMiyai/GL-MCM"
B, GRID, D, K = 6, 4, 16, 10  # synthetic: 6 images of 4 x 4 patches, 16-d features, 10 ID labels
LAMBDA = 0.5  # the reference's ImageNet script


def _synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global (B, D), local (B, GRID, GRID, D) and text (K, D) float32 features, unnormalised."""
    rng = np.random.default_rng(24)
    text = rng.standard_normal((K, D)).astype(np.float32)
    global_feats = (rng.standard_normal((B, D)) + 2.0 * text[rng.integers(0, K, B)]).astype(np.float32)
    local = rng.standard_normal((B, GRID, GRID, D)).astype(np.float32)
    local[:, 1, 2] += 3.0 * text[rng.integers(0, K, B)]  # one patch near a label in each image
    return global_feats, local, text


class _Tensor:
    """A CPU tensor standing in for the reference's `.cuda()` calls (no GPU in these tests)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def cuda(self) -> Any:
        return self.value

    def long(self) -> _Tensor:
        return self

    def size(self, dim: int) -> int:
        return int(self.value.shape[dim])


def reference_scores(score: str, global_feats: np.ndarray, local: np.ndarray, text: np.ndarray) -> np.ndarray:
    """The reference's `get_ood_scores_clip` (negated back: larger = more ID) on these features."""
    source = require_source(REPO, "utils/detection_util.py")

    class Net:
        def encode_image(self, _images: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.from_numpy(global_feats.copy()), torch.from_numpy(local.copy())

        def encode_text(self, tokens: Any) -> torch.Tensor:
            return torch.from_numpy(text.copy())

    class Args:
        T, lambda_local = 1, LAMBDA

    Args.score = score
    clip = type("clip", (), {"tokenize": staticmethod(lambda texts: _Tensor(texts))})
    ns = load(cut(source, "get_ood_scores_clip"), {"np": np, "torch": torch, "F": torch.nn.functional,
                                                   "clip": clip, "tqdm": lambda x, total: x})  # fmt: skip
    n = global_feats.shape[0]
    batch = (_Tensor(torch.zeros(n, 3)), _Tensor(torch.zeros(n)))
    loader = type("Loader", (list,), {"dataset": range(n)})([batch])
    return -ns["get_ood_scores_clip"](Args, Net(), loader, [f"label {k}" for k in range(len(text))])


def project_scores(global_feats: np.ndarray, local: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
    """The project's MCM (score stage, float64), L-MCM (image actors, float32) and GL-MCM."""
    unit = global_feats / np.linalg.norm(global_feats, axis=1, keepdims=True)
    text_unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    mcm = scores.mcm(unit, text_unit)
    local_mcm = lmcm(torch.from_numpy(local), torch.from_numpy(text)).numpy()
    return {"MCM": mcm, "L-MCM": local_mcm, "GL-MCM": glmcm(mcm, local_mcm, LAMBDA)}


def _tiny_vit() -> torch.nn.Module:
    """nr-tiny-vit (1 block, width 32, 7 x 7 patches), random weights (seed 0), QuickGELU as the
    reference's blocks hard-code it."""
    import open_clip

    from negrefine_ray.clip.model import register_bundled_configs

    register_bundled_configs()
    torch.manual_seed(0)
    return open_clip.create_model("nr-tiny-vit", pretrained=None, force_quick_gelu=True).eval()


def _tower_text() -> np.ndarray:
    """(K, 32) ID prompt features for the tiny tower's 32-d space."""
    return np.random.default_rng(3).standard_normal((K, 32)).astype(np.float32)


def _pixels() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(7).standard_normal((2, 3, 224, 224)).astype(np.float32))


def reference_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The reference's modified VisionTransformer with the open_clip model's image-tower weights."""
    source = require_source(REPO, "clip/model.py")
    from collections import OrderedDict

    code = cut(source, "LayerNorm", "QuickGELU", "ResidualAttentionBlock", "Transformer", "VisionTransformer")
    ns = load(code, {"torch": torch, "nn": torch.nn, "F": torch.nn.functional, "OrderedDict": OrderedDict})
    v = model.visual  # type: ignore[attr-defined]
    tower = ns["VisionTransformer"](224, 32, 32, 1, 2, 32)
    state = {k: t for k, t in v.state_dict().items() if "ls_" not in k}
    tower.load_state_dict(state)
    return tower.eval()


TINY_RN = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _tiny_resnet(tmp: Any) -> torch.nn.Module:
    """A ModifiedResNet tower (64 px, one bottleneck per stage, 2 x 2 positions), random weights."""
    import json
    from pathlib import Path

    import open_clip

    folder = Path(tmp) / "rn-config"
    folder.mkdir(exist_ok=True)
    (folder / "nr-test-rn.json").write_text(json.dumps(TINY_RN))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    return open_clip.create_model("nr-test-rn", pretrained=None).eval()


def _rn_pixels() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(8).standard_normal((2, 3, 64, 64)).astype(np.float32))


def reference_resnet(model: torch.nn.Module) -> torch.nn.Module:
    """The reference's ModifiedResNet (its attention pool returns the local features too) with the
    open_clip model's image-tower weights."""
    source = require_source(REPO, "clip/model.py")
    import math
    from collections import OrderedDict

    ns = load(cut(source, "Bottleneck", "AttentionPool2d", "ModifiedResNet"),
              {"torch": torch, "nn": torch.nn, "F": torch.nn.functional, "math": math,
               "OrderedDict": OrderedDict})  # fmt: skip
    v = model.visual  # type: ignore[attr-defined]
    tower = ns["ModifiedResNet"]([1, 1, 1, 1], 32, v.attnpool.num_heads, 64, 16)
    tower.load_state_dict(v.state_dict())
    return tower.eval()


def build_oracle() -> dict[str, Any]:
    """The reference's outputs on the seeded inputs above (tests/reference_code.py writes them)."""
    import tempfile

    feats = _synthetic()
    model = _tiny_vit()
    with torch.no_grad():
        ref_global, ref_local = reference_tower(model)(_pixels())
        rn_global, rn_local = reference_resnet(_tiny_resnet(tempfile.mkdtemp()))(_rn_pixels())
    text = _tower_text()
    return {
        "resnet": {"global": rn_global.tolist(), "local": rn_local.reshape(2, -1, 32).tolist()},
        "synthetic": {s: reference_scores(s, *feats).tolist() for s in ("MCM", "L-MCM", "GL-MCM")},
        "tower": {"global": ref_global.tolist(), "local": ref_local.reshape(2, -1, 32).tolist(),
                  "lmcm": lmcm_reference(ref_local.numpy(), text).tolist()},
    }  # fmt: skip


def lmcm_reference(local: np.ndarray, text: np.ndarray) -> np.ndarray:
    """The reference's L-MCM arithmetic on its own tower's local features (its scoring function)."""
    return reference_scores("L-MCM", np.zeros((local.shape[0], text.shape[1]), np.float32), local, text)


def test_scores_equal_the_reference_scoring_function() -> None:
    """MCM, L-MCM and GL-MCM (lambda 0.5, T = 1) within 1e-6 of the reference's float32 arithmetic."""
    feats = _synthetic()
    got = project_scores(*feats)
    want = oracle("glmcm")["synthetic"]
    for score in ("MCM", "L-MCM", "GL-MCM"):
        np.testing.assert_allclose(got[score], want[score], atol=1e-6, err_msg=score)
    assert np.ptp(got["L-MCM"]) > 1e-3 and np.ptp(got["GL-MCM"]) > 1e-3  # the inputs tell images apart


def test_the_oracle_is_the_reference_run_now() -> None:
    """Where the reference's source is here, its scoring function run now equals the committed oracle."""
    feats = _synthetic()
    want = oracle("glmcm")["synthetic"]
    for score in ("MCM", "L-MCM", "GL-MCM"):
        np.testing.assert_allclose(reference_scores(score, *feats), want[score], atol=1e-7, err_msg=score)


def test_local_features_equal_the_reference_towers() -> None:
    """`encode_with_local` on a tiny random open_clip ViT returns the global and local features of the
    reference's modified CLIP holding the same weights (the oracle where the reference is absent)."""
    model = _tiny_vit()
    with torch.no_grad():
        got_global, got_local = encode_with_local(model, _pixels())
    want = oracle("glmcm")["tower"]
    np.testing.assert_allclose(got_global.numpy(), want["global"], atol=1e-5)
    np.testing.assert_allclose(got_local.numpy(), want["local"], atol=1e-5)
    text = _tower_text()
    got = lmcm(got_local, torch.from_numpy(text)).numpy()
    np.testing.assert_allclose(got, want["lmcm"], atol=1e-6)
    # the local features are not the global one repeated, nor the bare value projection
    assert not np.allclose(got_local.numpy()[:, 0], got_global.numpy(), atol=1e-3)


def test_reference_tower_now_equals_the_oracle() -> None:
    model = _tiny_vit()
    with torch.no_grad():
        ref_global, ref_local = reference_tower(model)(_pixels())
    want = oracle("glmcm")["tower"]
    np.testing.assert_allclose(ref_global.numpy(), want["global"], atol=1e-6)
    np.testing.assert_allclose(ref_local.reshape(2, -1, 32).numpy(), want["local"], atol=1e-6)


def test_resnet_local_features_equal_the_reference_attention_pools(tmp_path: Any) -> None:
    """A ModifiedResNet's local features: c_proj(v_proj(.)) at every position of the attention pool's
    input, as the reference's AttentionPool2d returns them (the oracle where the reference is absent)."""
    model = _tiny_resnet(tmp_path)
    with torch.no_grad():
        got_global, got_local = encode_with_local(model, _rn_pixels())
    want = oracle("glmcm")["resnet"]
    np.testing.assert_allclose(got_global.numpy(), want["global"], atol=1e-5)
    np.testing.assert_allclose(got_local.numpy(), want["local"], atol=1e-5)
    assert got_local.shape == (2, 4, 32)


def test_reference_resnet_now_equals_the_oracle(tmp_path: Any) -> None:
    with torch.no_grad():
        rn_global, rn_local = reference_resnet(_tiny_resnet(tmp_path))(_rn_pixels())
    want = oracle("glmcm")["resnet"]
    np.testing.assert_allclose(rn_global.numpy(), want["global"], atol=1e-6)
    np.testing.assert_allclose(rn_local.reshape(2, -1, 32).numpy(), want["local"], atol=1e-6)


def test_a_tower_without_local_features_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(ConfigError, match="Supported: open_clip ViT models"):
        last_block(torch.nn.Linear(2, 2))


def test_a_job_with_glmcm_on_a_timm_tower_stops_before_any_stage() -> None:
    from negrefine_ray.config import build_config
    from negrefine_ray.preflight import check_local_features

    def job(arch: str, methods: list[str]) -> Any:
        return build_config({"model": {"arch": arch, "pretrained": "none"}, "score": {"methods": methods}})

    with pytest.raises(ConfigError, match=r"\['glmcm'\], which need an image tower's local.*'convnext_base'"):
        check_local_features(job("convnext_base", ["mcm", "glmcm"]))
    check_local_features(job("convnext_base", ["mcm"]))  # nothing local: any tower
    check_local_features(job("nr-tiny-vit", ["lmcm", "glmcm"]))
    check_local_features(job("RN50", ["lmcm", "glmcm"]))
