"""AdaNeg (methods.md Appendix D) against the reference's own code: `TTAPromptPostprocessor_noadagap`
cut out of openood/postprocessors/ttaprompt_postprocessor.py (YBZh/OpenOOD-VLM) and fed the same
batches of a synthetic stream, in float32 on the CPU, beside `run_adaneg` with the same order: the
per-image scores within float tolerance and the memories' contents equal. The reference's fp16 NaN
entropies (D.9) are reproduced by giving its code a log that returns NaN: then a full memory is never
updated, which is `replacement = "never"`. Where no mirror exists (CI), the committed oracle stands
in for the reference (tests/reference_code.py)."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest
import torch
from reference_code import cut, load, oracle, require_source

from negrefine_ray.core.adaneg import LabelMemory, run_adaneg
from negrefine_ray.core.scores import grouping_permutation, neglabel
from negrefine_ray.errors import NegRefineError

REPO, PATH = "YBZh/OpenOOD-VLM", "openood/postprocessors/ttaprompt_postprocessor.py"
K, M, D, G, L, BATCH = 12, 30, 24, 5, 4, 16  # small: memories fill, and replacements happen
SETTINGS = {"thres": 0.5, "gap": 0.5, "lambda_": 0.1}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _stream() -> dict[str, np.ndarray]:
    """ID images near their label's text, OOD images near a negative's, a few in between; an order."""
    rng = np.random.default_rng(11)
    id_text, neg_text = _unit(rng.standard_normal((K, D))), _unit(rng.standard_normal((M, D)))
    near_id = id_text[rng.integers(0, K, 70)] * 2.5 + rng.standard_normal((70, D))
    near_neg = neg_text[rng.integers(0, M, 50)] * 2.5 + rng.standard_normal((50, D))
    image = _unit(np.concatenate([near_id, near_neg]) / 8.0)
    order = np.random.default_rng(5).permutation(len(image))
    return {"image": image, "id_text": id_text, "neg_text": neg_text, "order": order}


def reference_run(s: dict[str, np.ndarray], replacement: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference postprocessor over the stream's batches: (scores in row order, feat_memory)."""
    source = require_source(REPO, PATH)

    class BasePostprocessor:
        def __init__(self, config: Any) -> None:
            self.config = config

    torch_ns: Any = torch
    if replacement == "never":  # the fp16 run's NaN entropies (methods.md D.9), without a GPU
        torch_ns = types.SimpleNamespace(
            **{n: getattr(torch, n) for n in dir(torch) if not n.startswith("__")}
        )
        torch_ns.log = lambda x: torch.full_like(x, float("nan"))
    ns = load(cut(source, "TTAPromptPostprocessor_noadagap"),
              {"BasePostprocessor": BasePostprocessor, "torch": torch_ns, "nn": torch.nn, "Any": Any,
               "pdb": None, "tqdm": None})  # fmt: skip
    args = types.SimpleNamespace(
        tau=1.0, beta=5.5, in_score="combine", memleng=L, lambdaval=SETTINGS["lambda_"],
        thres=SETTINGS["thres"], samada=False, gap=SETTINGS["gap"], group_num=G, random_permute=True,
    )  # fmt: skip
    postprocessor = types.SimpleNamespace(postprocessor_args=args, postprocessor_sweep={})
    config = types.SimpleNamespace(postprocessor=postprocessor)
    post = ns["TTAPromptPostprocessor_noadagap"](config)
    text = torch.from_numpy(np.concatenate([s["id_text"], s["neg_text"]]))

    class Net:
        n_cls = K

        def eval(self) -> None:
            pass

        def __call__(
            self, data: torch.Tensor, return_feat: bool
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return data, text, torch.tensor(100.0)

    out = np.empty(len(s["image"]))
    for start in range(0, len(s["order"]), BATCH):
        idx = s["order"][start : start + BATCH]
        _, conf = post.postprocess(Net(), torch.from_numpy(s["image"][idx]))
        out[idx] = conf.numpy()
    return out, post.feat_memory.numpy()


def _slots(feats: np.ndarray, image: np.ndarray) -> list[list[int]]:
    """Each memory slot as the row of `image` it holds: -1 empty, -2 the label's text."""
    rows = []
    for label in feats:
        row = [-2]
        for slot in label[1:]:
            hit = np.flatnonzero(np.all(image == slot, axis=1))
            row.append(int(hit[0]) if len(hit) else -1)
        rows.append(row)
    return rows


def build_oracle() -> dict[str, Any]:
    s = _stream()
    out = {}
    for replacement in ("never", "entropy"):
        scores, feats = reference_run(s, replacement)
        out[replacement] = {"scores": scores.tolist(), "slots": _slots(feats, s["image"])}
    return out


def _ours(s: dict[str, np.ndarray], replacement: str) -> tuple[np.ndarray, LabelMemory, dict[str, int]]:
    return run_adaneg(
        s["image"], id_text=s["id_text"], neg_text=s["neg_text"], order=s["order"], batch_size=BATCH,
        memory_length=L, n_groups=G, replacement=replacement, **SETTINGS,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_stream_has_no_borderline_image() -> None:
    """The static score decides the caching; none sits within 1e-4 of a threshold, so float32 (the
    reference here) and float64 (the project) cache the same images."""
    s = _stream()
    static = neglabel(
        s["image"], s["id_text"], s["neg_text"], n_groups=G, permutation=grouping_permutation(M, G, 0)
    )
    assert np.abs(static - 0.75).min() > 1e-4 and np.abs(static - 0.25).min() > 1e-4
    assert (static > 0.75).sum() > K * L and (static < 0.25).sum() > 5  # memories fill up


@pytest.mark.parametrize("replacement", ["never", "entropy"])
def test_scores_and_memories_equal_the_reference(replacement: str) -> None:
    s = _stream()
    scores, memory, counts = _ours(s, replacement)
    want = oracle("adaneg")[replacement]
    np.testing.assert_allclose(scores, want["scores"], atol=2e-6)
    assert _slots(memory.feats, s["image"]) == want["slots"]
    assert counts["cached_id"] > 0 and counts["cached_ood"] > 0
    assert (counts["replaced"] > 0) == (replacement == "entropy")
    # the reference's quirk: slots 1..L-1 hold images, slot L stays empty
    assert all(row[L] == -1 for row in want["slots"])


@pytest.mark.parametrize("replacement", ["never", "entropy"])
def test_the_oracle_is_the_reference_run_now(replacement: str) -> None:
    s = _stream()
    scores, feats = reference_run(s, replacement)
    want = oracle("adaneg")[replacement]
    np.testing.assert_allclose(scores, want["scores"], atol=1e-6)
    assert _slots(feats, s["image"]) == want["slots"]


def test_fill_last_slot_stores_l_images_and_the_order_matters() -> None:
    s = _stream()
    _, memory, _ = run_adaneg(
        s["image"], id_text=s["id_text"], neg_text=s["neg_text"], order=s["order"], batch_size=BATCH,
        memory_length=L, n_groups=G, fill_last_slot=True,
    )  # fmt: skip
    assert (memory.count == L + 1).any()
    other, _, _ = _ours({**s, "order": s["order"][::-1].copy()}, "never")
    assert not np.allclose(other, _ours(s, "never")[0])


def test_bad_settings_are_named() -> None:
    with pytest.raises(NegRefineError, match="memory_length"):
        LabelMemory(np.eye(3, dtype=np.float32), length=0)
    with pytest.raises(NegRefineError, match="replacement"):
        LabelMemory(np.eye(3, dtype=np.float32), replacement="sometimes")  # type: ignore[arg-type]


@pytest.mark.ray
def test_each_ood_dataset_and_shuffle_is_its_own_stream(ray_session: Any) -> None:
    """scoring.streams.ood_streams (AdaNeg's and InterNeg's): per OOD dataset one stream of its rows
    and the ID rows, shuffle 0 in run.seed's order (equal to run_adaneg called directly), NaN on the
    other dataset's rows, and with two shuffles each metric's mean and std."""
    from negrefine_ray.config import build_config
    from negrefine_ray.core.adaneg import stream_order
    from negrefine_ray.scoring.adaneg import adaneg_stream
    from negrefine_ray.scoring.streams import ood_streams

    s = _stream()
    config = build_config(
        {"run": {"seed": 3}, "adaneg": {"batch_size": BATCH, "memory_length": L, "shuffles": 2}}
    )
    ood_of = np.array([None] * 70 + ["a"] * 30 + ["b"] * 20, dtype=object)
    shared = {"id_text": s["id_text"], "neg_text": s["neg_text"]}
    out = ood_streams(adaneg_stream, config, s["image"], ood_of, ("a", "b"), shared, 2)
    assert list(out) == ["a", "b"]
    values, entry, flags = out["a"]
    assert flags is None  # AdaNeg flags no image
    assert np.isnan(values[100:]).all() and np.isfinite(values[:100]).all()
    assert entry["images"] == 100 and set(entry["shuffles"]["auroc"]) == {"mean", "std"}
    rows = np.arange(100)
    direct, _, _ = run_adaneg(
        s["image"][rows], id_text=s["id_text"], neg_text=s["neg_text"], order=stream_order(70, 30, 3),
        batch_size=BATCH, memory_length=L,
    )  # fmt: skip
    np.testing.assert_array_equal(values[:100], direct)
