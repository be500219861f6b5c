"""Comparison of NegFilter judges: removal counts, per-kind agreement and Cohen's kappa on the
questions both judges answered, and labels one judge removed while another kept."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

EXAMPLES = 10


def cohen_kappa(a: list[bool], b: list[bool]) -> float:
    """κ = (p_o − p_e) / (1 − p_e) for two raters' yes/no answers; nan when p_e = 1 or no answers."""
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ya, yb = sum(a) / n, sum(b) / n
    p_e = ya * yb + (1 - ya) * (1 - yb)
    return math.nan if p_e == 1 else (p_o - p_e) / (1 - p_e)


def _valid_answers(decisions: pa.Table, kind: str) -> dict[str, bool]:
    rows = decisions.select(["qid", "kind", "answer"]).to_pylist()
    return {r["qid"]: r["answer"] == "yes" for r in rows if r["kind"] == kind and r["answer"] != "invalid"}


def _pair(a: tuple[pa.Table, pa.Table], b: tuple[pa.Table, pa.Table]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("proper", "subcategory"):
        ans_a, ans_b = _valid_answers(a[0], kind), _valid_answers(b[0], kind)
        common = sorted(ans_a.keys() & ans_b.keys())
        xa, xb = [ans_a[q] for q in common], [ans_b[q] for q in common]
        agree = sum(x == y for x, y in zip(xa, xb, strict=True)) / len(common) if common else math.nan
        out[kind] = {"questions": len(common), "agreement": agree, "kappa": cohen_kappa(xa, xb)}
    kept_a = dict(zip(a[1].column("label").to_pylist(), a[1].column("kept").to_pylist(), strict=True))
    kept_b = dict(zip(b[1].column("label").to_pylist(), b[1].column("kept").to_pylist(), strict=True))
    only_a = [label for label, k in kept_a.items() if not k and kept_b.get(label)]
    only_b = [label for label, k in kept_b.items() if not k and kept_a.get(label)]
    out["removed_only_by_first"] = {"count": len(only_a), "examples": only_a[:EXAMPLES]}
    out["removed_only_by_second"] = {"count": len(only_b), "examples": only_b[:EXAMPLES]}
    return out


def compare_judges(runs: Mapping[str, tuple[pa.Table, pa.Table]]) -> dict[str, Any]:
    """`runs`: judge name -> (decisions table, labels table) as the filter stage writes them."""
    counts = {}
    for name, (_, labels) in runs.items():
        reasons = labels.column("reason").to_pylist()
        counts[name] = {r: reasons.count(r) for r in ("proper", "same", "subcategory", "kept")}
    pairs = {f"{a} vs {b}": _pair(runs[a], runs[b]) for a, b in itertools.combinations(runs, 2)}
    return {"counts": counts, "pairs": pairs}


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    lines = [
        "# NegFilter judges compared",
        "",
        "| judge | proper | same | subcategory | kept |",
        "|---|---|---|---|---|",
    ]
    for name, c in comparison["counts"].items():
        lines.append(f"| {name} | {c['proper']:,} | {c['same']:,} | {c['subcategory']:,} | {c['kept']:,} |")
    lines += ["", "| pair | kind | questions | agreement | Cohen's κ |", "|---|---|---|---|---|"]
    for pair, stats in comparison["pairs"].items():
        for kind in ("proper", "subcategory"):
            s = stats[kind]
            lines.append(
                f"| {pair} | {kind} | {s['questions']:,} | {s['agreement']:.3f} | {s['kappa']:.3f} |"
            )
    for pair, stats in comparison["pairs"].items():
        first, second = pair.split(" vs ")
        for key, who, other in (
            ("removed_only_by_first", first, second),
            ("removed_only_by_second", second, first),
        ):
            entry = stats[key]
            examples = ", ".join(f"'{e}'" for e in entry["examples"]) or "none"
            lines.append(f"- removed by {who}, kept by {other}: {entry['count']:,} (e.g. {examples})")
    return "\n".join(lines) + "\n"
