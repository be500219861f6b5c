"""The reference implementations' own source, for the tests that cut a function or class out of it
(ast) and run it beside the project's. Nothing of it is committed: it is read at test time from a
local mirror of the reference repository, a bare git directory at
$NEGREFINE_REFERENCES/<owner>+<name>/repo (default /work/.mirror, where the developers' machines keep
them), at a pinned commit. CI has no GitHub, so there those tests skip and the committed oracles
(tests/golden/reference_*.json: the references' outputs on seeded inputs, written by
`python tests/reference_code.py`) keep the project's functions checked against them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOTS = [r for r in (os.environ.get("NEGREFINE_REFERENCES"), "/work/.mirror") if r]
GOLDEN = Path(__file__).resolve().parent / "golden"
# repository -> the commit methods.md describes
COMMITS = {
    "AtsuMiyai/GL-MCM": "8708a08",
    "YBZh/OpenOOD-VLM": "804f331",
}


def reference_source(repo: str, path: str) -> str | None:
    """The text of `path` at the pinned commit of `repo`, or None where no mirror holds it."""
    for root in ROOTS:
        git_dir = Path(root) / repo.replace("/", "+") / "repo"
        if not git_dir.is_dir():
            continue
        done = subprocess.run(
            ["git", "--git-dir", str(git_dir), "show", f"{COMMITS[repo]}:{path}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return done.stdout
    return None


def require_source(repo: str, path: str) -> str:
    source = reference_source(repo, path)
    if source is None:
        pytest.skip(f"no mirror of {repo} under {ROOTS} (CI has no GitHub; the committed oracle covers it)")
    return source


def cut(source: str, *names: str) -> str:
    """The top-level functions and classes `names` of `source`, in their order there."""
    tree = ast.parse(source)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name in names]
    missing = set(names) - {n.name for n in nodes}
    if missing:
        raise LookupError(f"the reference source has no {sorted(missing)}")
    return "\n\n".join(ast.unparse(n) for n in nodes)


def load(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute cut reference code in `namespace` (its imports supplied there) and return it."""
    exec(compile(code, "<reference>", "exec"), namespace)  # the reference's own code, at a pinned commit
    return namespace


def oracle(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"reference_{name}.json").read_text())


def write_oracles() -> None:
    """Rewrite the committed oracles from the references (needs the mirrors)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_adaneg
    import test_glmcm

    for name, build in (("glmcm", test_glmcm.build_oracle), ("adaneg", test_adaneg.build_oracle)):
        path = GOLDEN / f"reference_{name}.json"
        path.write_text(json.dumps(build(), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    write_oracles()
