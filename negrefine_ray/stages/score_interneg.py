"""InterNeg in the score stage (methods.md 5): its textual negatives are chosen here, not in mine,
because the inter-modal rule needs the ID image prototypes (embed-images' rows of role "prototype");
then the textual score, and per OOD dataset the online stream that inverts confident OOD images into
further negatives (core.interneg.run_online with clip.inversion's OnlineInverter).

Columns (one per OOD dataset d, like DNM's: InterNeg rescores the ID images in each dataset's
stream): `interneg_text@d` (the textual negatives alone) and `interneg@d` (textual + visual, the
stream of shuffle 0 = run.seed). With interneg.shuffles = N the streams of run.seed + 1 .. N - 1 run
too and the manifest gives each metric's mean and std over the N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.artifacts import column_matrix, read_parquet
from negrefine_ray.config import InterNegConfig, JobConfig
from negrefine_ray.core import interneg
from negrefine_ray.core.methods import Method
from negrefine_ray.errors import StageError

Precision = {"fp32": "float32", "fp16": "float16"}


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
    pools: pa.Table, id_text: np.ndarray, protos: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(selected (M, D) [adjectives | nouns], base similarity (K,), counts) from mine/pools.parquet
    (5.3): admissible words by the inter-modal rule, split in proportion, ranked by deviation."""
    rows = pools.filter(pc.equal(pools.column("method"), "interneg"))
    if rows.num_rows == 0:
        raise StageError("mine/pools.parquet has no InterNeg candidates; add 'interneg' to mining.methods.")
    pos = np.array(rows.column("pos").to_pylist())
    emb, words = column_matrix(rows, "embedding"), rows.column("word").to_pylist()
    nouns, adjs = emb[pos == "noun"], emb[pos != "noun"]
    base = interneg.base_similarity(id_text, protos)
    chosen = interneg.select_interneg(nouns, adjs, protos=protos, base=base, m=m, allow_fewer=True)
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
    return chosen.stack(nouns, adjs), base, stats


def _inverter(config: JobConfig, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    from negrefine_ray.clip.inversion import OnlineInverter

    cfg = config.interneg
    return OnlineInverter.load(
        config.model,
        seed=seed,
        device=config.model.device,
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
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
    invert: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """One OOD dataset's stream (its rows and the ID rows, `is_id`) in the order seeded by `seed`
    (5.5): scores in row order and the counts of activated, inverted and kept embeddings."""
    cfg: InterNegConfig = config.interneg
    order = interneg.stream_order(int(is_id.sum()), int((~is_id).sum()), seed)
    # stream_order indexes [ID rows | OOD rows]; map it onto this table's rows
    rows = np.concatenate([np.flatnonzero(is_id), np.flatnonzero(~is_id)])
    return interneg.run_online(
        image, is_id, id_text=id_text, text_negs=text_negs, protos=protos, base=base,
        invert=invert or _inverter(config, seed), order=rows[order], batch_size=cfg.batch_size,
        threshold=cfg.threshold, k_extra=cfg.k_extra, n_groups=cfg.n_groups,
        logit_scale=config.score.logit_scale, dtype=Precision[cfg.precision],  # type: ignore[arg-type]
    )  # fmt: skip


def shuffle_spread(
    config: JobConfig, columns: dict[int, np.ndarray], is_id: np.ndarray
) -> dict[str, dict[str, float]]:
    """Mean and std over the shuffles of each metric of one OOD dataset's stream scores."""
    from negrefine_ray.core.metrics import compute_metrics

    per = [compute_metrics(v[is_id], v[~is_id]) for v in columns.values()]
    return {
        m: {"mean": float(np.mean([p[m] for p in per])), "std": float(np.std([p[m] for p in per]))}
        for m in per[0]
    }


def run_interneg(scorer: Any, method: Method) -> None:
    """The score stage's InterNeg (Method.scorer = "interneg"): columns interneg_text@d, interneg@d."""
    from negrefine_ray.stages.score import score_column

    ctx, config = scorer.ctx, scorer.ctx.config
    cfg = config.interneg
    per_class = max((d.per_class for d in config.datasets if d.role == "prototype"), default=0)
    names = scorer.ids.column("label").to_pylist()
    labels, embeddings = scorer.prototypes(method)
    protos, proto_stats = prototypes(labels, embeddings, names, per_class)
    id_text = scorer.id_text(method)
    pools = read_parquet(ctx.input("mine", "pools.parquet"))
    text_negs, base, selection = textual_negatives(pools, id_text, protos, cfg.n_negatives)
    if len(text_negs) < cfg.n_groups:
        raise StageError(
            f"InterNeg selected {len(text_negs)} textual negatives ({selection['admissible_nouns']:,} "
            f"nouns and {selection['admissible_adjectives']:,} adjectives are admissible), fewer than "
            f"interneg.n_groups = {cfg.n_groups}; lower interneg.n_groups or use a larger pool."
        )
    dtype = Precision[cfg.precision]
    textual = interneg.interneg_score(
        scorer.image, id_text, text_negs, n_groups=cfg.n_groups, logit_scale=config.score.logit_scale,
        dtype=dtype,  # type: ignore[arg-type]
    )  # fmt: skip
    is_id_all = np.array([d is None for d in scorer.ood_of], dtype=bool)
    streams: dict[str, Any] = {}
    for name in scorer.ood:
        rows = is_id_all | (scorer.ood_of == name)
        values = np.full(scorer.image.shape[0], np.nan)
        values[rows] = textual[rows]
        scorer.add(score_column(method, ood=name), values)
        image, is_id = scorer.image[rows], is_id_all[rows]
        by_shuffle, counts = {}, {}
        for s in range(cfg.shuffles):
            by_shuffle[s], counts[s] = online_scores(
                config, image, is_id, id_text, text_negs, protos, base, config.run.seed + s
            )
        values = np.full(scorer.image.shape[0], np.nan)
        values[rows] = by_shuffle[0]
        scorer.add(score_column(method, ood=name, visual=True, seed=config.run.seed), values)
        streams[name] = {"counts": counts[0], "images": int(rows.sum())}
        if cfg.shuffles > 1:
            streams[name]["shuffles"] = shuffle_spread(config, by_shuffle, is_id)
    scorer.extra["interneg"] = {"prototypes": proto_stats, "selection": selection, "streams": streams}
