"""The `replay` judge: the decisions of a published NegRefine run, read from its llm_process_*.txt
logs, so NegFilter can be checked against the reference without an LLM. Runs in the driver
process; a question the logs never asked is answered invalid."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from negrefine_ray.core.lines import text_lines
from negrefine_ray.core.negfilter import PromptSet, Question, question_id
from negrefine_ray.errors import NegRefineError
from negrefine_ray.judges.base import Answer

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig

_PROPER_LINE = re.compile(r"^(?P<label>.*) \| proper noun $")
_SUB_LINE = re.compile(r"^(?P<label>.*?) \| (?P<id_label>.*) \| (?P<status>subcategory |the same |)$")


def parse_decision_log(lines: Iterable[str]) -> dict[str, tuple[bool, str]]:
    """Answers recorded in a NegRefine llm_process_*.txt log: qid -> (yes, log line).

    Every logged label was first asked the proper-noun question: a label with subcategory lines
    and no "proper noun" line was answered "no" there. "the same" lines involve no LLM and give no
    answer. The footer (dashes and n_* counts) is skipped.
    """
    answers: dict[str, tuple[bool, str]] = {}
    for raw_line in lines:
        line = raw_line.rstrip("\n")
        if m := _PROPER_LINE.match(line):
            answers[question_id("proper", m["label"])] = (True, line)
        elif m := _SUB_LINE.match(line):
            answers.setdefault(question_id("proper", m["label"]), (False, ""))
            if m["status"] != "the same ":
                qid = question_id("subcategory", m["label"], m["id_label"])
                answers[qid] = (m["status"] == "subcategory ", line)
    return answers


class ReplayJudge:
    """Answers from a published decision log; a question the log never asked is invalid (counted,
    and decided by filter.invalid_policy), which is how a different CLIP or label set shows up."""

    def __init__(self, logs: Sequence[Path], name: str = "replay") -> None:
        self.name, self._logs = name, [Path(p) for p in logs]
        missing = [str(p) for p in self._logs if not p.is_file()]
        if missing or not self._logs:
            raise NegRefineError(
                f"Replay judge '{name}' needs its decision logs; missing: "
                f"{missing or 'log_noun/log_adj unset'}. "
                f"Set judges.{name}.log_noun / log_adj to NegRefine's llm_process_noun.txt / _adj.txt."
            )
        self._answers: dict[str, tuple[bool, str]] = {}
        for path in self._logs:
            self._answers.update(parse_decision_log(text_lines(path.read_text())))

    @classmethod
    def from_config(cls, cfg: JudgeConfig, *, seed: int, cache_dir: Path) -> ReplayJudge:
        """The logs `cfg.log_noun` and `cfg.log_adj` (those set); `seed` and `cache_dir` are unused."""
        return cls([Path(p).expanduser() for p in (cfg.log_noun, cfg.log_adj) if p], cfg.name)

    def identity(self) -> dict[str, Any]:
        from negrefine_ray.runfolder.atomic import file_sha256

        return {"backend": "replay", "logs": [file_sha256(p) for p in self._logs]}

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]:
        out = []
        for q in questions:
            yes, line = self._answers.get(q.qid, (None, ""))
            out.append(Answer(q.qid, yes, raw=line))
        return out
