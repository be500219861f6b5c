"""The text side end to end on a tiny random CLIP: corpus -> embed-text -> mine of the session's smoke
run, checked against the selection rules, the CSP phrase rule, NegRefine's ID-name exclusion and
determinism."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import SMOKE_JOB, SmokeRun

from negrefine_ray.config import JobConfig, load_config
from negrefine_ray.core.labels import load_id_labels
from negrefine_ray.core.templates import get_templates
from negrefine_ray.runfolder.atomic import column_matrix, read_json, read_parquet

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def text_run(smoke_run: SmokeRun) -> JobConfig:
    """The session's smoke run (its corpus, embed-text and mine stages are what these tests read)."""
    return load_config(SMOKE_JOB, [s for s in smoke_run.sets() if s != "--set"])


def _negatives(config: JobConfig, method: str) -> pa.Table:
    table = read_parquet(config.run_dir / "mine" / "negatives.parquet")
    return table.filter(pa.compute.equal(table.column("method"), method))


@pytest.mark.parametrize("method", ["neglabel", "csp", "negrefine"])
def test_fifteen_percent_per_part_of_speech_in_ascending_order(text_run: JobConfig, method: str) -> None:
    stats = read_json(text_run.run_dir / "mine" / "manifest.json")["stats"][method]
    assert stats["selected_nouns"] == math.floor(0.15 * stats["pool_nouns"])
    assert stats["selected_adjectives"] == math.floor(0.15 * stats["pool_adjectives"])
    neg = _negatives(text_run, method)
    pos = neg.column("pos").to_pylist()
    assert pos == sorted(pos, key=lambda p: p != "noun")  # [nouns | adjectives]
    stat = neg.column("statistic").to_numpy()
    for part in ("noun", "adj"):
        values = stat[np.array(pos) == part]
        assert np.all(np.diff(values) >= 0)


def test_embeddings_are_normalised_and_match_the_methods_templates(text_run: JobConfig) -> None:
    from negrefine_ray.clip.text_service import TextEncoder

    neg = _negatives(text_run, "csp")
    emb = column_matrix(neg, "embedding")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    encoder = TextEncoder(text_run, lambda: None)
    nouns = neg.filter(pa.compute.equal(neg.column("pos"), "noun"))
    expected = encoder.embed(nouns.column("label").to_pylist()[:5], get_templates("csp-noun8"))
    np.testing.assert_allclose(column_matrix(nouns, "embedding")[:5], expected, atol=1e-6)


def test_csp_adjectives_are_suffix_phrases(text_run: JobConfig) -> None:
    neg = _negatives(text_run, "csp")
    suffixes = {t.replace("{} ", "") for t in get_templates("csp-suffix14")}
    for label, word, pos in zip(
        *(neg.column(c).to_pylist() for c in ("label", "source_word", "pos")), strict=True
    ):
        if pos == "adj":
            assert label.startswith(word + " ") and label[len(word) + 1 :] in suffixes
        else:
            assert label == word


def test_negrefine_drops_id_class_names_from_nouns_and_prepares_negfilter(text_run: JobConfig) -> None:
    neg = _negatives(text_run, "negrefine")
    ids = set(load_id_labels("imagenet1k"))
    nouns = [
        w
        for w, p in zip(neg.column("label").to_pylist(), neg.column("pos").to_pylist(), strict=True)
        if p == "noun"
    ]
    assert not ids & set(nouns)
    first = neg.filter(neg.column("filter_input"))
    assert all(len(n) == 10 and set(n) <= ids for n in first.column("nearest_id_labels").to_pylist())
    keys = list(zip(first.column("pos").to_pylist(), first.column("clean_label").to_pylist(), strict=True))
    assert len(keys) == len(set(keys))


def test_mine_is_independent_of_the_hash_seed(text_run: JobConfig) -> None:
    path = text_run.run_dir / "mine" / "negatives.parquet"
    before = path.read_bytes()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cmd = [sys.executable, "-m", "negrefine_ray", "mine", str(text_run.run_dir), "--force"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert path.read_bytes() == before


@pytest.mark.ray
def test_one_text_pool_serves_every_text_list_of_an_encoder(smoke_run: SmokeRun, tmp_path: Path) -> None:
    """embed-text, mine and score send an encoder many text lists; its actors start once and load CLIP
    once each (their load ids, new at every start or restart, are the same after the last list as
    after the first), and the features equal the in-process ones."""
    from negrefine_ray.clip.text_service import TextEncoder

    sets = smoke_run.sets(**{"text.local_below": 0, "text.num_actors": 2, "run.cache_dir": tmp_path})
    config = load_config(SMOKE_JOB, [s for s in sets if s != "--set"])
    encoder = TextEncoder(config, lambda: None)
    lists = [["tench"], ["daisy", "gooey landscape"], [f"a photo of a w{i}" for i in range(40)]]
    try:
        got = [encoder.features(lists[0])]
        pool, loads = encoder._pool, encoder._pool.load_ids()
        got += [encoder.features(texts) for texts in lists[1:]]
        assert encoder._pool is pool and pool.load_ids() == loads
        assert len(set(loads)) == 2  # two actors, one model load each
    finally:
        encoder.close()
    local = dataclasses.replace(config, text=dataclasses.replace(config.text, local_below=10**9))
    here = TextEncoder(local, lambda: None)
    for texts, features in zip(lists, got, strict=True):
        np.testing.assert_allclose(features, here._encode_here(texts), atol=1e-5)
