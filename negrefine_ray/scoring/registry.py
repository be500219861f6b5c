"""The scorers, by the name a method's catalogue entry gives (core.methods Method.scorer): one table
of functions, each taking one frozen ScoreInput and returning its Scored columns.

Adding a method whose score is a new formula: its catalogue entry (core/methods.py), its pure
function (core/scores.py or a core module of its own) and its scorer here, listed in SCORERS. A
scorer whose method mines in the mine stage also scores the pools the judges of mining.filtered_by
filtered (ScoreInput.pool). Nothing in stages/ changes.
"""

from __future__ import annotations

from negrefine_ray.core.methods import METHODS, Method
from negrefine_ray.errors import unknown_name
from negrefine_ray.scoring.adaneg import score_adaneg
from negrefine_ray.scoring.basic import score_dnm, score_grouped, score_mcm
from negrefine_ray.scoring.glmcm import score_glmcm, score_lmcm
from negrefine_ray.scoring.inputs import Scorer
from negrefine_ray.scoring.interneg import score_interneg
from negrefine_ray.scoring.negrefine import score_negrefine

SCORERS: dict[str, Scorer] = {
    "mcm": score_mcm,
    "lmcm": score_lmcm,
    "glmcm": score_glmcm,
    "grouped": score_grouped,
    "dnm": score_dnm,
    "negrefine": score_negrefine,
    "interneg": score_interneg,
    "adaneg": score_adaneg,
}

_MISSING = sorted({m.scorer for m in METHODS.values()} - set(SCORERS))
if _MISSING:  # a catalogue entry without its scorer fails at import, not mid-run
    raise ImportError(f"core.methods names scorers that scoring.registry lacks: {_MISSING}")


def scorer_of(method: Method) -> Scorer:
    """The scorer of `method`'s catalogue entry."""
    if method.scorer not in SCORERS:
        raise unknown_name("scorer", method.scorer, SCORERS)
    return SCORERS[method.scorer]
