"""InterNeg's scorer (methods.md 5): its textual negatives are chosen here, not in mine,
because the inter-modal rule needs the ID image prototypes (embed-images' rows of role "prototype");
then the textual score, and per OOD dataset the online stream that inverts confident OOD images into
further negatives (core.interneg.run_online with clip.inversion's OnlineInverter).

Columns (one per OOD dataset d, like DNM's: InterNeg rescores the ID images in each dataset's
stream): `interneg_text@d` (the textual negatives alone) and `interneg@d` (textual + visual, the
stream of shuffle 0 = run.seed). With interneg.shuffles = N the streams of run.seed + 1 .. N - 1 run
too and the manifest gives each metric's mean and std over the N. Each (dataset, shuffle) stream is a
Ray task (one GPU each where there are GPUs), so they run in parallel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.config import InterNegConfig, JobConfig
from negrefine_ray.core import interneg
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.artifacts import POOLS
from negrefine_ray.runfolder.atomic import column_matrix
from negrefine_ray.scoring.columns import score_column
from negrefine_ray.scoring.inputs import NegativeSet, Scored, ScoreInput
from negrefine_ray.scoring.streams import ood_streams, seeded_rows, stream_rows

Precision = {"fp32": "float32", "fp16": "float16"}


def _logit_scale(config: JobConfig) -> float:
    """InterNeg's cosine scale: interneg.logit_scale, or score.logit_scale where that is 0."""
    return config.interneg.logit_scale or config.score.logit_scale


def prototypes(
    labels: np.ndarray, embeddings: np.ndarray, id_names: list[str], per_class: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """(K, D) class prototypes of the prototype images (5.2 step 1) and their counts; a class without
    a readable image stops the run, naming it; classes with fewer than `per_class` are reported."""
    k = len(id_names)
    bad = labels[(labels < 0) | (labels >= k)]
    if bad.size:
        raise StageError(
            f"prototype images carry labels outside 0..{k - 1} (e.g. {int(bad[0])}); their labels must "
            "index labels.id_labels (an imagefolder's sorted class folders, or the image list's labels)."
        )
    protos, counts = interneg.class_prototypes(embeddings, labels, k)
    empty = [id_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise StageError(
            f"InterNeg has no readable prototype image for {len(empty)} of {k} ID classes, e.g. "
            f"{', '.join(repr(n) for n in empty[:5])}; add images of those classes to the prototype dataset."
        )
    short = {id_names[i]: int(counts[i]) for i in np.flatnonzero(counts < per_class)} if per_class else {}
    stats = {"images": int(counts.sum()), "classes": k, "min_per_class": int(counts.min()), "short": short}
    return protos, stats


def textual_negatives(
    pools: pa.Table, id_text: np.ndarray, protos: np.ndarray, m: int, method: str, *, half: bool = False
) -> tuple[NegativeSet, np.ndarray, dict[str, Any]]:
    """(selected [adjectives | nouns], each ranked within its part of speech; base similarity (K,);
    counts) from `method`'s rows of mine/pools.parquet (5.3): admissible words by the inter-modal
    rule, split in proportion, ranked by deviation; `half`: in the reference's fp16 arithmetic (5.6)."""
    rows = pools.filter(pc.equal(pools.column("method"), method))
    if rows.num_rows == 0:
        raise StageError(f"mine/pools.parquet has no candidates of '{method}'; add it to mining.methods.")
    pos = np.array(rows.column("pos").to_pylist())
    emb, words = column_matrix(rows, "embedding"), rows.column("word").to_pylist()
    nouns, adjs = emb[pos == "noun"], emb[pos != "noun"]
    base = interneg.base_similarity(id_text, protos, half=half)
    chosen = interneg.select_interneg(nouns, adjs, protos=protos, base=base, m=m, allow_fewer=True, half=half)
    noun_words = [w for w, p in zip(words, pos, strict=True) if p == "noun"]
    adj_words = [w for w, p in zip(words, pos, strict=True) if p != "noun"]
    labels = chosen.labels(noun_words, adj_words)
    stats = {
        "pool_nouns": len(noun_words),
        "pool_adjectives": len(adj_words),
        "admissible_nouns": chosen.n_admissible_nouns,
        "admissible_adjectives": chosen.n_admissible_adjectives,
        "selected_nouns": chosen.noun_num,
        "selected_adjectives": chosen.adj_num,
        "first_labels": labels[:5],
    }
    pos_of = ["adj"] * chosen.adj_num + ["noun"] * chosen.noun_num
    rank = [*range(chosen.adj_num), *range(chosen.noun_num)]
    return NegativeSet(labels, pos_of, rank, chosen.stack(nouns, adjs)), base, stats


def _inverter(config: JobConfig, seed: int, device: str) -> Callable[[np.ndarray], np.ndarray]:
    from negrefine_ray.clip.inversion import OnlineInverter

    cfg = config.interneg
    return OnlineInverter.load(
        config.model, seed=seed, device=device, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay
    )


def online_scores(
    config: JobConfig,
    image: np.ndarray,
    is_id: np.ndarray,
    id_text: np.ndarray,
    text_negs: np.ndarray,
    protos: np.ndarray,
    base: np.ndarray,
    seed: int,
    device: str = "cpu",
    invert: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, int], np.ndarray]:
    """One OOD dataset's stream (its rows and the ID rows, `is_id`) in the order seeded by `seed`
    (5.5), inverting on `device`: scores in row order, the counts of activated, inverted and kept
    embeddings, and per row whether its inversion entered the bank."""
    cfg: InterNegConfig = config.interneg
    banked = np.zeros(image.shape[0], dtype=bool)
    values, counts = interneg.run_online(
        image, is_id, id_text=id_text, text_negs=text_negs, protos=protos, base=base,
        invert=invert or _inverter(config, seed, device), order=seeded_rows(is_id, seed),
        batch_size=cfg.batch_size,
        threshold=cfg.threshold, k_extra=cfg.k_extra, n_groups=cfg.n_groups,
        logit_scale=_logit_scale(config), dtype=Precision[cfg.precision],  # type: ignore[arg-type]
        banked=banked,
    )  # fmt: skip
    return values, counts, banked


def score_interneg(inp: ScoreInput) -> Scored:
    """InterNeg's columns interneg_text@d and interneg@d; its selection, prototypes and streams go to
    the manifest under the method's name."""
    out, config, method = Scored(), inp.config, inp.method
    cfg = config.interneg
    per_class = max((d.per_class for d in config.datasets if d.role == "prototype"), default=0)
    names = inp.ids.column("label").to_pylist()
    if inp.prototypes is None or len(inp.prototypes[0]) == 0:
        raise StageError(
            f"{method.display} needs readable images of a dataset with role 'prototype'; none were embedded."
        )
    protos, proto_stats = prototypes(*inp.prototypes, names, per_class)
    id_text = inp.id_text()
    pools = POOLS.read(inp.run_dir)
    half = cfg.precision == "fp16"  # the reference's arithmetic: the selection's cosines too
    negatives, base, selection = textual_negatives(
        pools, id_text, protos, cfg.n_negatives, method.name, half=half
    )
    text_negs = negatives.embedding
    used = out.uses(method.name, negatives)
    if len(text_negs) < cfg.n_groups:
        raise StageError(
            f"InterNeg selected {len(text_negs)} textual negatives ({selection['admissible_nouns']:,} "
            f"nouns and {selection['admissible_adjectives']:,} adjectives are admissible), fewer than "
            f"interneg.n_groups = {cfg.n_groups}; lower interneg.n_groups or use a larger pool."
        )
    dtype = Precision[cfg.precision]
    textual = interneg.interneg_score(
        inp.image, id_text, text_negs, n_groups=cfg.n_groups, logit_scale=_logit_scale(config),
        dtype=dtype,  # type: ignore[arg-type]
    )  # fmt: skip
    inp.connect_ray()
    shared = {"id_text": id_text, "text_negs": text_negs, "protos": protos, "base": base}
    from negrefine_ray.distributed.pools import cluster_gpus

    gpu = config.model.device != "cpu" and cluster_gpus() >= 1  # the inversions run CLIP's text tower
    results = ood_streams(
        online_scores, config, inp.image, inp.ood_of, inp.ood, shared, cfg.shuffles,
        gpus=1 if gpu else 0, device="cuda" if gpu else "cpu",
    )  # fmt: skip
    _, rows_of = stream_rows(inp.ood_of, inp.ood)
    streams: dict[str, Any] = {}
    for name, (values, entry, banked) in results.items():
        textual_column = np.full(inp.image.shape[0], np.nan)
        textual_column[rows_of[name]] = textual[rows_of[name]]  # its stream's rows only
        out.add(score_column(method, ood=name), textual_column, negatives=used)
        visual = score_column(method, ood=name, visual=True, seed=config.run.seed)
        out.add(visual, values, negatives=used)
        if banked is not None:
            out.flags.append((f"{visual.name}#banked", visual.name, "inverted into the bank", banked))
        streams[name] = entry
    out.manifest = {method.name: {"prototypes": proto_stats, "selection": selection, "streams": streams}}
    return out
