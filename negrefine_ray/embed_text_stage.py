"""The `embed-text` stage: CLIP text embeddings of the ID labels and of every candidate word of the
methods' pools, each under the templates its method uses (methods.md 0.2, 1.2, 2.2-2.3, 3.2, 4.1).

Output `embed-text/id_labels.parquet`: label, and one embedding column per view: `the_nice_raw`
(unnormalised 'the nice {}', NegLabel/DNM), `csp_noun8` (raw-mean of the 8 noun templates,
CSP/NegRefine), `bare` (the bare string, NegFilter), `mcm` ('a photo of a {}').
Output `embed-text/candidates.parquet`: word, pos, `phrase` (CSP's suffix phrase of an adjective,
seeded), `single_raw` (unnormalised 'the nice {}' for nouns / 'This is a {} photo' for adjectives,
NegLabel/DNM) and `ensemble` (normalised raw-mean: nouns x 8 noun templates, phrases x 4 adjective
templates; CSP/NegRefine; null for words outside their pools).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.artifacts import embedding_column, read_parquet, write_parquet
from negrefine_ray.config import JobConfig
from negrefine_ray.corpus import FILE_ORDERS, get_pool_rule
from negrefine_ray.labels import load_id_labels
from negrefine_ray.stages import StageContext, StageOutput
from negrefine_ray.templates import csp_phrases, get_templates
from negrefine_ray.text_service import TextEncoder

CSP_FAMILY = ("csp", "negrefine")  # methods that use CSP's templates and suffix phrases


def method_pools(config: JobConfig, corpus: pa.Table) -> dict[str, pa.Table]:
    """Each method's candidate pool, its files walked in `mining.file_order` (methods.md 0.5)."""
    id_labels = load_id_labels(config.labels.id_labels)
    order = FILE_ORDERS[config.mining.file_order]
    return {
        m: dataclasses.replace(get_pool_rule(m), order=order).pool(corpus, id_labels)
        for m in config.mining.methods
    }


def _distinct(pools: Sequence[pa.Table], pos: str) -> list[str]:
    """Words of that part of speech over the pools, first appearance first (pool order)."""
    words: dict[str, None] = {}
    for pool in pools:
        for word, p in zip(pool.column("word").to_pylist(), pool.column("pos").to_pylist(), strict=True):
            if p == pos:
                words.setdefault(word)
    return list(words)


def _pool_adjectives(pools: dict[str, pa.Table]) -> list[str]:
    """Adjectives of the CSP-family pool in its order: the order CSP's RNG draws suffixes in."""
    for method in CSP_FAMILY:
        if method in pools:
            return _distinct([pools[method]], "adj")
    return []


def embed_text_settings(config: JobConfig) -> dict[str, Any]:
    model = dataclasses.asdict(config.model)
    return {
        "model": model,
        "labels": config.labels.id_labels,
        "methods": list(config.mining.methods),
        "file_order": config.mining.file_order,  # which file owns a shared word; CSP's draw order
        "seed": config.run.seed,  # CSP's suffix draws
    }


def _candidate_table(encoder: TextEncoder, pools: dict[str, pa.Table], seed: int) -> pa.Table:
    nouns, adjs = _distinct(list(pools.values()), "noun"), _distinct(list(pools.values()), "adj")
    single = np.concatenate([encoder.raw(nouns, "the nice {}"), encoder.raw(adjs, "This is a {} photo")])
    csp_nouns = set(_distinct([pools[m] for m in CSP_FAMILY if m in pools], "noun"))
    csp_adjs = _pool_adjectives(pools)
    phrase_of = dict(zip(csp_adjs, csp_phrases(csp_adjs, seed), strict=True))
    ens_nouns = [w for w in nouns if w in csp_nouns]
    vectors = {
        w: v for w, v in zip(ens_nouns, encoder.embed(ens_nouns, get_templates("csp-noun8")), strict=True)
    }
    phrases = [phrase_of[a] for a in csp_adjs]
    adj_vectors = dict(zip(csp_adjs, encoder.embed(phrases, get_templates("csp-adj4")), strict=True))
    dim = single.shape[1]
    ensemble_rows = [vectors.get(w) for w in nouns] + [adj_vectors.get(a) for a in adjs]
    ensemble = pa.array(
        [None if v is None else v.tolist() for v in ensemble_rows], type=pa.list_(pa.float32(), dim)
    )
    return pa.table(
        {
            "word": nouns + adjs,
            "pos": ["noun"] * len(nouns) + ["adj"] * len(adjs),
            "phrase": [None] * len(nouns) + [phrase_of.get(a) for a in adjs],
            "single_raw": embedding_column(single),
            "ensemble": ensemble,
        }
    )


def run_embed_text(ctx: StageContext) -> StageOutput:
    config = ctx.config
    corpus = read_parquet(ctx.input("corpus", "corpus.parquet"))
    pools = method_pools(config, corpus)
    encoder = TextEncoder(config, ctx.ray)
    labels = load_id_labels(config.labels.id_labels)
    id_table = pa.table(
        {
            "label": labels,
            "the_nice_raw": embedding_column(encoder.raw(labels, "the nice {}")),
            "csp_noun8": embedding_column(encoder.embed(labels, get_templates("csp-noun8"))),
            "bare": embedding_column(encoder.embed(labels, get_templates("bare"))),
            "mcm": embedding_column(encoder.embed(labels, get_templates("mcm"))),
        }
    )
    write_parquet(ctx.out_dir / "id_labels.parquet", id_table)
    candidates = _candidate_table(encoder, pools, config.run.seed)
    write_parquet(ctx.out_dir / "candidates.parquet", candidates)
    pos = candidates.column("pos").to_pylist()
    stats = {
        "id_labels": len(labels),
        "candidate_nouns": pos.count("noun"),
        "candidate_adjectives": pos.count("adj"),
        "pool_sizes": {m: p.num_rows for m, p in pools.items()},
        "texts_encoded": encoder.encoded,
        "precision": encoder.precision,
    }
    summary = (
        f"{len(labels):,} ID labels, {pos.count('noun'):,} nouns and {pos.count('adj'):,} adjectives "
        f"embedded ({encoder.encoded:,} texts through CLIP, the rest from the cache; {encoder.precision})"
    )
    return StageOutput(("id_labels.parquet", "candidates.parquet"), summary, stats)
