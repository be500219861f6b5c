"""The front page and the docs stay true to the code: the README's architecture tree lists exactly the
package's modules, the README stays short, no page cites an issue number, every relative link lands,
and the README's test command is the one CI runs. Pure file reading: no Ray, no package import.

The architecture tree is the first fenced code block after the README's `## Architecture` heading.
One entry a line, in this form (two spaces of indentation per level, then the name, then at least one
space, an em dash, a space and the entry's one-line role):

    negrefine_ray/          — the package's role
      cli.py                — a top-level module's role
      stages/               — a subpackage's role
        score.py            — a module of that subpackage

- A folder is written `name/`, a module `name.py`; the first line is `negrefine_ray/` at level 0 and
  every other entry sits one level below the folder entry above it.
- Listed: every folder under negrefine_ray/ that directly holds a `.py` file, and every `.py` file
  except `__init__.py` (a folder's own line describes its `__init__.py`); `__main__.py` is listed like
  any module. `__pycache__` and folders without Python files (model_configs/) are not.
- Every entry has a role; order is free (the tree lists related modules together).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PACKAGE = "negrefine_ray"
MAX_README_LINES = 250

ENTRY = re.compile(r"^(?P<indent>(?:  )*)(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:/|\.py)) +— \S.*$")


def _pages() -> list[Path]:
    """The user-facing Markdown pages: the README, docs/, and the jobs' and cluster's READMEs."""
    pages = [README, *sorted((REPO / "docs").rglob("*.md"))]
    return pages + [p for p in (REPO / "jobs" / "README.md", REPO / "cluster" / "README.md") if p.exists()]


def _without_fences(text: str) -> str:
    """The text with every fenced code block's lines blanked (line numbers kept)."""
    out, fence = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
            out.append("")
        else:
            out.append("" if fence else line)
    return "\n".join(out)


def _tree_lines() -> list[str]:
    lines = README.read_text(encoding="utf-8").split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Architecture"), None)
    assert start is not None, "README.md has no '## Architecture' heading"
    opening = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("```")), None)
    assert opening is not None, "README.md's Architecture section has no fenced code block (the tree)"
    closing = next((i for i in range(opening + 1, len(lines)) if lines[i].startswith("```")), None)
    assert closing is not None, "README.md's architecture tree is not closed with ```"
    return lines[opening + 1 : closing]


def _readme_tree() -> set[str]:
    """The entries of the README's tree as paths: 'negrefine_ray/stages/' and 'negrefine_ray/cli.py'."""
    entries: set[str] = set()
    folders: list[str] = []  # the folder entry at each level above the current line
    bad: list[str] = []
    for line in _tree_lines():
        m = ENTRY.match(line)
        level = len(m.group("indent")) // 2 if m else -1
        if not m or level > len(folders) or (level == 0) != (m.group("name") == f"{PACKAGE}/"):
            bad.append(line)
            continue
        del folders[level:]
        path = "".join(folders) + m.group("name")
        entries.add(path)
        if path.endswith("/"):
            folders.append(m.group("name"))
    message = (
        "README.md's architecture tree has lines not in the form 'INDENT name.py|name/  — role' "
        "(two spaces a level, one level below the folder above; see tests/test_readme.py):\n"
    )
    assert not bad, message + "\n".join(bad)
    return entries


def _package_tree() -> set[str]:
    entries: set[str] = set()
    for path in (REPO / PACKAGE).rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(REPO)
        entries.add(rel.parent.as_posix() + "/")
        if path.name != "__init__.py":
            entries.add(rel.as_posix())
    return entries


def test_architecture_tree_lists_exactly_the_package() -> None:
    listed, actual = _readme_tree(), _package_tree()
    missing, stale = sorted(actual - listed), sorted(listed - actual)
    assert not missing and not stale, (
        "README.md's architecture tree and negrefine_ray/ differ.\n"
        f"In the package but not in the README ({len(missing)}): {missing}\n"
        f"In the README but not in the package ({len(stale)}): {stale}\n"
        "Add or remove those lines (format: tests/test_readme.py's docstring)."
    )


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines, more than {MAX_README_LINES}: move reference material to docs/ "
        "(one file a topic) and link it."
    )


# "issue 12", "issues 12 and 13", "Issue #12", "issue-20", "#12", "PR 7", "pull request #7". Link
# targets and URLs are removed first, so anchors (`#6-metrics`) and another project's issue URL
# (https://github.com/<owner>/<repo>/issues/123) do not count; `&#123;` entities do not either.
ISSUE = re.compile(
    r"\bissues?[ \t]*(?:#|no\.[ \t]*|number[ \t]*)?\d+\b"
    r"|\bissue-\d+"
    r"|\bpull[ \t]+requests?[ \t]*#?\d+\b"
    r"|\bPRs?[ \t]*#?\d+\b"
    r"|(?<![\w&/#])#\d+\b",
    re.IGNORECASE,
)
LINK_TARGET = re.compile(r"\]\([^)]*\)")
URL = re.compile(r"<?\b[a-z][a-z0-9+.-]*://[^\s>)]+>?", re.IGNORECASE)


def _issue_citations(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(text.split("\n"), 1):
        plain = URL.sub(" ", LINK_TARGET.sub("]", line))
        found += [(number, m.group(0)) for m in ISSUE.finditer(plain)]
    return found


def test_issue_citation_pattern() -> None:
    cited = "see issue 12; issues 3 and 4; Issue #7; (#15); issue-20; PR 9; pull request #2"
    assert [m for _, m in _issue_citations(cited)] == [
        "issue 12", "issues 3", "Issue #7", "#15", "issue-20", "PR 9", "pull request #2",
    ]  # fmt: skip
    clean = (
        "## 5. Metrics [s](docs/a.md#6-metrics) <https://github.com/o/r/issues/4410> &#8212; "
        "AUPR 5, methods.md 5.5, an issue with 3 causes"
    )
    assert _issue_citations(clean) == []


def test_no_page_cites_an_issue_number() -> None:
    found = [
        f"{page.relative_to(REPO)}:{line}: {match!r}"
        for page in _pages()
        for line, match in _issue_citations(page.read_text(encoding="utf-8"))
    ]
    message = "User-facing pages cite issue numbers; state the fact itself instead:\n"
    assert not found, message + "\n".join(found)


LINK = re.compile(r"\[[^\]]*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s|$)", re.MULTILINE)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: links and code reduced to text, punctuation dropped, spaces '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    for line in _without_fences(page.read_text(encoding="utf-8")).split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = _slug(m.group(1))
            anchor, n = base, 0
            while anchor in anchors:
                n += 1
                anchor = f"{base}-{n}"
            anchors.add(anchor)
    return anchors


def test_relative_links_point_at_existing_files() -> None:
    broken = []
    for page in _pages():
        text = _without_fences(page.read_text(encoding="utf-8"))
        targets = [m.group("target") for m in (*LINK.finditer(text), *REF_LINK.finditer(text))]
        for target in targets:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # a URL (https:, mailto:)
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: {path_part} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: {dest.relative_to(REPO)} has no heading with anchor #{anchor}")
    assert not broken, "Broken relative links:\n" + "\n".join(broken)


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs "the README's test command" verbatim: the Quick start's pytest line."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Quick start")
    block = text[text.index("```", start) : text.index("```", text.index("```", start) + 3)]
    commands = [line for line in block.split("\n") if "pytest" in line]
    assert len(commands) == 1, f"the Quick start should hold one pytest command, found {commands}"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert f"'{commands[0]}'" in ci, (
        f".ci/run does not run the README's test command {commands[0]!r} verbatim; keep the two equal."
    )
