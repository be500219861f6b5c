"""The scorers of L-MCM and GL-MCM (methods.md Appendix C): L-MCM per image comes from the image
actors (images.parquet's local-score column, ScoreInput.local); GL-MCM adds MCM on the global feature
over the same 'a photo of a {}' prompts, at the same temperature."""

from __future__ import annotations

import numpy as np

from negrefine_ray.core import scores
from negrefine_ray.core.glmcm import glmcm
from negrefine_ray.errors import StageError
from negrefine_ray.scoring.columns import score_column
from negrefine_ray.scoring.inputs import Scored, ScoreInput


def _local(inp: ScoreInput) -> np.ndarray:
    if inp.local is None:
        raise StageError(f"{inp.method.display} needs the images' local scores; rerun embed-images.")
    return inp.local


def score_lmcm(inp: ScoreInput) -> Scored:
    """L-MCM: the maximum over patches and ID labels of the local features' softmax."""
    out = Scored()
    out.add(score_column(inp.method), _local(inp).astype(np.float64))
    return out


def score_glmcm(inp: ScoreInput) -> Scored:
    """GL-MCM: MCM(x) + glmcm.lambda_local x L-MCM(x)."""
    cfg, out = inp.config.glmcm, Scored()
    global_mcm = inp.rows.map(
        scores.mcm,
        inp.image,
        id_text=inp.id_text(),
        temperature=cfg.temperature,
        chunk_size=inp.sc.chunk_size,
    )
    out.add(score_column(inp.method), glmcm(global_mcm, _local(inp), cfg.lambda_local))
    return out
