"""The `report` stage: AUROC, AUPR-In, AUPR-Out, FPR95 (NegLabel convention) and FPR95 (OpenOOD) per
OOD dataset and on average for every score row (methods.md 6), as metrics.json, a Markdown report in
the papers' table layout with the run's models, judges, negative counts, failures and stage times,
PNG plots (ID-vs-OOD histograms of the main score, ROC curves of every row), and report.html: the
same tables sortable, the plots, the hardest images of every method and OOD dataset as thumbnails,
the negative labels with the judges' decisions, and the run's facts (negrefine_ray.report).

Input: score/scores.parquet, score/columns.json and score/negative_sets.parquet, plus every upstream
manifest. Output: report/report.md, report/report.html, report/metrics.json,
report/plots/{hist,roc}_<dataset>.png, report/thumbnails/*.jpg.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.config import JobConfig
from negrefine_ray.core.methods import METHODS
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.atomic import read_json, read_parquet, write_json, write_text
from negrefine_ray.runfolder.folder import StageContext, StageOutput
from negrefine_ray.stages._report_judges import judge_lines, judge_table, write_judge_plot

METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood")
# The heading of the report's last section before the resolved config: every wall-clock figure.
MEASURED_HEADING = "Measured times (they differ between runs)"
RANDOM_WARNING = "**Random-initialised CLIP: these numbers are meaningless.**"


def report_settings(config: JobConfig) -> dict[str, Any]:
    return {
        "metrics": list(METRIC_NAMES), "pretrained": config.model.pretrained, "run": config.run.name,
        "report": dataclasses.asdict(config.report),
    }  # fmt: skip


def row_label(column: Mapping[str, Any]) -> str:
    """A score row as the papers name it (its method's catalogue entry), e.g. "NegRefine w/o S_MM
    (wordnet)" or "NegLabel (filtered by wordnet)"; a method the catalogue does not know keeps its name."""
    method = METHODS.get(column["method"])
    if method is None:
        return str(column["method"])
    flags = (column["s_mm"], column.get("visual", False), column.get("pool", False))
    return method.row(column["judge"], *flags)[1]


def _by_row(catalogue: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    rows: dict[str, list[Mapping[str, Any]]] = {}
    for column in catalogue:
        rows.setdefault(column["row"], []).append(column)
    return rows


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def evaluate(
    table: pa.Table, catalogue: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRIC_NAMES
) -> dict[str, Any]:
    """metrics.json: for each score row, metrics per OOD dataset and their mean over OOD datasets.

    table = scores.parquet (N rows: dataset, role, status, score columns); catalogue = columns.json's
    entries. ID = every ok row of role "id", pooled. DNM's rows have one column per OOD dataset
    (`ood_dataset`), whose grouping was drawn for that dataset; other rows have one column. An OOD
    dataset without one readable image has no metrics: it is listed in `failed_ood_datasets` (with
    its image count) and the average is over `ood_datasets`, the sets that were scored.
    """
    from negrefine_ray.core.metrics import compute_metrics  # scikit-learn: absent from vLLM's environment

    ok = table.column("status").to_numpy(zero_copy_only=False) == "ok"
    role = table.column("role").to_numpy(zero_copy_only=False)
    dataset = table.column("dataset").to_numpy(zero_copy_only=False)
    every_ood = list(dict.fromkeys(dataset[role == "ood"].tolist()))
    is_id, ood = ok & (role == "id"), [d for d in every_ood if (ok & (dataset == d)).any()]
    failed = {d: int((dataset == d).sum()) for d in every_ood if d not in ood}
    if not is_id.any() or not ood:
        lost = f" (no readable image in {', '.join(failed)})" if failed else ""
        raise StageError(
            f"the report needs readable ID and OOD images; scores.parquet lacks one of them{lost}."
        )
    rows: dict[str, Any] = {}
    for row, columns in _by_row(catalogue).items():
        per_dataset = {}
        for d in ood:
            column = next(c for c in columns if c["ood_dataset"] in (None, d))
            values = _column(table, column["name"])
            per_dataset[d] = compute_metrics(values[is_id], values[ok & (dataset == d)], metrics)
        rows[row] = {
            "label": row_label(columns[0]),
            "method": columns[0]["method"],
            "judge": columns[0]["judge"],
            "preprocess": columns[0].get("preprocess", ""),
            "datasets": per_dataset,
            "average": {m: float(np.mean([per_dataset[d][m] for d in ood])) for m in metrics},
        }
    n_ood = {d: int((ok & (dataset == d)).sum()) for d in ood}
    return {
        "metrics": list(metrics),
        "ood_datasets": ood,
        "failed_ood_datasets": failed,
        "n_id": int(is_id.sum()),
        "n_ood": n_ood,
        "rows": rows,
    }


def main_row(catalogue: Sequence[Mapping[str, Any]]) -> str:
    """The score the histograms show: NegRefine with the first judge, else the first row."""
    for want in (lambda c: c["s_mm"] and c["judge"] is not None, lambda c: c["s_mm"], lambda c: True):
        for column in catalogue:
            if want(column):
                return str(column["row"])
    raise StageError("columns.json lists no score columns; rerun the score stage.")


def _cell(entry: Mapping[str, Any], key: str, metrics: Sequence[str] = ("auroc", "fpr95")) -> str:
    values = entry["datasets"][key] if key in entry["datasets"] else entry["average"]
    return " / ".join(f"{100 * values[m]:.2f}" for m in metrics)


def markdown_tables(result: Mapping[str, Any]) -> list[str]:
    """The papers' table (AUROC / FPR95 per OOD dataset and Average) and a per-dataset detail table."""
    from negrefine_ray.core.metrics import METRIC_INFO  # scikit-learn, as in evaluate

    ood, rows, failed = result["ood_datasets"], result["rows"], result.get("failed_ood_datasets", {})
    average = f"Average of {len(ood)}" if failed else "Average"
    lines = [
        "AUROC ↑ / FPR95 ↓ in %; FPR95 is the NegLabel/CSP/NegRefine/DNM convention (ID positive, "
        "methods.md 6.1). Several seeds: report-seeds.md in the job folder gives mean ± std. Images: "
        "the preprocessing of each row's image embeddings (images.preprocess; docs/faithfulness.md).",
        "",
        "| Method | Images | " + " | ".join([*ood, *failed]) + f" | {average} |",
        "|---|---|" + "---|" * (len(ood) + len(failed) + 1),
    ]
    lines += [
        f"| {e['label']} | {e.get('preprocess', '')} | "
        + " | ".join([*(_cell(e, k) for k in ood), *(["failed"] * len(failed)), _cell(e, "average")])
        + " |"
        for e in rows.values()
    ]
    if failed:
        lines += [
            "",
            "**Failed OOD datasets** (no readable image, so no metrics): "
            + ", ".join(f"{d} (0 of {n:,} images scored)" for d, n in failed.items())
            + f". The average covers {', '.join(ood)} only.",
        ]
    names = result["metrics"]
    header = " | ".join(METRIC_INFO[m].label for m in names)
    lines += ["", "| Method | Dataset | " + header + " |", "|---|---|" + "---|" * len(names)]
    for e in rows.values():
        lines += [
            f"| {e['label']} | {k} | " + " | ".join(_cell(e, k, [m]) for m in names) + " |" for k in ood
        ]
    return lines


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def write_plots(table: pa.Table, catalogue: Sequence[Mapping[str, Any]], out_dir: Path) -> list[str]:
    """Per OOD dataset: hist_<d>.png (ID vs OOD, main score) and roc_<d>.png (every row, first
    seed). Uses matplotlib's object API (Agg canvas), so no global backend is switched."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    ok = table.column("status").to_numpy(zero_copy_only=False) == "ok"
    role = table.column("role").to_numpy(zero_copy_only=False)
    dataset = table.column("dataset").to_numpy(zero_copy_only=False)
    is_id, main, written = ok & (role == "id"), main_row(catalogue), []
    for d in dict.fromkeys(dataset[ok & (role == "ood")].tolist()):
        is_d = ok & (dataset == d)
        firsts: dict[str, Mapping[str, Any]] = {}
        for c in catalogue:
            if c["ood_dataset"] in (None, d):
                firsts.setdefault(c["row"], c)
        hist, roc = Figure(figsize=(6.4, 4.2)), Figure(figsize=(6.4, 5.2))
        ax = hist.subplots()
        values = _column(table, firsts[main]["name"])
        bins = np.histogram_bin_edges(values[is_id | is_d], bins=80).tolist()
        ax.hist(values[is_id], bins=bins, alpha=0.55, density=True, label=f"ID ({int(is_id.sum()):,})")
        ax.hist(values[is_d], bins=bins, alpha=0.55, density=True, label=f"{d} ({int(is_d.sum()):,})")
        ax.set(xlabel=f"{row_label(firsts[main])} score (higher = more ID)", ylabel="density", title=d)
        ax.legend()
        ax = roc.subplots()
        labels = np.concatenate([np.ones(int(is_id.sum())), np.zeros(int(is_d.sum()))])
        for c in firsts.values():
            v = _column(table, c["name"])
            fpr, tpr, _ = roc_curve(labels, np.concatenate([v[is_id], v[is_d]]))
            ax.plot(fpr, tpr, label=row_label(c), linewidth=1.2)
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        ax.set(xlabel="FPR (OOD accepted as ID)", ylabel="TPR (ID accepted)", title=f"ROC, ID vs {d}")
        ax.legend(fontsize=7, loc="lower right")
        for kind, fig in (("hist", hist), ("roc", roc)):
            name = f"plots/{kind}_{_safe(d)}.png"
            (out_dir / "plots").mkdir(parents=True, exist_ok=True)
            fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
            written.append(name)
    return written


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + [
        "| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in r) + " |" for r in rows
    ]


def selection_rows(stats: Mapping[str, Any]) -> list[list[Any]]:
    """Per mining method: its pool's nouns and adjectives and how many of each it selected. A method
    that selects in the score stage (InterNeg, catalogue flag `mined_in_score`) has its selection
    counts in the score stage's manifest, not in mine's."""
    keys = ("pool_nouns", "pool_adjectives", "selected_nouns", "selected_adjectives")
    rows = []
    for name, counts in stats.get("mine", {}).items():
        if not isinstance(counts, dict):
            continue
        method = METHODS.get(name)
        if method is not None and method.mined_in_score:
            counts = {**counts, **stats.get("score", {}).get(name, {}).get("selection", {})}
        rows.append([name, *(counts.get(k, "-") for k in keys)])
    return rows


def _negative_lines(stats: Mapping[str, Any]) -> list[str]:
    """Mined pools and selections, each judge's NegFilter counts, and what each score used."""
    lines = _table(["Method", "Pool nouns", "Pool adjectives", "Selected nouns", "Selected adjectives"],
                   selection_rows(stats))  # fmt: skip
    reasons = ("total", "kept", "proper", "same", "subcategory")
    judges = [[k, *(v.get(c) for c in reasons)] for k, v in stats.get("filter", {}).items()]
    lines += ["", *_table(["Judge", "Labels", "Kept", "Proper", "Same", "Subcategory"], judges)]
    keys = ("negatives", "kept", "dropped", "per_group")
    used = [[k, *(v.get(c) for c in keys)] for k, v in stats.get("score", {}).get("negatives", {}).items()]
    lines += ["", *_table(["Score set", "M", "Used (M')", "Dropped", "Per group (Q)"], used)]
    for method in METHODS.values():  # methods that select in the score stage report it there
        if method.mined_in_score:
            lines += _online_lines(method.display, stats.get("score", {}).get(method.name))
    pairs = stats.get("score", {}).get("pairs")
    if pairs:
        lines += [
            "",
            f"S_MM pair texts: {pairs['all_sets']:,} distinct over all sets (per set {pairs['per_set']}) "
            f"instead of {pairs['without_dedup']:,} per set; {pairs.get('texts_encoded', 0):,} templated "
            "texts encoded.",
        ]
    return lines


def _judge_lines(judges: Mapping[str, Any]) -> list[str]:
    """Each judge's accounting in this run (judges.accounting) and its P(yes) against its threshold."""
    rows = []
    for name, j in judges.items():
        a, h = j.get("accounting"), j.get("p_yes")
        if not isinstance(a, dict) or not isinstance(h, dict):
            continue
        yes = f"{h['above_threshold']:,} above {h['threshold']:g}" if sum(h["counts"]) else "-"
        questions = [j.get("questions_in_table", "-"), j.get("questions_distinct", "-")]
        rates = [a["questions_per_s"], a["prompt_tokens_per_s"], a["generated_tokens_per_s"]]
        rows.append([
            name, *questions, a["questions_sent"], a["answers_from_store"], *(f"{r:,.1f}" for r in rates),
            f"{a['wall_s']:,.1f}", f"{a['gpu_seconds']:,.1f}", j.get("invalid_answers", 0),
            a["duplicates_dropped"], yes,
        ])  # fmt: skip
    if not rows:
        return []
    header = ["Judge", "In decision table", "Distinct", "Sent to judge", "From store", "Sent/s",
              "Prompt tok/s", "Generated tok/s", "Wall s", "GPU-s", "Invalid", "Duplicates",
              "P(yes)"]  # fmt: skip
    note = (
        "Questions: rows of the decision table; the distinct ones among them (a label's nearest ID "
        "labels may repeat a name); of those, sent to the judge in this run and answered from the store."
    )
    return ["", "Judges, the cost of this run's questions:", "", note, "", *_table(header, rows)]


def _online_lines(display: str, interneg: Mapping[str, Any] | None) -> list[str]:
    """An online method's (InterNeg's) selection against its prototypes and each OOD stream's
    inversion counts, from its scorer's manifest entry."""
    if not interneg:
        return []
    sel, protos = interneg["selection"], interneg["prototypes"]
    lines = [
        "",
        f"{display}: prototypes from {protos['images']:,} images of {protos['classes']:,} classes (at least "
        f"{protos['min_per_class']} per class; {len(protos['short'])} classes below the asked number); "
        f"admissible {sel['admissible_nouns']:,} of {sel['pool_nouns']:,} nouns and "
        f"{sel['admissible_adjectives']:,} of {sel['pool_adjectives']:,} adjectives; selected "
        f"{sel['selected_nouns']:,} nouns + {sel['selected_adjectives']:,} adjectives.",
        "",
    ]
    keys = ("activated", "inverted", "kept", "activated_id", "kept_id")
    rows = [[d, v["images"], *(v["counts"].get(k) for k in keys)] for d, v in interneg["streams"].items()]
    header = [f"{display} stream", "Images", "Activated", "Inversions", "Kept", "Activated ID", "Kept ID"]
    lines += _table(header, rows)
    spread = {d: v["shuffles"] for d, v in interneg["streams"].items() if "shuffles" in v}
    for d, metrics in spread.items():
        cells = ", ".join(f"{m} {100 * v['mean']:.2f} ± {100 * v['std']:.2f}" for m, v in metrics.items())
        lines += ["", f"{display} over the stream orders of `interneg.shuffles`, {d}: {cells} (%)."]
    return lines


def run_sections(config: JobConfig, table: pa.Table, manifests: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Models, judges, negative-label counts, images and failures, stage times, resolved config."""
    stats = {s: m.get("stats", {}) for s, m in manifests.items()}
    m, sc = config.model, config.score
    lines = [
        "## Run",
        "",
        f"- CLIP: `{m.arch}`, weights `{m.pretrained}`, precision {m.precision}",
        f"- ID labels: `{config.labels.id_labels}`; score methods: {', '.join(sc.methods)}",
        f"- Grouping: G = {sc.n_groups}, permutation on {sc.permutation_device}, seed policy "
        f"`{sc.permutation_seed}`, seeds {stats.get('score', {}).get('seeds')}; alpha = {sc.alpha}",
    ]
    for j in manifests.get("filter", {}).get("settings", {}).get("judges", []):
        lines.append(
            f"- Judge `{j['name']}`: backend {j['backend']}, model `{j.get('model') or '-'}`, "
            f"mode {j.get('mode')}, threshold {j.get('threshold')}"
        )
    lines += ["", "### Negative labels", "", *_negative_lines(stats)]
    lines += ["", "### Images", "", *_image_rows(table, stats.get("embed-images", {}))]
    # Everything measured in time sits below this heading, and nothing above it: a rerun of the same
    # job writes the same report down to here (tests/test_reliability.py checks it).
    lines += ["", f"### {MEASURED_HEADING}", ""]
    lines += [
        "Wall-clock figures of this run: they differ between runs of the same job, unlike everything above.",
        *_judge_lines(stats.get("filter", {})),
    ]
    times = [[s, f"{mf.get('seconds', 0):.1f}", mf.get("summary", "")] for s, mf in manifests.items()]
    lines += ["", "Stage times:", "", *_table(["Stage", "Seconds", "Summary"], times)]
    resolved = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    return [
        *lines,
        "",
        "<details><summary>Resolved config</summary>",
        "",
        "```json",
        resolved,
        "```",
        "</details>",
    ]


def _image_rows(table: pa.Table, embed_stats: Mapping[str, Any]) -> list[str]:
    dataset = table.column("dataset").to_pylist()
    status, role = table.column("status").to_pylist(), table.column("role").to_pylist()
    out = []
    for d in dict.fromkeys(dataset):
        st = [s for s, x in zip(status, dataset, strict=True) if x == d]
        bad = {k: st.count(k) for k in sorted(set(st) - {"ok"})}
        fails = ", ".join(f"{k} {v:,}" for k, v in bad.items()) or "none"
        out.append([d, role[dataset.index(d)], len(st), st.count("ok"), fails])
    lines = _table(["Dataset", "Role", "Images", "Scored", "Excluded (failure kinds)"], out)
    for mismatch in embed_stats.get("expected_mismatches", []):
        lines.append(f"- {mismatch}")
    return lines


def run_facts(config: JobConfig, manifests: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The run's facts for report.html: model, weights, precision, seeds, labels, methods, judges."""
    m, stats = config.model, manifests.get("score", {}).get("stats", {})
    facts = [
        ("CLIP", f"{m.arch}, weights {m.pretrained}, precision {m.precision}, device {m.device}"),
        ("Seeds", f"run seed {config.run.seed}; grouping seed(s) {stats.get('seeds')}"),
        ("ID labels", str(config.labels.id_labels)),
        ("Score methods", ", ".join(config.score.methods)),
        ("Scored images", f"{stats.get('scored', 0):,} ({stats.get('images', 0):,} listed)"),
    ]
    for j in manifests.get("filter", {}).get("settings", {}).get("judges", []):
        facts.append((
            f"Judge {j['name']}", f"backend {j['backend']}, model {j.get('model') or '-'}, mode "
            f"{j.get('mode')}, threshold {j.get('threshold')}",
        ))  # fmt: skip
    return facts


def _judge_rows(filter_stats: Mapping[str, Any]) -> list[list[str]]:
    keys = ("total", "kept", "proper", "same", "subcategory", "questions_in_table", "questions_distinct")
    rows = []
    for name, j in filter_stats.items():
        if isinstance(j, dict) and "total" in j:
            a = j.get("accounting", {})
            counts = [j.get(k, "-") for k in keys] + [
                a.get("questions_sent", "-"),
                a.get("answers_from_store", "-"),
            ]
            rows.append([name, *(f"{c:,}" if isinstance(c, int) else str(c) for c in counts)])
    return rows


def write_html(
    ctx: StageContext,
    table: pa.Table,
    catalogue: Sequence[Mapping[str, Any]],
    flags: Sequence[Mapping[str, str]],
    result: Mapping[str, Any],
    plots: Sequence[str],
    manifests: Mapping[str, Mapping[str, Any]],
    warning: str,
) -> tuple[list[str], dict[str, Any]]:
    """report.html and its thumbnails: the files written (relative to the stage folder) and stats.
    `manifests`: the upstream stages'; `warning`: the random-weights line ("" with real weights)."""
    # scikit-learn (core.metrics, which the page's threshold and labels use) is absent from the vLLM
    # environment, whose filter stage imports the pipeline and so this module
    from negrefine_ray.report import hardest, page
    from negrefine_ray.report.negatives import negative_lists
    from negrefine_ray.report.thumbnails import thumbnails

    config = ctx.config
    k = config.report.hardest
    galleries = hardest.pick(table, catalogue, k) if k else []
    hardest.explain(galleries, table, catalogue, flags, ctx.run_dir, config)
    datasets = manifests.get("embed-images", {}).get("stats", {}).get("datasets", {})
    roots = {name: d["root"] for name, d in datasets.items() if "root" in d}
    shown = [(c.dataset, c.path) for g in galleries for c in g.ood + g.id]
    thumbs, made = thumbnails(shown, roots, ctx.out_dir, config.cache_dir, config.report.thumbnail_px)
    note = (
        f"{made['unreadable']:,} image(s) could not be read now: a grey placeholder."
        if made["unreadable"]
        else ""
    )
    judges = [j["name"] for j in manifests.get("filter", {}).get("settings", {}).get("judges", [])]
    times = [[s, f"{mf.get('seconds', 0):.1f}", mf.get("summary", "")] for s, mf in manifests.items()]
    sections = [
        page.results_section(result),
        page.plots_section(plots),
        page.hardest_section(galleries, thumbs, k, note),
        page.negatives_section(negative_lists(ctx.run_dir, catalogue, judges, config.filter.scope)),
        page.facts_section(
            run_facts(config, manifests), _judge_rows(manifests.get("filter", {}).get("stats", {})), times
        ),
    ]
    write_text(
        ctx.out_dir / "report.html",
        page.render(f"OOD detection report: {config.run.name}", warning, sections),
    )
    files = ["report.html", *sorted(set(thumbs.values()))]
    return files, {"galleries": len(galleries), "thumbnails": made}


def run_report(ctx: StageContext) -> StageOutput:
    config = ctx.config
    table = read_parquet(ctx.input("score", "scores.parquet"))
    columns = read_json(ctx.input("score", "columns.json"))
    catalogue, flags = columns["columns"], columns.get("flags", [])
    result = evaluate(table, catalogue)
    write_json(ctx.out_dir / "metrics.json", result)
    plots = write_plots(table, catalogue, ctx.out_dir)
    manifests = ctx.upstream_manifests()
    judges = judge_table(result, catalogue, manifests.get("filter", {}).get("stats", {}))
    plots += write_judge_plot(judges, ctx.out_dir)
    random = config.model.pretrained.lower() == "none"
    warning = f'{RANDOM_WARNING} (model.pretrained = "none")' if random else ""
    lines = [warning, ""] if random else []
    lines += [f"# OOD detection report: {config.run.name}", "", *markdown_tables(result), ""]
    lines += [*judge_lines(judges), ""] if judges else []
    lines += run_sections(config, table, manifests)
    lines += ["", "## Plots", "", *(f"![{p}]({p})" for p in plots), ""]
    write_text(ctx.out_dir / "report.md", "\n".join(lines))
    main = result["rows"][main_row(catalogue)]
    failed = result["failed_ood_datasets"]
    summary = (
        f"{len(result['rows'])} score rows x {len(result['ood_datasets'])} OOD datasets"
        + (f" ({len(failed)} failed, without images: {', '.join(failed)})" if failed else "")
        + "; "
        f"{main['label']}: average AUROC {100 * main['average']['auroc']:.2f}, "
        f"FPR95 {100 * main['average']['fpr95']:.2f}" + (" (random weights: meaningless)" if random else "")
    )
    # the page shows the warning as text, without Markdown's bold
    page_warning = warning.replace("**", "")
    html_files, html_stats = write_html(ctx, table, catalogue, flags, result, plots, manifests, page_warning)
    stats = {
        "rows": len(result["rows"]),
        "ood_datasets": result["ood_datasets"],
        "plots": len(plots),
        **html_stats,
    }
    return StageOutput(("report.md", "metrics.json", *plots, *html_files), summary, stats)
