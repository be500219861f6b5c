"""report.html (negrefine_ray.report): the hardest images against the FPR95 threshold, their top labels
and NegRefine pairs recomputed from the embeddings, thumbnails made once (a placeholder for an image
that cannot be read), the negative-label lists with the judges' decisions, a page that needs no
network, and the smoke run's page with every part filled. The page in a real browser:
tests/test_report_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import SmokeRun
from PIL import Image

from negrefine_ray.core.metrics import fpr95, fpr95_threshold
from negrefine_ray.report import hardest, page
from negrefine_ray.report.negatives import NegativeList
from negrefine_ray.report.thumbnails import PLACEHOLDER, thumbnails
from negrefine_ray.runfolder.atomic import read_json, read_parquet


def _table(rng: np.random.Generator, n_id: int = 40, n_ood: int = 30) -> tuple[pa.Table, list[dict]]:
    """A scores.parquet of n_id ID and n_ood OOD images (one unreadable), an MCM column and a DNM-like
    column per OOD dataset, and its catalogue."""
    n = n_id + n_ood
    status = ["ok"] * n
    status[n_id + 3] = "corrupt"
    mcm = rng.normal(size=n)
    mcm[n_id + 3] = np.nan
    table = pa.table({
        "dataset": ["id"] * n_id + ["far"] * n_ood, "role": ["id"] * n_id + ["ood"] * n_ood,
        "path": [f"img_{i:03d}.jpg" for i in range(n)], "label": [0] * n, "status": status,
        "mcm": pa.array(mcm, mask=np.isnan(mcm)), "dnm@far": pa.array(mcm + 1.0, mask=np.isnan(mcm)),
    })  # fmt: skip
    base = {"judge": None, "s_mm": False, "seed": None, "preprocess": "clip", "visual": False, "pool": False}
    catalogue = [
        {**base, "name": "mcm", "row": "mcm", "method": "mcm", "ood_dataset": None, "negatives": None},
        {**base, "name": "dnm@far", "row": "dnm", "method": "dnm", "ood_dataset": "far", "negatives": "dnm"},
    ]
    return table, catalogue


def test_fpr95_threshold_is_the_one_behind_fpr95() -> None:
    rng = np.random.default_rng(0)
    for n_id, n_ood in ((10, 7), (100, 50), (33, 200)):
        ids, oods = rng.normal(1.0, 1.0, n_id), rng.normal(size=n_ood)
        oods[:3] = ids[:3]  # ties across the two sides
        t = fpr95_threshold(ids, oods)
        assert np.mean(oods >= t) == pytest.approx(fpr95(ids, oods), abs=1e-12)
        assert 0.85 <= np.mean(ids >= t) <= 1.0


def test_hardest_images_are_ranked_against_the_fpr95_threshold() -> None:
    table, catalogue = _table(np.random.default_rng(1))
    (mcm, dnm) = hardest.pick(table, catalogue, k=5)
    assert (mcm.method, mcm.column, dnm.column, mcm.dataset) == ("mcm", "mcm", "dnm@far", "far")
    values = np.array(table.column("mcm").to_pylist(), dtype=float)
    ok = np.isfinite(values)
    ids, oods = values[:40], values[40:][ok[40:]]
    assert mcm.threshold == fpr95_threshold(ids, oods)
    # the OOD images scored most ID-like, hardest first; the unreadable image is never shown
    assert [c.score for c in mcm.ood] == sorted(oods, reverse=True)[:5]
    assert [c.rank for c in mcm.ood] == [1, 2, 3, 4, 5] and {c.of for c in mcm.ood} == {29}
    assert all(c.counted == (c.score >= mcm.threshold) for c in mcm.ood)
    assert [c.score for c in mcm.id] == sorted(ids)[:5] and {c.of for c in mcm.id} == {40}
    assert all(c.counted == (c.score < mcm.threshold) for c in mcm.id)
    assert sum(c.counted for c in mcm.id) >= 1  # ~5 % of 40 ID images lie below it
    assert mcm.ood[0].path == table.column("path")[mcm.ood[0].row].as_py()
    # the shift by 1 moves every score and the threshold, not the images chosen
    assert [c.row for c in dnm.ood] == [c.row for c in mcm.ood]
    # an ablation column (NegRefine without S_MM, or over a judge's pool) is not the one shown
    base = dict(catalogue[0], method="negrefine", ood_dataset=None, negatives="x")
    more = [
        dict(base, name="negrefine_nl[j]", row="negrefine_nl[j]", judge="j"),
        dict(base, name="negrefine[j]", row="negrefine[j]", judge="j", s_mm=True),
        dict(base, name="negrefine[pool=j]", row="negrefine[pool=j]", judge="j", s_mm=True, pool=True),
    ]
    assert hardest.shown_columns(more)["negrefine"][None]["name"] == "negrefine[j]"


def _jpeg(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_thumbnails_are_made_once_and_an_unreadable_image_gets_the_placeholder(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _jpeg(root / "a.jpg", (400, 200), (200, 10, 10))
    _jpeg(root / "b" / "c.png", (50, 90), (10, 200, 10))
    (root / "broken.jpg").write_bytes(b"not an image")
    shown = [("d", "a.jpg"), ("d", "b/c.png"), ("d", "broken.jpg"), ("d", "gone.jpg"), ("d", "a.jpg")]
    out, cache = tmp_path / "report", tmp_path / "cache"
    files, counts = thumbnails(shown, {"d": str(root)}, out, cache, px=64)
    assert counts == {"made": 2, "from_cache": 0, "unreadable": 2}
    assert files["d", "broken.jpg"] == files["d", "gone.jpg"] == PLACEHOLDER
    with Image.open(out / files["d", "a.jpg"]) as img:
        assert (img.format, img.size) == ("JPEG", (64, 32))  # the longer side is px
    with Image.open(out / files["d", "b/c.png"]) as img:
        assert img.size[1] == 64 and img.getpixel((10, 10))[1] > 150
    with Image.open(out / PLACEHOLDER) as img:
        assert img.size == (64, 64)
    again, counts = thumbnails(shown, {"d": str(root)}, tmp_path / "report2", cache, px=64)
    assert counts == {"made": 0, "from_cache": 2, "unreadable": 2} and again == files
    # a changed file is made again (the key holds its size and modification time)
    _jpeg(root / "a.jpg", (300, 300), (0, 0, 250))
    third, counts = thumbnails(shown[:1], {"d": str(root)}, tmp_path / "report3", cache, px=64)
    assert counts["made"] == 1 and third["d", "a.jpg"] != files["d", "a.jpg"]


def test_the_page_needs_no_network_and_escapes_what_it_shows() -> None:
    table, catalogue = _table(np.random.default_rng(2))
    galleries = hardest.pick(table, catalogue, k=2)
    for card in galleries[0].ood:
        card.id_labels, card.negatives = [("<script>alert(1)</script>", 0.5)], [("a & b", 0.25)]
    thumbs = {(c.dataset, c.path): "thumbnails/x.jpg" for g in galleries for c in g.ood + g.id}
    found = NegativeList(
        "negrefine", "NegRefine", "its inputs", ["kept one", "proper one"], ["noun"] * 2, [0, 1]
    )
    found.decisions = {"j1": [(True, "kept"), (False, "proper noun")], "j2": [(True, "kept"), (True, "kept")]}
    html = page.render(
        "t", "warn <b>", [page.hardest_section(galleries, thumbs, 2, ""), page.negatives_section([found])]
    )
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a &amp; b" in html and "warn &lt;b&gt;" in html
    assert html.index('id="warning"') < html.index("<h1>")  # the random-weights warning first
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)  # nothing from the network
    assert "<script src" not in html and '<link rel="stylesheet"' not in html
    assert "judges disagree on 1" in html and "removed: proper noun" in html


def test_the_smoke_run_writes_the_whole_page(smoke_run: SmokeRun) -> None:
    folder = smoke_run.run_dir / "report"
    html = (folder / "report.html").read_text()
    columns = read_json(smoke_run.run_dir / "score" / "columns.json")
    manifest = read_json(folder / "manifest.json")
    for section in ("results", "plots", "hardest", "negatives", "run"):
        assert f'<section id="{section}"' in html
    # every method of the run has galleries, 12 thumbnails a side, each a file beside the page
    methods = list(dict.fromkeys(c["method"] for c in columns["columns"]))
    assert manifest["stats"]["galleries"] == len(methods) and len(methods) == 9
    images = re.findall(r'<img class="thumb" src="([^"]+)"', html)
    assert len(images) == 9 * 2 * 12 and all((folder / src).is_file() for src in images)
    assert set(images) <= set(manifest["artifacts"])
    assert manifest["stats"]["thumbnails"]["unreadable"] == 0
    # the negatives each column used are recorded, and their counts are the grouping's
    sets = read_parquet(smoke_run.run_dir / "score" / "negative_sets.parquet")
    names = sets.column("set").to_pylist()
    counts = {name: names.count(name) for name in set(names)}
    used = read_json(smoke_run.run_dir / "score" / "manifest.json")["stats"]["negatives"]
    for name, entry in used.items():
        assert counts[name] == entry["negatives"], name
    assert {c["negatives"] for c in columns["columns"] if c["method"] in ("mcm", "lmcm", "glmcm")} == {None}
    assert columns["flags"] == [
        {
            "name": "interneg@demo-ood#banked",
            "column": "interneg@demo-ood",
            "meaning": "inverted into the bank",
        }
    ]
    assert html.count("InterNeg: ") == 2 * 12
    # InterNeg's selection is in the negative-labels table (it selects in the score stage)
    report = (folder / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| interneg |"))
    assert "None" not in row and "-" not in row.replace("| interneg |", "")
    # one name for each count: the filter's summary and the report's judge table agree
    stats = read_json(smoke_run.run_dir / "filter" / "manifest.json")["stats"]["wordnet"]
    a = stats["accounting"]
    assert a["questions_sent"] + a["answers_from_store"] == stats["questions_distinct"]
    assert stats["questions_distinct"] <= stats["questions_in_table"]
    assert f"{stats['questions_in_table']:,} questions in the decision table" in smoke_run.output
    assert "| Judge | In decision table | Distinct | Sent to judge | From store |" in report


def test_negrefine_cards_show_what_its_score_used(smoke_run: SmokeRun) -> None:
    """The cards' top labels and pairs, recomputed here from the embeddings: NegRefine's pairs are
    its top k_pos ID labels by cosine, each with its top k_neg negatives of the judge's set."""
    from negrefine_ray.config import load_config
    from negrefine_ray.runfolder.artifacts import ID_LABELS, view_matrix

    config = load_config(Path("jobs/smoke.toml"), [a for a in smoke_run.sets() if a != "--set"])
    run_dir = smoke_run.run_dir
    table = read_parquet(run_dir / "score" / "scores.parquet")
    columns = read_json(run_dir / "score" / "columns.json")
    galleries = hardest.pick(table, columns["columns"], k=3)
    hardest.explain(galleries, table, columns["columns"], columns["flags"], run_dir, config)
    g = next(g for g in galleries if g.method == "negrefine")
    assert g.column == "negrefine[wordnet]"
    card = g.ood[0]
    names = [n for n, _ in card.id_labels]
    negatives = [n for n, _ in card.negatives]
    assert len(card.pairs) == 25 and [p for p, _ in card.pairs[::5]] == names
    assert [n for _, n in card.pairs[:5]] == negatives
    assert [c for _, c in card.id_labels] == sorted((c for _, c in card.id_labels), reverse=True)
    # the same cosines from the stages' own outputs: the image's embedding, the ID view, the set
    images = read_parquet(run_dir / "embed-images" / "images.parquet")
    scored = [i for i, r in enumerate(images.column("role").to_pylist()) if r != "prototype"]
    variant = next(c["preprocess"] for c in columns["columns"] if c["name"] == g.column)
    x = np.array(images.column(f"embedding@{variant}")[scored[card.row]].as_py(), dtype=np.float32)
    x /= np.linalg.norm(x)
    ids = ID_LABELS.read(run_dir)
    id_cos = view_matrix(ids, "csp_noun8") @ x
    top = np.argsort(-id_cos, kind="stable")[:5]
    assert names == [ids.column("label")[int(i)].as_py() for i in top]
    np.testing.assert_allclose([c for _, c in card.id_labels], id_cos[top], atol=1e-4)
    sets = read_parquet(run_dir / "score" / "negative_sets.parquet")
    part = sets.filter(pc.equal(sets.column("set"), "negrefine[wordnet]")).sort_by("index")
    neg = np.array(part.column("embedding").to_pylist(), dtype=np.float32)
    neg_cos = (neg / np.linalg.norm(neg, axis=1, keepdims=True)) @ x
    top = np.argsort(-neg_cos, kind="stable")[:5]
    assert negatives == [part.column("label")[int(i)].as_py() for i in top]
    np.testing.assert_allclose([c for _, c in card.negatives], neg_cos[top], atol=1e-4)


def test_report_settings_refuse_bad_values_by_name() -> None:
    from negrefine_ray.config import build_config
    from negrefine_ray.errors import ConfigError

    assert build_config({"report": {"hardest": 0}}).report.hardest == 0  # 0: no galleries
    for key, value, message in (
        ("hardest", -1, r"report\.hardest = -1 is below its minimum 0"),
        ("thumbnail_px", 8, r"report\.thumbnail_px = 8 is below its minimum 16"),
        ("top_labels", 0, r"report\.top_labels = 0 is below its minimum 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_config({"report": {key: value}})
    with pytest.raises(ConfigError, match=r"Unknown key 'report\.hardst'\. Did you mean 'hardest'"):
        build_config({"report": {"hardst": 3}})
    assert page.hardest_section([], {}, 0, "") == ""  # and the page leaves the section out
