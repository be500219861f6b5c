"""The report's judge comparison: each judge's filtered rows beside the unfiltered ones, with the
judge's cost, and the AUROC-against-cost plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from negrefine_ray.stages._report_judges import PLOT, judge_lines, judge_table, write_judge_plot


def _column(
    row: str, method: str, judge: str | None, s_mm: bool = False, pool: bool = False
) -> dict[str, Any]:
    return {"name": row, "row": row, "method": method, "judge": judge, "s_mm": s_mm, "pool": pool,
            "visual": False, "ood_dataset": None}  # fmt: skip


def _metrics(auroc: float) -> dict[str, Any]:
    return {"average": {"auroc": auroc, "fpr95": 1 - auroc}}


CATALOGUE = [
    _column("mcm", "mcm", None),
    _column("neglabel", "neglabel", None),
    _column("neglabel[pool=qwen]", "neglabel", "qwen", pool=True),
    _column("neglabel[pool=wordnet]", "neglabel", "wordnet", pool=True),
    _column("negrefine_nofilter", "negrefine", None, s_mm=True),
    _column("negrefine_nl_nofilter", "negrefine", None),
    _column("negrefine[qwen]", "negrefine", "qwen", s_mm=True),
    _column("negrefine_nl[qwen]", "negrefine", "qwen"),
    _column("negrefine[wordnet]", "negrefine", "wordnet", s_mm=True),
]
RESULT = {"rows": {c["row"]: _metrics(0.5 + i / 100) for i, c in enumerate(CATALOGUE)}}
COST = {"qwen": {"accounting": {"questions_sent": 900, "gpu_seconds": 12.5, "wall_s": 14.0}},
        "wordnet": {"accounting": {"questions_sent": 900, "gpu_seconds": 0.0, "wall_s": 0.5}}}  # fmt: skip


def test_each_judge_row_holds_its_filtered_methods_and_cost(tmp_path: Path) -> None:
    table = judge_table(RESULT, CATALOGUE, COST)
    assert list(table) == ["none", "qwen", "wordnet"]
    rows = RESULT["rows"]
    assert table["none"]["methods"] == {
        "neglabel": rows["neglabel"]["average"],
        "negrefine": rows["negrefine_nofilter"]["average"],
    }
    assert table["qwen"]["methods"]["negrefine"] == RESULT["rows"]["negrefine[qwen]"]["average"]
    assert table["qwen"]["methods"]["neglabel"] == RESULT["rows"]["neglabel[pool=qwen]"]["average"]
    assert table["qwen"]["cost"]["gpu_seconds"] == 12.5 and table["none"]["cost"] == {}
    lines = judge_lines(table)
    assert lines[0] == "## Judges compared"
    assert lines[-2] == "| qwen | 900 | 52.00 / 48.00 | 56.00 / 44.00 |"  # times: under Measured times
    assert write_judge_plot(table, tmp_path) == [PLOT] and (tmp_path / PLOT).stat().st_size > 1000


def test_without_filtered_rows_there_is_no_comparison(tmp_path: Path) -> None:
    unfiltered = [c for c in CATALOGUE if c["judge"] is None]
    assert judge_table(RESULT, unfiltered, COST) == {}
    assert judge_lines({}) == [] and write_judge_plot({}, tmp_path) == []
