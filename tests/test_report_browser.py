"""report.html of the session's smoke run in a real browser: Debian's Chromium (/usr/bin/chromium, which
.ci/setup installs), headless, opening the page from the file system with no server, driven by
Playwright's Python API. Playwright rather than Selenium: its console and page-error events catch an
error thrown before the test asks, it waits for the page by itself, and it needs no driver binary
matched to the browser's version (its own browser download is not used: it cannot be fetched here).

The test checks what a reader relies on: no console error and no failed request, every thumbnail
and plot loaded, a results table sorting on a header click, the negative-label search filtering its
list, and a full-page screenshot (written to test-output/, or $NEGREFINE_TEST_OUTPUT) holding the
page's main sections. Without Chromium or Playwright the test is skipped, except where
NEGREFINE_REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, SmokeRun

CHROMIUM = Path(os.environ.get("NEGREFINE_CHROMIUM", "/usr/bin/chromium"))
# Headless, and nothing that reaches for the network at start (this machine's network is closed)
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SECTIONS = ("results", "plots", "hardest", "negatives", "run")


def _unavailable(why: str) -> None:
    if os.environ.get("NEGREFINE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"NEGREFINE_REQUIRE_BROWSER=1 but {why}; run .ci/setup")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module, closed (its processes ended by Playwright) afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (the dev extra has it)")
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (Debian's package chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _output() -> Path:
    folder = Path(os.environ.get("NEGREFINE_TEST_OUTPUT", REPO / "test-output")) / "report-browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _column(page: Any, table: str, index: int) -> list[float]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr", f"rows => rows.map(r => parseFloat(r.cells[{index}].dataset.v))"
    )


@pytest.mark.ray
def test_report_html_in_a_real_browser(smoke_run: SmokeRun, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto((smoke_run.run_dir / "report" / "report.html").as_uri(), wait_until="load")
    assert page.title() == "OOD detection report: smoke"
    assert page.inner_text("#warning").startswith("Random-initialised CLIP")

    # every thumbnail and plot loaded
    widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
    thumbs = page.eval_on_selector_all("img.thumb", "images => images.length")
    assert thumbs == 9 * 2 * 12 and len(widths) > thumbs and min(widths) > 0

    # a results table sorts on a header click, ascending then descending, numbers as numbers
    header = page.locator("#results-table th", has_text="Average AUROC")
    index = page.eval_on_selector_all("#results-table th", "h => h.map(x => x.textContent)").index(
        header.inner_text()
    )
    before = _column(page, "results-table", index)
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert _column(page, "results-table", index) == sorted(before)
    header.click()
    assert _column(page, "results-table", index) == sorted(before, reverse=True)
    first = page.locator("#results-table tbody tr").first.locator("td").first.inner_text()
    assert first in page.inner_text("#metrics-table")

    # the negative-label search filters its list, and clearing it shows every label again
    search = page.locator('input[data-filter="negatives-0"]')
    rows = page.locator("#negatives-0 tbody tr")
    total = rows.count()
    word = rows.nth(3).locator("td").first.inner_text()
    search.fill(word)
    shown = [t for t in page.eval_on_selector_all(
        "#negatives-0 tbody tr", "rows => rows.filter(r => !r.hidden).map(r => r.textContent.toLowerCase())"
    )]  # fmt: skip
    assert 1 <= len(shown) < total and all(word.lower() in t for t in shown)
    assert page.inner_text("#negatives-0-count") == f"{len(shown)} of {total}"
    search.fill("")
    assert page.eval_on_selector_all("#negatives-0 tbody tr", "r => r.filter(x => !x.hidden).length") == total

    # a full-page screenshot holding every main section
    shot = _output() / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    height = page.evaluate("document.documentElement.scrollHeight")
    for section in SECTIONS:
        box = page.locator(f"section#{section}").bounding_box()
        assert box is not None and box["height"] > 0 and box["y"] + box["height"] <= height + 1, section
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size[0] == 1400 and img.size[1] >= height - 1
        assert len(img.convert("L").getcolors(65536) or []) > 50  # a page, not a blank
    assert problems == []
    page.close()
