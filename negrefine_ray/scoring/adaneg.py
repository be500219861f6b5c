"""AdaNeg's scorer (methods.md Appendix D): its 10,000 negatives come from the mine stage (the
order-statistic rule over InterNeg's pool and prompts); here, per OOD dataset, the online stream of
that dataset's images and the ID images (core.adaneg.run_adaneg), one column `adaneg@d` each (its ID
scores depend on the stream, as DNM's and InterNeg's do). With adaneg.shuffles = N the streams of
run.seed + 1 .. N - 1 run too and the manifest gives each metric's mean and std over the N. Each
(dataset, shuffle) stream is a Ray task, so they run in parallel (scoring.streams)."""

from __future__ import annotations

from typing import Any

import numpy as np

from negrefine_ray.config import JobConfig
from negrefine_ray.core import adaneg
from negrefine_ray.scoring.columns import score_column
from negrefine_ray.scoring.inputs import Scored, ScoreInput
from negrefine_ray.scoring.streams import ood_streams, seeded_rows


def adaneg_stream(
    config: JobConfig,
    image: np.ndarray,
    is_id: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, dict[str, int]]:
    """One stream (rows of one OOD dataset and the ID rows, `is_id`) in the order seeded by `seed`:
    scores in row order and the memories' counts."""
    cfg = config.adaneg
    scores, memory, counts = adaneg.run_adaneg(
        image, id_text=id_text, neg_text=neg_text, order=seeded_rows(is_id, seed), batch_size=cfg.batch_size,
        thres=cfg.thres, gap=cfg.gap, memory_length=cfg.memory_length, lambda_=cfg.lambda_static,
        n_groups=cfg.n_groups, logit_scale=cfg.logit_scale or config.score.logit_scale,
        replacement=cfg.replacement, fill_last_slot=cfg.fill_last_slot,
    )  # fmt: skip
    counts["labels_with_images"] = int((memory.count > 1).sum())
    return scores, counts


def score_adaneg(inp: ScoreInput) -> Scored:
    """AdaNeg's columns adaneg@d (with `pool` = J: over the negatives mined from the pool J filtered)."""
    out, config, method, pool = Scored(), inp.config, inp.method, inp.pool
    cfg = config.adaneg
    negatives = inp.negative_set()
    id_text, neg_text = inp.id_text(), negatives.embedding
    used = out.uses(method.row(pool, pool=pool is not None)[0], negatives)
    out.check_groups(cfg.n_groups, neg_text.shape[0], used)
    inp.connect_ray()
    shared = {"id_text": id_text, "neg_text": neg_text}
    results = ood_streams(adaneg_stream, config, inp.image, inp.ood_of, inp.ood, shared, cfg.shuffles)
    streams: dict[str, Any] = {}
    for name, (values, entry, _) in results.items():
        column = score_column(method, pool, ood=name, seed=config.run.seed, pool=pool is not None)
        out.add(column, values, negatives=used)
        streams[name] = entry
    key = method.name if pool is None else f"{method.name}[pool={pool}]"
    out.manifest = {key: {"negatives": int(neg_text.shape[0]), "streams": streams}}
    return out
