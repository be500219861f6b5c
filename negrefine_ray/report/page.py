"""report/report.html: one self-contained page, opened from the file system with no server and no
network. Its style and script (assets/) are inlined; the plots and thumbnails are files beside it.
The results tables sort by any column, the negative-label lists filter as one types; without
JavaScript everything is still there, unsorted.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from negrefine_ray.core.metrics import METRIC_INFO
from negrefine_ray.report.hardest import Card, Gallery
from negrefine_ray.report.negatives import NegativeList

Facts = Sequence[tuple[str, str]]
# Around the page's wall-clock figures (stage times): everything outside them is the same for a rerun
# of the same job (tests/test_reliability.py compares the bytes with what is between them removed).
MEASURED = ("<!-- measured -->", "<!-- /measured -->")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _asset(name: str) -> str:
    return resources.files("negrefine_ray.report").joinpath("assets", name).read_text(encoding="utf-8")


def _num(value: float, digits: int = 2, scale: float = 100.0) -> str:
    """A numeric cell: shown rounded, sorted by its exact value."""
    return f'<td class="num" data-v="{value!r}">{scale * value:.{digits}f}</td>'


def _table(table_id: str, header: Sequence[str], rows: Sequence[str], sortable: bool = True) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    cls = ' class="sortable"' if sortable else ""
    return (
        f'<table id="{table_id}"{cls}><thead><tr>{head}</tr></thead><tbody>'
        + "".join(f"<tr>{r}</tr>" for r in rows)
        + "</tbody></table>"
    )


def results_section(result: Mapping[str, Any]) -> str:
    """The papers' table (AUROC and FPR95 per OOD dataset and their average, one column each, so any
    can be sorted on) and every metric per method and dataset."""
    ood, rows = result["ood_datasets"], result["rows"]
    header = ["Method", "Images"]
    for d in [*ood, "Average"]:
        header += [f"{d} AUROC ↑", f"{d} FPR95 ↓"]
    body = []
    for e in rows.values():
        cells = f"<td>{_e(e['label'])}</td><td>{_e(e.get('preprocess', ''))}</td>"
        for values in [*(e["datasets"][d] for d in ood), e["average"]]:
            cells += _num(values["auroc"]) + _num(values["fpr95"])
        body.append(cells)
    names = result["metrics"]
    detail = []
    for e in rows.values():
        for d in ood:
            values = e["datasets"][d]
            detail.append(
                f"<td>{_e(e['label'])}</td><td>{_e(d)}</td>" + "".join(_num(values[m]) for m in names)
            )
    failed = result.get("failed_ood_datasets", {})
    lost = (
        "<p class='note'>Failed OOD datasets (no readable image, no metrics): "
        + _e(", ".join(f"{d} ({n:,} images)" for d, n in failed.items()))
        + "</p>"
        if failed
        else ""
    )
    return (
        '<section id="results"><h2>Results</h2>'
        "<p class='note'>In %. FPR95 is the NegLabel/CSP/NegRefine/DNM convention (ID positive). "
        f"{result['n_id']:,} ID images. Click a column header to sort.</p>"
        + _table("results-table", header, body)
        + lost
        + "<h3>Every metric</h3>"
        + _table("metrics-table", ["Method", "Dataset", *(METRIC_INFO[m].label for m in names)], detail)
        + "</section>"
    )


def plots_section(plots: Sequence[str]) -> str:
    images = "".join(f'<img src="{_e(p)}" alt="{_e(p)}">' for p in plots)
    return f'<section id="plots" class="plots"><h2>Plots</h2>{images}</section>'


def _sims(card: Card) -> str:
    """The card's top ID labels and (for methods with negatives) top negatives, with cosines."""
    lists = [card.id_labels, card.negatives] if card.negatives else [card.id_labels]
    rows = []
    for i in range(max(len(x) for x in lists)):
        cells = ""
        for pairs in lists:
            if i < len(pairs):
                cells += f'<td>{_e(pairs[i][0])}</td><td class="num">{pairs[i][1]:.3f}</td>'
            else:
                cells += "<td></td><td></td>"
        rows.append(f"<tr>{cells}</tr>")
    head = "<th>ID label</th><th>cos</th>" + ("<th>negative</th><th>cos</th>" if card.negatives else "")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _card(card: Card, ood: bool, thumbnail: str) -> str:
    if ood:
        side = "accepted as ID at FPR95" if card.counted else "rejected at FPR95"
    else:
        side = "rejected at TPR 95%" if card.counted else "accepted at TPR 95%"
    tag = f'<span class="tag {"bad" if card.counted else "ok"}">{side}</span>'
    extra = ""
    if card.pairs:
        pairs = "".join(f"<li>{_e(p)} and {_e(n)}</li>" for p, n in card.pairs)
        extra += f"<details><summary>S_MM pairs ({len(card.pairs)})</summary><ul>{pairs}</ul></details>"
    if card.banked is not None:
        banked = "inverted into the bank" if card.banked else "not inverted into the bank"
        extra += f"<div>InterNeg: {banked}</div>"
    return (
        f'<figure class="card{" counted" if card.counted else ""}">'
        f'<img class="thumb" src="{_e(thumbnail)}" alt="{_e(card.path)}">'
        f"<figcaption><div><b>score {card.score:.4f}</b> · rank {card.rank:,} of {card.of:,} {tag}</div>"
        f'<div class="meta">{_e(card.dataset)}/{_e(card.path)}</div>{_sims(card)}{extra}'
        "</figcaption></figure>"
    )


def hardest_section(
    galleries: Sequence[Gallery], thumbs: Mapping[tuple[str, str], str], k: int, note: str
) -> str:
    if not galleries:
        return ""
    parts = [
        '<section id="hardest"><h2>Hardest images</h2>',
        f"<p class='note'>Per method and OOD dataset: the {k} OOD images scored most ID-like and the {k} "
        "ID images scored most OOD-like, each with its nearest ID labels and negative labels by cosine. "
        f"A red card is on the wrong side of the FPR95 threshold. {_e(note)}</p>",
    ]
    index = " · ".join(
        f'<a href="#hardest-{i}">{_e(g.label)} on {_e(g.dataset)}</a>' for i, g in enumerate(galleries)
    )
    parts.append(f"<p>{index}</p>")
    for i, g in enumerate(galleries):
        parts.append(
            f"<h3 id='hardest-{i}'>{_e(g.label)} on {_e(g.dataset)}</h3><p class='note'>column "
            f"<code>{_e(g.column)}</code>, FPR95 threshold {g.threshold:.4f}</p>"
        )
        for title, cards, ood in (("OOD images scored most ID-like", g.ood, True),
                                  ("ID images scored most OOD-like", g.id, False)):  # fmt: skip
            body = "".join(_card(c, ood, thumbs[c.dataset, c.path]) for c in cards)
            parts.append(f"<h4>{title}</h4><div class='gallery'>{body}</div>")
    parts.append("</section>")
    return "".join(parts)


def negatives_section(lists: Sequence[NegativeList]) -> str:
    if not lists:
        return ""
    parts = [
        '<section id="negatives"><h2>Negative labels</h2><p class="note">Each method\'s negatives with '
        "their part of speech and rank; under each judge, kept or removed and why. Labels the judges "
        "disagree on come first. Type to filter.</p>"
    ]
    for i, found in enumerate(lists):
        judges = list(found.decisions)
        rows = []
        for j, label in enumerate(found.labels):
            rank = found.rank[j]
            cells = f"<td>{_e(label)}</td><td>{_e(found.pos[j])}</td>"
            cells += f"<td class='num' data-v='{rank}'>{rank:,}</td>"
            for judge in judges:
                d = found.decisions[judge][j]
                if d is None:
                    cells += "<td>not asked</td>"
                else:
                    cls, word = ("kept", "kept") if d[0] else ("removed", f"removed: {d[1]}")
                    cells += f'<td class="{cls}">{_e(word)}</td>'
            rows.append(cells)
        table_id, count_id = f"negatives-{i}", f"negatives-{i}-count"
        disagree = f"; judges disagree on {found.disagreements():,}" if len(judges) > 1 else ""
        parts.append(
            f"<h3>{_e(found.label)}</h3><p class='note'>{len(found.labels):,} labels: {_e(found.source)}"
            f"{_e(disagree)}.</p>"
            f'<div><input class="search" type="search" placeholder="filter {_e(found.label)} labels" '
            f'data-filter="{table_id}" data-count="{count_id}">'
            f'<span id="{count_id}" class="note"></span></div>'
            f'<div class="scroll">{_table(table_id, ["Label", "POS", "Rank", *judges], rows)}</div>'
        )
    parts.append("</section>")
    return "".join(parts)


def facts_section(facts: Facts, judges: Sequence[Sequence[str]], times: Sequence[Sequence[str]]) -> str:
    items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in facts)
    judge_table = ""
    if judges:
        header = ["Judge", "Labels", "Kept", "Proper", "Same", "Subcategory", "In decision table",
                  "Distinct", "Sent to judge", "From store"]  # fmt: skip
        judge_table = "<h3>Judges</h3>" + _table(
            "judges-table", header, ["".join(f"<td>{_e(c)}</td>" for c in r) for r in judges]
        )
    stage_rows = ["".join(f"<td>{_e(c)}</td>" for c in r) for r in times]
    return (
        f'<section id="run"><h2>Run</h2><ul class="facts">{items}</ul>{judge_table}'
        "<h3>Stage times (they differ between runs)</h3>"
        + MEASURED[0]
        + _table("stages-table", ["Stage", "Seconds", "Summary"], stage_rows)
        + MEASURED[1]
        + "</section>"
    )


def render(
    title: str,
    warning: str,
    sections: Sequence[str],
) -> str:
    """The whole page: the warning first (random weights), then the sections in order."""
    nav = "".join(
        f'<a href="#{key}">{name}</a>'
        for key, name in (
            ("results", "Results"),
            ("plots", "Plots"),
            ("hardest", "Hardest images"),
            ("negatives", "Negative labels"),
            ("run", "Run"),
        )
        if any(f'id="{key}"' in s for s in sections)
    )
    warn = f'<div class="warning" id="warning">{_e(warning)}</div>' if warning else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_asset('report.css')}</style></head><body>"
        f"{warn}<header><h1>{_e(title)}</h1><nav>{nav}</nav></header><main>{''.join(sections)}</main>"
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )
