"""Which images fool a method: per method and OOD dataset, the k OOD images its score ranks most
ID-like and the k ID images it ranks most OOD-like, each with what pulled it there (its top ID labels
and top negatives by cosine, NegRefine's multi-matching pairs, InterNeg's bank flag) and where it
lies against the FPR95 threshold (core.metrics.fpr95_threshold).

Reads score/scores.parquet and columns.json (the scores, each column's negative set and flags),
score/negative_sets.parquet, embed-text/id_labels.parquet and, for the few images shown only, their
embeddings in embed-images/images.parquet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.config import JobConfig
from negrefine_ray.core import scores
from negrefine_ray.core.methods import METHODS, embedding_name
from negrefine_ray.core.metrics import fpr95_threshold
from negrefine_ray.core.vectors import l2_normalise
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.artifacts import ID_LABELS, IMAGES, NEGATIVE_SETS, view_matrix
from negrefine_ray.runfolder.atomic import column_matrix

Similar = tuple[str, float]  # (label, cosine)


@dataclass
class Card:
    """One image of a gallery. `row`: its row of scores.parquet; `rank`: 1 = the hardest of `of`;
    `counted`: an OOD image at or above the FPR95 threshold (a false positive there) or an ID image
    below it (rejected there); `pairs`: NegRefine's (ID label, negative) pairs; `banked`: InterNeg,
    whether its inversion entered the bank (None for other methods)."""

    row: int
    dataset: str
    path: str
    score: float
    rank: int
    of: int
    counted: bool
    id_labels: list[Similar] = field(default_factory=list)
    negatives: list[Similar] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    banked: bool | None = None


@dataclass
class Gallery:
    """One method on one OOD dataset: its column, the FPR95 threshold, and the hardest images."""

    method: str
    label: str
    column: str
    dataset: str
    threshold: float
    ood: list[Card]
    id: list[Card]


def shown_columns(catalogue: Sequence[Mapping[str, Any]]) -> dict[str, dict[str | None, Mapping[str, Any]]]:
    """Per method (catalogue order), the column the galleries show, per OOD dataset (key None for a
    column shared by every dataset): the method's full score, not an ablation (NegRefine with S_MM
    and its first judge, InterNeg with its visual negatives), over the mine stage's pool."""
    out: dict[str, dict[str | None, Mapping[str, Any]]] = {}
    for method in dict.fromkeys(c["method"] for c in catalogue):
        own = [c for c in catalogue if c["method"] == method and not c.get("pool")]
        if not own:
            continue
        best = max(own, key=lambda c: (c["s_mm"], c["judge"] is not None, c.get("visual", False)))
        row = best["row"]
        out[method] = {c["ood_dataset"]: c for c in own if c["row"] == row}
    return out


def _values(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def pick(table: pa.Table, catalogue: Sequence[Mapping[str, Any]], k: int) -> list[Gallery]:
    """The galleries (method x OOD dataset, catalogue and dataset order) with the k hardest images of
    each side; ties are broken by row order (stable sorts), so the choice is reproducible."""
    status = table.column("status").to_numpy(zero_copy_only=False)
    role = table.column("role").to_numpy(zero_copy_only=False)
    dataset = table.column("dataset").to_numpy(zero_copy_only=False)
    paths = table.column("path").to_pylist()
    ood_sets = list(dict.fromkeys(dataset[(role == "ood") & (status == "ok")].tolist()))
    galleries = []
    for method, columns in shown_columns(catalogue).items():
        for d in ood_sets:
            column = columns.get(d) or columns.get(None)
            if column is None:
                continue
            v = _values(table, column["name"])
            is_id = (status == "ok") & (role == "id") & np.isfinite(v)
            is_d = (status == "ok") & (dataset == d) & np.isfinite(v)
            if not is_id.any() or not is_d.any():
                continue
            t = fpr95_threshold(v[is_id], v[is_d])
            ood_rows = np.flatnonzero(is_d)[np.argsort(-v[is_d], kind="stable")]
            id_rows = np.flatnonzero(is_id)[np.argsort(v[is_id], kind="stable")]
            hardest = [_cards(ood_rows[:k], v, t, True), _cards(id_rows[:k], v, t, False)]
            for cards, rows in zip(hardest, (ood_rows, id_rows), strict=True):
                for card in cards:
                    card.of, card.dataset, card.path = rows.size, str(dataset[card.row]), paths[card.row]
            label = METHODS[method].display if method in METHODS else method
            galleries.append(Gallery(method, label, column["name"], d, t, *hardest))
    return galleries


def _cards(rows: np.ndarray, v: np.ndarray, threshold: float, ood: bool) -> list[Card]:
    """Cards of `rows` (hardest first) scored `v`; dataset, path and `of` are filled by the caller."""
    return [
        Card(
            int(r), "", "", float(v[r]), i + 1, 0, bool(v[r] >= threshold) if ood else bool(v[r] < threshold)
        )
        for i, r in enumerate(rows)
    ]


def explain(
    galleries: Sequence[Gallery],
    table: pa.Table,
    catalogue: Sequence[Mapping[str, Any]],
    flags: Sequence[Mapping[str, str]],
    run_dir: Path,
    config: JobConfig,
) -> None:
    """Fill each card's top ID labels and negatives (cosines of the image's embedding in its column's
    preprocessing with the method's ID view and the column's negative set), NegRefine's pairs
    (core.scores.top_pairs with score.k_pos/k_neg) and InterNeg's bank flag. Only the shown images'
    embeddings are read."""
    top = config.report.top_labels
    by_name = {c["name"]: c for c in catalogue}
    flag_of = {f["column"]: f["name"] for f in flags}
    ids = ID_LABELS.read(run_dir)
    id_names = ids.column("label").to_pylist()
    sets = NEGATIVE_SETS.read(run_dir)
    embeddings = _embeddings(galleries, table, by_name, run_dir)
    for g in galleries:
        column = by_name[g.column]
        method = METHODS.get(g.method)
        if method is None:
            continue
        cards = g.ood + g.id
        rows = [c.row for c in cards]
        if not cards:
            continue
        shown, matrix = embeddings[column.get("preprocess", "")]
        image = matrix[np.searchsorted(shown, rows)]
        id_text = view_matrix(ids, method.id_view)
        cos = image @ id_text.T
        for card, c in zip(cards, cos, strict=True):
            card.id_labels = _top(c, id_names, top)
        if column.get("negatives"):
            part = sets.filter(pc.equal(sets.column("set"), column["negatives"])).sort_by("index")
            labels, neg = part.column("label").to_pylist(), l2_normalise(column_matrix(part, "embedding"))
            cos = image @ neg.T
            for card, c in zip(cards, cos, strict=True):
                card.negatives = _top(c, labels, top)
            if column["s_mm"] and neg.shape[0]:
                sc = config.score
                pos_idx, neg_idx, _ = scores.top_pairs(
                    image, id_text, neg, k_pos=sc.k_pos, k_neg=min(sc.k_neg, neg.shape[0]),
                    logit_scale=sc.logit_scale,
                )  # fmt: skip
                for card, p, n in zip(cards, pos_idx, neg_idx, strict=True):
                    card.pairs = [(id_names[a], labels[b]) for a in p for b in n]
        flag = flag_of.get(g.column)
        if flag is not None:
            values = _values(table, flag)
            for card in cards:
                card.banked = bool(values[card.row] == 1.0)


def _top(cos: np.ndarray, names: Sequence[str], k: int) -> list[Similar]:
    order = np.argsort(-cos, kind="stable")[:k]
    return [(names[i], round(float(cos[i]), 4)) for i in order]


def _embeddings(
    galleries: Sequence[Gallery], table: pa.Table, by_name: Mapping[str, Mapping[str, Any]], run_dir: Path
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per preprocessing: the shown rows of scores.parquet (sorted) and their (n, D) unit embeddings.
    images.parquet lists the prototype images too, which scores.parquet leaves out, so rows are
    mapped through images.parquet's other rows."""
    listing = IMAGES.read(run_dir, columns=IMAGES.schema.names if IMAGES.schema else None)
    is_scored = ~pc.fill_null(pc.equal(listing.column("role"), "prototype"), False).to_numpy(
        zero_copy_only=False
    )
    scored_rows = np.flatnonzero(is_scored)
    if scored_rows.size != table.num_rows:
        raise StageError(
            f"score/scores.parquet has {table.num_rows:,} rows but embed-images lists {scored_rows.size:,} "
            "scored images; rerun the score stage."
        )
    wanted: dict[str, set[int]] = {}
    for g in galleries:
        variant = by_name[g.column].get("preprocess", "")
        wanted.setdefault(variant, set()).update(c.row for c in g.ood + g.id)
    out = {}
    for variant, rows in wanted.items():
        shown = np.array(sorted(rows), dtype=np.int64)
        mask = np.zeros(listing.num_rows, dtype=bool)
        mask[scored_rows[shown]] = True
        out[variant] = (shown, l2_normalise(IMAGES.matrix(run_dir, embedding_name(variant), mask)))
    return out
