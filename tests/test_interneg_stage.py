"""InterNeg in the score stage (scoring/interneg.py): prototypes from role-"prototype" rows with
their errors, the textual selection from mine/pools.parquet, the preprocessing of prototype images,
and the config checks. The pure core is tested in test_interneg_core.py, the inversion in
test_inversion.py, the whole method end to end by the smoke job (test_pipeline.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from negrefine_ray.config import build_config
from negrefine_ray.core.methods import prototype_preprocessing
from negrefine_ray.errors import ConfigError, StageError
from negrefine_ray.runfolder.atomic import embedding_column
from negrefine_ray.scoring.interneg import prototypes, textual_negatives


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_prototypes_are_class_means_and_a_missing_class_stops_naming_it() -> None:
    emb = _unit(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=float))
    labels = np.array([0, 0, 2, 1])
    protos, stats = prototypes(labels, emb, ["tench", "goldfish", "shark"], per_class=2)
    np.testing.assert_allclose(protos[0], _unit((emb[0] + emb[1])[None])[0], atol=1e-6)
    np.testing.assert_allclose(protos[2], emb[2], atol=1e-6)
    assert stats["short"] == {"goldfish": 1, "shark": 1} and stats["min_per_class"] == 1
    with pytest.raises(StageError, match=r"1 of 3 ID classes, e\.g\. 'shark'"):
        prototypes(np.array([0, 1]), emb[:2], ["tench", "goldfish", "shark"], per_class=0)
    with pytest.raises(StageError, match=r"outside 0\.\.2"):
        prototypes(np.array([0, 5]), emb[:2], ["tench", "goldfish", "shark"], per_class=0)


def test_textual_negatives_keep_the_admissible_words_by_deviation() -> None:
    """Two classes with prototypes e1, e2 and labels at cos 0.8 of them: a word is admissible when it
    is farther from both prototypes than 0.8; the selection is [adjectives | nouns] by deviation."""
    protos = np.eye(3, dtype=np.float32)[:2]
    id_text = _unit(np.array([[0.8, 0, 0.6], [0, 0.8, 0.6]]))
    words = {
        "near": ("noun", [0.9, 0.1, 0.4]),  # cos 0.9 to prototype 0: not admissible
        "far": ("noun", [0.0, 0.0, 1.0]),  # deviation 0.8
        "mid": ("noun", [0.5, 0.5, 0.7]),  # deviation 0.8 - 0.5 = 0.3
        "blue": ("adj", [0.1, 0.0, 1.0]),
    }
    emb = _unit(np.array([v for _, v in words.values()], dtype=float))
    pools = pa.table({
        "method": ["interneg"] * 4, "word": list(words), "pos": [p for p, _ in words.values()],
        "embedding": embedding_column(emb),
    })  # fmt: skip
    selected, base, stats = textual_negatives(pools, id_text, protos, m=3, method="interneg")
    np.testing.assert_allclose(base, [0.8, 0.8], atol=1e-6)
    assert (stats["admissible_nouns"], stats["admissible_adjectives"]) == (2, 1)
    assert stats["first_labels"] == ["blue", "far", "mid"]  # 3 * 1/3 = 1 adjective, then 2 nouns
    np.testing.assert_allclose(selected.embedding, emb[[3, 1, 2]], atol=1e-6)
    assert (list(selected.labels), list(selected.pos), list(selected.rank)) == (
        ["blue", "far", "mid"],
        ["adj", "noun", "noun"],
        [0, 0, 1],
    )
    with pytest.raises(StageError, match=r"no candidates of 'interneg'; add it to mining\.methods"):
        textual_negatives(pools.filter(pa.array([False] * 4)), id_text, protos, m=3, method="interneg")


def test_prototype_images_use_their_own_preprocessing() -> None:
    methods = ["neglabel", "interneg"]
    assert prototype_preprocessing(methods, "per-method", "augment") == "augment"
    assert prototype_preprocessing(methods, "per-method", "center") == "openood"  # InterNeg's test transform
    assert prototype_preprocessing(methods, "shared", "center") == "clip"
    assert prototype_preprocessing(["neglabel"], "per-method", "augment") is None


def test_interneg_needs_a_prototype_dataset_at_load() -> None:
    job = {
        "run": {"name": "t"},
        "mining": {"methods": ["interneg"]},
        "score": {"methods": ["interneg"]},
        "datasets": [{"name": "id", "role": "id", "root": "/x", "format": "files"}],
    }
    with pytest.raises(ConfigError, match='no \\[\\[datasets\\]\\] entry has role = "prototype"'):
        build_config(job)
    prototype = {"name": "p", "role": "prototype", "root": "/y", "format": "imagefolder", "per_class": 16}
    job["datasets"].append(prototype)  # type: ignore[attr-defined]
    assert build_config(job).datasets[1].per_class == 16
