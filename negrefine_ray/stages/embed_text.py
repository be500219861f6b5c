"""The `embed-text` stage: CLIP text embeddings of the ID labels and of every candidate word of the
methods' pools, each under the templates its method uses (methods.md 0.2, 1.2, 2.2-2.3, 3.2, 4.1).
The views and which method uses which are declared in the method catalogue (negrefine_ray.core.methods).

Output `embed-text/id_labels.parquet`: label, and one embedding column per ID view (methods.ID_VIEWS):
`the_nice_raw` (unnormalised 'the nice {}', NegLabel/DNM), `csp_noun8` (raw-mean of the 8 noun
templates, CSP/NegRefine), `bare` (the bare string, NegFilter), `mcm` ('a photo of a {}').
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

from negrefine_ray.clip.text_service import TextEncoder
from negrefine_ray.config import JobConfig
from negrefine_ray.core.labels import load_id_labels
from negrefine_ray.core.methods import CANDIDATE_VIEWS, ID_VIEWS, METHODS
from negrefine_ray.core.templates import csp_phrases, get_templates
from negrefine_ray.negatives.selection import method_pools
from negrefine_ray.runfolder.artifacts import CANDIDATES, CORPUS, ID_LABELS
from negrefine_ray.runfolder.atomic import embedding_column
from negrefine_ray.runfolder.folder import StageContext, StageOutput

# The candidate table has a base view over every candidate, a phrase view over the CSP family's pools
# and per further view (InterNeg's) one column over the pools of the methods using it.
SINGLE, ENSEMBLE, *OTHER_VIEWS = CANDIDATE_VIEWS
CSP_FAMILY = tuple(m.name for m in METHODS.values() if m.candidate_view == ENSEMBLE)  # CSP's phrases


def _encode(encoder: TextEncoder, texts: list[str], templates: str, raw: bool) -> np.ndarray:
    """(n, D): a raw view's single template's features, else the set's L2-normalised raw-mean."""
    if raw:
        (template,) = get_templates(templates)
        return encoder.raw(texts, template)
    return encoder.embed(texts, get_templates(templates))


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
    base, phrased = CANDIDATE_VIEWS[SINGLE], CANDIDATE_VIEWS[ENSEMBLE]
    nouns, adjs = _distinct(list(pools.values()), "noun"), _distinct(list(pools.values()), "adj")
    single_nouns = _encode(encoder, nouns, base.templates, base.raw)
    single = np.concatenate([single_nouns, _encode(encoder, adjs, base.adj_templates, base.raw)])
    csp_nouns = set(_distinct([pools[m] for m in CSP_FAMILY if m in pools], "noun"))
    csp_adjs = _pool_adjectives(pools)
    phrase_of = dict(zip(csp_adjs, csp_phrases(csp_adjs, seed), strict=True))
    ens_nouns = [w for w in nouns if w in csp_nouns]
    vectors = dict(zip(ens_nouns, _encode(encoder, ens_nouns, phrased.templates, phrased.raw), strict=True))
    phrases = [phrase_of[a] for a in csp_adjs]
    ens_adjs = _encode(encoder, phrases, phrased.adj_templates, phrased.raw)
    adj_vectors = dict(zip(csp_adjs, ens_adjs, strict=True))
    dim = single.shape[1]
    ensemble_rows = [vectors.get(w) for w in nouns] + [adj_vectors.get(a) for a in adjs]
    columns = {ENSEMBLE: _sparse_column(ensemble_rows, dim)}
    for name in OTHER_VIEWS:
        view = CANDIDATE_VIEWS[name]
        users = [pools[m] for m in pools if METHODS[m].candidate_view == name]
        if not users:
            continue
        mine_nouns, mine_adjs = _distinct(users, "noun"), _distinct(users, "adj")
        vec = dict(zip(mine_nouns, _encode(encoder, mine_nouns, view.templates, view.raw), strict=True))
        adj_vec = dict(zip(mine_adjs, _encode(encoder, mine_adjs, view.adj_templates, view.raw), strict=True))
        columns[name] = _sparse_column([vec.get(w) for w in nouns] + [adj_vec.get(a) for a in adjs], dim)
    return pa.table(
        {
            "word": nouns + adjs,
            "pos": ["noun"] * len(nouns) + ["adj"] * len(adjs),
            "phrase": [None] * len(nouns) + [phrase_of.get(a) for a in adjs],
            SINGLE: embedding_column(single),
            **columns,
        }
    )


def _sparse_column(rows: Sequence[np.ndarray | None], dim: int) -> pa.Array:
    """fixed_size_list<float32>[dim] with nulls where a word is outside the view's pools."""
    return pa.array([None if v is None else v.tolist() for v in rows], type=pa.list_(pa.float32(), dim))


def run_embed_text(ctx: StageContext) -> StageOutput:
    config = ctx.config
    corpus = CORPUS.read(ctx.run_dir)
    pools = method_pools(config, corpus)
    encoder = TextEncoder(config, ctx.ray)
    labels = load_id_labels(config.labels.id_labels)
    views = {name: _encode(encoder, labels, v.templates, v.raw) for name, v in ID_VIEWS.items()}
    id_table = pa.table({"label": labels, **{name: embedding_column(x) for name, x in views.items()}})
    ID_LABELS.write(ctx.out_dir, id_table)
    candidates = _candidate_table(encoder, pools, config.run.seed)
    CANDIDATES.write(ctx.out_dir, candidates)
    pos = candidates.column("pos").to_pylist()
    stats = {
        "id_labels": len(labels),
        "candidate_nouns": pos.count("noun"),
        "candidate_adjectives": pos.count("adj"),
        "pool_sizes": {m: p.num_rows for m, p in pools.items()},
        "texts_encoded": encoder.encoded,
        "nodes": encoder.nodes,  # texts each Ray node encoded (none: in-process or all cached)
        "precision": encoder.precision,
    }
    summary = (
        f"{len(labels):,} ID labels, {pos.count('noun'):,} nouns and {pos.count('adj'):,} adjectives "
        f"embedded ({encoder.encoded:,} texts through CLIP, the rest from the cache; {encoder.precision})"
    )
    encoder.close()  # the text actors, if a list went to Ray
    return StageOutput(("id_labels.parquet", "candidates.parquet"), summary, stats)
