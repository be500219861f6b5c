"""NegRefine's scorer (methods.md 3.3-3.4): per judge, the NegLabel score over the negatives the judge
kept plus alpha times the multi-matching score S_MM, and its ablations (NegFilter on/off x S_MM
on/off). S_MM over every negative set comes from one pass of distinct pair texts through CLIP.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from negrefine_ray.clip.text_service import TextEncoder
from negrefine_ray.core import scores
from negrefine_ray.core.methods import CANDIDATE_VIEWS, TextView
from negrefine_ray.core.multi_matching import (
    PairEmbedder,
    RefinedNegatives,
    multi_matching_scores,
    refined_negatives,
)
from negrefine_ray.core.templates import get_templates
from negrefine_ray.negatives.scope import filtered_kept
from negrefine_ray.runfolder.artifacts import KEPT
from negrefine_ray.scoring.columns import ScoreColumn, score_column
from negrefine_ray.scoring.inputs import NegativeSet, Scored, ScoreInput

# Pair texts per TextEncoder call: 1M templated texts, ~2 GiB of fp32 features at D = 512. Each batch
# is its own cache entry, so an interrupted stage re-encodes only the batches it had not finished.
PAIR_BATCH = 131_072


def _embed_refined(refined: RefinedNegatives, encoder: Any, view: TextView) -> np.ndarray:
    """(M, D) final NegRefine embeddings (3.3) under its candidate view: nouns x 8 noun templates,
    adjective phrases x 4 adjective templates, raw-mean, in RefinedNegatives order (nouns first)."""
    parts = []
    for is_noun, templates in ((True, view.templates), (False, view.adj_templates)):
        labels = [lab for lab, p in zip(refined.labels, refined.pos, strict=True) if (p == "noun") == is_noun]
        if labels:
            parts.append(encoder.embed(labels, get_templates(templates)))
    return np.concatenate(parts)


def _pair_embedder(encoder: Any, view: TextView) -> PairEmbedder:
    """NegRefine's pair-text embedding (3.4: the 8 noun templates, raw-mean), PAIR_BATCH at a time."""

    def embed(texts: list[str]) -> np.ndarray:
        parts = [texts[i : i + PAIR_BATCH] for i in range(0, len(texts), PAIR_BATCH)]
        return np.concatenate([encoder.embed(part, get_templates(view.templates)) for part in parts])

    return embed


def _mine_ranks(inp: ScoreInput, refined: RefinedNegatives) -> list[int]:
    """Each cleaned negative's rank in mine's order (its first occurrence: cleaning merges labels)."""
    rows = inp.negative_rows()
    first: dict[tuple[str, str], int] = {}
    for pos, label, rank in zip(
        rows.column("pos").to_pylist(), rows.column("clean_label").to_pylist(),
        rows.column("rank").to_pylist(), strict=True,
    ):  # fmt: skip
        first.setdefault((pos, label), rank)
    return [first.get((p, label), -1) for p, label in zip(refined.pos, refined.labels, strict=True)]


def score_negrefine(inp: ScoreInput) -> Scored:
    """NegRefine per judge and its ablations (3.3-3.4); S_MM over every negative set from one pass
    of distinct pair texts. Without ablations only negrefine[J] (or, with no judge, _nofilter).
    With `pool` = J one set: the negatives mined from the pool J filtered (negrefine[pool=J]); its
    pair counts go to the manifest under pool_pairs, the others' under pairs."""
    out, pool, sc, method, config = Scored(), inp.pool, inp.sc, inp.method, inp.config
    view = CANDIDATE_VIEWS[method.candidate_view or ""]
    judges, scope = (inp.judges, config.filter.scope) if pool is None else ((), "")
    kept = {j: filtered_kept(KEPT.read(inp.run_dir, j), inp.mined, scope) for j in judges}
    refined = refined_negatives(
        inp.negatives, kept, method=method.name, order=sc.negrefine_order, seed=config.run.seed
    )

    def column(k: str | None, s_mm: bool) -> ScoreColumn:  # negative set k's column (None: unfiltered)
        return score_column(method, pool or k, s_mm=s_mm, seed=inp.seed, pool=pool is not None)

    rows = {k: column(k, True).row for k in refined.sets}  # negative set -> its final row
    use = [k for k in refined.sets if k is not None or sc.ablations or not judges]
    sets = {rows[k]: refined.sets[k] for k in use}
    encoder = TextEncoder(config, inp.connect_ray)
    neg_text, id_text = _embed_refined(refined, encoder, view), inp.id_text()
    before = encoder.encoded
    s_mm, pairs = multi_matching_scores(
        inp.image, id_text, neg_text, sets=sets,
        names=(inp.ids.column("label").to_pylist(), refined.labels),
        embed_pairs=_pair_embedder(encoder, view),
        k_pos=sc.k_pos, k_neg=sc.k_neg, logit_scale=sc.logit_scale, chunk_size=sc.chunk_size,
    )  # fmt: skip
    pairs["texts_encoded"] = encoder.encoded - before
    encoder.close()  # the text actors, if a pair batch went to Ray
    every = NegativeSet(refined.labels, refined.pos, _mine_ranks(inp, refined), neg_text)
    for judge in use:
        row = rows[judge]
        used = out.uses(row, every.take(sets[row]))
        s_nl = out.grouped(inp, row, id_text, neg_text[sets[row]])
        if sc.ablations:
            out.add(column(judge, False), s_nl, negatives=used)
        out.add(column(judge, True), scores.negrefine(s_nl, s_mm[row], alpha=sc.alpha), negatives=used)
    out.manifest = {"pairs": pairs} if pool is None else {"pool_pairs": {pool: pairs}}
    return out
