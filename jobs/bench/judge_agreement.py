"""Agreement of a NegFilter judge with a published NegRefine run: the questions logged in
its llm_process_noun.txt / llm_process_adj.txt are asked again of the judge (default the built-in
`wordnet` judge, or any judge of a job file) and compared with the logged answers: agreement and
Cohen's kappa per question kind and per label (kept/removed), yes counts, and disagreements.

  python jobs/bench/judge_agreement.py LOG_FOLDER [--job jobs/x.toml --judge NAME] [--json out.json]

The logs hold only the questions the reference asked, up to each label's first "yes", so both are
compared on exactly those questions. A label's removal by the judge is read off the same questions;
a label the reference removed early may be removed by the judge on a later, unlogged question, so
the label-level figures are a lower bound for such labels.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from negrefine_ray.config import JudgeConfig, load_config
from negrefine_ray.core.negfilter import PROMPT_SETS, Question, proper_question, subcategory_questions
from negrefine_ray.errors import NegRefineError, unknown_name
from negrefine_ray.judges import make_judge
from negrefine_ray.judges.base import Judge
from negrefine_ray.judges.compare import cohen_kappa

LOGS = {"noun": "llm_process_noun.txt", "adj": "llm_process_adj.txt"}
_PROPER = re.compile(r"^(?P<label>.*) \| proper noun $")
_SUB = re.compile(r"^(?P<label>.*?) \| (?P<id_label>.*) \| (?P<status>subcategory |the same |)$")
_FOOTER = re.compile(r"^(-+|n_\w+: \d+)$")
EXAMPLES = 8


@dataclass
class LoggedLabel:
    """One label of a log: its proper-noun answer and its subcategory questions in asked order,
    each (id_label, answer) with answer True (yes), False (no) or None ("the same": no LLM call)."""

    label: str
    pos: str  # "noun" or "adj": which log it came from
    proper: bool = False
    subs: list[tuple[str, bool | None]] = field(default_factory=list)

    @property
    def removed(self) -> bool:
        return self.proper or any(a is not False for _, a in self.subs)


def parse_log(lines: Iterable[str], pos: str) -> list[LoggedLabel]:
    """The labels of a NegRefine llm_process_*.txt log (methods.md 3.2 step 4), in log order.

    A label's lines are consecutive; a label's trailing space (e.g. 'biosafety level ') is kept.
    Raises NegRefineError on a line that fits neither form, naming its number.
    """
    out: list[LoggedLabel] = []
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line or _FOOTER.match(line):
            continue
        if m := _PROPER.match(line):
            out.append(LoggedLabel(m["label"], pos, proper=True))
        elif m := _SUB.match(line):
            if not out or out[-1].label != m["label"] or out[-1].removed:
                out.append(LoggedLabel(m["label"], pos))
            status = {"subcategory ": True, "": False, "the same ": None}[m["status"]]
            out[-1].subs.append((m["id_label"], status))
        else:
            raise NegRefineError(
                f"line {number} of the {pos} log is not a NegRefine NegFilter line: {line!r}; expected "
                "'<label> | proper noun ' or '<label> | <id label> | [subcategory |the same ]'."
            )
    return out


def logged_questions(labels: Sequence[LoggedLabel]) -> list[tuple[Question, bool, str]]:
    """Every question the reference asked an LLM, with its logged answer and the label's pos."""
    out: list[tuple[Question, bool, str]] = []
    for entry in labels:
        out.append((proper_question(entry.label), entry.proper, entry.pos))
        asked = [(i, a) for i, a in entry.subs if a is not None]
        questions = subcategory_questions(entry.label, [i for i, _ in asked])
        out.extend((q, a, entry.pos) for q, (_, a) in zip(questions, asked, strict=True))
    return out


def _stats(ref: list[bool], got: list[bool]) -> dict[str, Any]:
    n = len(ref)
    agree = sum(r == g for r, g in zip(ref, got, strict=True)) / n if n else math.nan
    return {
        "n": n,
        "agreement": agree,
        "kappa": cohen_kappa(ref, got),
        "yes_ref": sum(ref),
        "yes_judge": sum(got),
    }


def agreement(labels: Sequence[LoggedLabel], judge: Judge) -> dict[str, Any]:
    """Question- and label-level agreement of `judge` with the logged answers (see the module doc)."""
    asked = logged_questions(labels)
    answers = judge.answer([q for q, _, _ in asked], PROMPT_SETS["negrefine"])
    judge_yes = {a.qid: bool(a.yes) for a in answers}  # an invalid answer counts as "no"
    invalid = sum(a.yes is None for a in answers)
    groups: dict[str, list[tuple[bool, bool]]] = {}
    disagree: dict[str, list[str]] = {}
    for q, ref, pos in asked:
        kind = f"{q.kind} ({pos})"
        got = judge_yes[q.qid]
        for key in (kind, "all questions"):
            groups.setdefault(key, []).append((ref, got))
        if ref != got:
            text = q.label if q.kind == "proper" else f"{q.label} | {q.id_label}"
            disagree.setdefault(f"{kind}: {'judge yes' if got else 'judge no'}", []).append(text)
    for entry in labels:
        qids = [proper_question(entry.label).qid]
        qids += [
            q.qid for q in subcategory_questions(entry.label, [i for i, a in entry.subs if a is not None])
        ]
        got = any(judge_yes[qid] for qid in qids) or any(a is None for _, a in entry.subs)
        for key in (f"labels removed ({entry.pos})", "labels removed (all)"):
            groups.setdefault(key, []).append((entry.removed, got))
    order = [f"{k} ({p})" for k in ("proper", "subcategory") for p in LOGS] + ["all questions"]
    order += [f"labels removed ({p})" for p in (*LOGS, "all")]
    stats = {k: _stats([r for r, _ in groups[k]], [g for _, g in groups[k]]) for k in order if k in groups}
    examples = {k: (len(v), v[:EXAMPLES]) for k, v in sorted(disagree.items())}
    return {"stats": stats, "invalid_answers": invalid, "disagreements": examples}


def markdown(result: dict[str, Any], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| rows | n | agreement | Cohen's κ | yes (reference) | yes (judge) |",
        "|---|---|---|---|---|---|",
    ]
    for key, s in result["stats"].items():
        lines.append(
            f"| {key} | {s['n']:,} | {s['agreement']:.3f} | {s['kappa']:.3f} "
            f"| {s['yes_ref']:,} | {s['yes_judge']:,} |"
        )
    lines += ["", f"Invalid judge answers (counted as no): {result['invalid_answers']:,}", ""]
    for key, (count, examples) in result["disagreements"].items():
        lines.append(f"- {key}: {count:,} (e.g. {'; '.join(examples)})")
    return "\n".join(lines) + "\n"


def judge_config(job: str | None, name: str) -> JudgeConfig:
    """Judge `name` of the job file's [[judges]] (or the built-in "wordnet")."""
    judges = {j.name: j for j in load_config(job).judges} if job else {}
    judges.setdefault("wordnet", JudgeConfig(name="wordnet", backend="wordnet"))
    if name not in judges:
        raise unknown_name("judge (--judge)", name, judges)
    return judges[name]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("logs", type=Path, help="folder with llm_process_noun.txt / llm_process_adj.txt")
    parser.add_argument("--job", help="job TOML whose [[judges]] entry --judge names")
    parser.add_argument("--judge", default="wordnet", help="judge name (default: the built-in wordnet)")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/negrefine-ray").expanduser())
    parser.add_argument("--json", type=Path, help="also write the figures and disagreements here")
    args = parser.parse_args(argv)
    paths = {pos: args.logs / name for pos, name in LOGS.items() if (args.logs / name).is_file()}
    if not paths:
        raise NegRefineError(
            f"no {' or '.join(LOGS.values())} in {args.logs}; pass NegRefine's output folder"
        )
    labels = [e for pos, p in paths.items() for e in parse_log(p.read_text().splitlines(), pos)]
    cfg = judge_config(args.job, args.judge)
    cache_dir = load_config(args.job).local_cache_dir if args.job else args.cache_dir
    judge = make_judge(cfg, seed=0, cache_dir=cache_dir)
    result = agreement(labels, judge)
    print(markdown(result, f"Judge '{cfg.name}' ({cfg.backend}) vs {args.logs}"))
    if args.json:
        args.json.write_text(json.dumps({"judge": judge.identity(), **result}, indent=1))


if __name__ == "__main__":
    main()
