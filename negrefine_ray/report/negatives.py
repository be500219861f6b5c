"""The negative labels a reader can search: per method, each negative it selected with its part of
speech and rank, and under each NegFilter judge whether it was kept or removed and why (a proper noun,
the same as or a subcategory of which ID label). Labels on which the judges disagree come first, then
those a judge removed, then the rest, each part in rank order.

A method that NegFilter filters (catalogue flag `filtered`: NegRefine) lists the judges' input, its
cleaned negatives (mine/negatives.parquet's filter inputs), so the removed labels appear too; the
others list the set their score used (score/negative_sets.parquet), with the judges' decisions only
when the judges judged every candidate (filter.scope = "corpus"): in the reference scope they were
asked about NegRefine's negatives alone. Sets mined from a pool a judge filtered (mining.filtered_by)
are not listed: every label in them was kept by that judge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.core.methods import METHODS
from negrefine_ray.runfolder.artifacts import LABELS, NEGATIVE_SETS, NEGATIVES

Decision = tuple[bool, str]  # (kept, why: "kept", "proper noun", "subcategory of <ID label>", ...)
REASONS = {"proper": "proper noun", "same": "the same as {id}", "subcategory": "subcategory of {id}"}


@dataclass
class NegativeList:
    """One method's negatives in display order; `decisions[judge][i]` is label i's (kept, why), or
    None where that judge was not asked about it."""

    method: str
    label: str
    source: str
    labels: list[str]
    pos: list[str]
    rank: list[int]
    decisions: dict[str, list[Decision | None]] = field(default_factory=dict)

    def disagreements(self) -> int:
        return sum(1 for i in range(len(self.labels)) if self.disagree(i))

    def kept(self, i: int) -> bool:
        """Whether no judge removed label i."""
        return all(d is None or d[0] for d in (column[i] for column in self.decisions.values()))

    def disagree(self, i: int) -> bool:
        """Whether the judges asked about label i decided differently."""
        kept = {d[0] for d in (column[i] for column in self.decisions.values()) if d is not None}
        return len(kept) > 1


def why(reason: str, id_label: str) -> str:
    """A judge's reason in words."""
    return REASONS.get(reason, reason).format(id=id_label or "?")


def _judged(run_dir: Path, judges: Sequence[str]) -> dict[str, dict[tuple[str, str], Decision]]:
    out = {}
    for judge in judges:
        t = LABELS.read(run_dir, judge)
        out[judge] = {
            (p, label): (bool(k), why(r, i))
            for label, p, r, i, k in zip(
                *(t.column(c).to_pylist() for c in ("label", "pos", "reason", "id_label", "kept")),
                strict=True,
            )
        }
    return out


def _filter_inputs(negatives: pa.Table, method: str) -> tuple[list[str], list[str], list[int]]:
    """A filtered method's cleaned negatives (the judges' input), first occurrence, in rank order."""
    rows = negatives.filter(pc.equal(negatives.column("method"), method))
    if "filter_input" not in rows.column_names:
        return [], [], []
    rows = rows.filter(pc.fill_null(rows.column("filter_input"), False)).sort_by("rank")
    seen: dict[tuple[str, str], int] = {}
    for label, p, rank in zip(
        *(rows.column(c).to_pylist() for c in ("clean_label", "pos", "rank")), strict=True
    ):
        seen.setdefault((p, label), rank)
    return [k[1] for k in seen], [k[0] for k in seen], list(seen.values())


def negative_lists(
    run_dir: Path, catalogue: Sequence[Mapping[str, Any]], judges: Sequence[str], scope: str = "reference"
) -> list[NegativeList]:
    """Every method's list (catalogue order): disagreements first, then labels a judge removed, then
    the rest, each by rank. `scope`: filter.scope (which labels the judges were asked about)."""
    sets = NEGATIVE_SETS.read(run_dir)
    decided = _judged(run_dir, judges)
    negatives = None
    out = []
    for method in dict.fromkeys(c["method"] for c in catalogue):
        own = [c for c in catalogue if c["method"] == method and not c.get("pool") and c.get("negatives")]
        if not own:
            continue
        entry = METHODS.get(method)
        if entry is not None and entry.filtered:
            negatives = negatives if negatives is not None else NEGATIVES.read(run_dir)
            labels, pos, rank = _filter_inputs(negatives, method)
            source = "its cleaned negatives, the NegFilter judges' input"
        else:
            name = own[0]["negatives"]
            part = sets.filter(pc.equal(sets.column("set"), name)).sort_by("index")
            labels, pos, rank = (part.column(c).to_pylist() for c in ("label", "pos", "rank"))
            source = f"the negatives its score used (set '{name}')"
        found = NegativeList(method, entry.display if entry else method, source, labels, pos, rank)
        asked = scope == "corpus" or (entry is not None and entry.filtered)
        for judge, table in decided.items() if asked else ():
            column = [table.get((p, label)) for label, p in zip(labels, pos, strict=True)]
            if any(d is not None for d in column):
                found.decisions[judge] = column
        order = sorted(range(len(labels)), key=lambda i: (not found.disagree(i), found.kept(i), rank[i], i))
        found.labels, found.pos = [labels[i] for i in order], [pos[i] for i in order]
        found.rank = [rank[i] for i in order]
        found.decisions = {j: [d[i] for i in order] for j, d in found.decisions.items()}
        out.append(found)
    return out
