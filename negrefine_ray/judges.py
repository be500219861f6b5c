"""Judges answer NegFilter's yes/no questions. A judge maps questions to `Answer`s; the LLM judges
(transformers, vLLM) live in llm_judge.py and vllm_judge.py, and this module holds the two that need
no LLM: `wordnet` (a free, deterministic baseline from WordNet's own hierarchy) and `replay` (the
decisions of a published NegRefine run, read from its llm_process_*.txt logs).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from negrefine_ray.errors import NegRefineError
from negrefine_ray.negfilter import PromptSet, Question, question_id


@dataclass(frozen=True)
class Answer:
    """A judge's answer. `yes` is None when the answer is invalid (neither yes nor no, or missing)."""

    qid: str
    yes: bool | None
    p_yes: float | None = None  # logprob mode: P(yes) over the Yes/No token variants
    raw: str = ""  # generate mode: the generated text; replay: the log line
    latency_s: float = 0.0


class Judge(Protocol):
    name: str

    def identity(self) -> dict[str, Any]:
        """Everything that determines this judge's answers (the answer cache's key)."""
        ...

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]: ...


def parse_yes_no(text: str) -> bool | None:
    """The reference's rule, `text.lower().startswith("yes")`, made three-way: an answer that starts
    with neither "yes" nor "no" is invalid (None) instead of silently counting as "no"."""
    low = text.lower()
    if low.startswith("yes"):
        return True
    if low.startswith("no"):
        return False
    return None


# ----------------------------------------------------------------------------------------- wordnet


def _id_label_lemmas(id_label: str) -> list[str]:
    """WordNet lemma spellings of an ID class name: "kite (bird of prey)" -> ["kite"];
    "baluster / handrail" -> ["baluster", "handrail"]."""
    bare = re.sub(r"\s*\(.*?\)", "", id_label)
    return [part.strip().replace(" ", "_") for part in bare.split("/") if part.strip()]


class WordNetJudge:
    """Proper noun: every noun synset of the label is an instance (rule "instance"), or one of their
    lemmas is capitalised in WordNet (rule "capitalized"). Subcategory: one of the ID label's noun
    synsets is among the transitive hypernyms (instance hypernyms included) of the label's synsets,
    or (`compound_head`) the label is a compound whose head is the ID label ("african daisy" ->
    "daisy"): WordNet 3.0 files african_daisy under flower, not daisy, though the compound names a
    kind of daisy. A label that is not a WordNet noun (an adjective phrase) answers "no" to both."""

    def __init__(
        self, wn: Any, name: str = "wordnet", *, proper_rule: str = "instance", compound_head: bool = True
    ) -> None:
        self.name, self._wn, self._rule, self._head = name, wn, proper_rule, compound_head

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "wordnet",
            "proper_rule": self._rule,
            "compound_head": self._head,
            "wordnet": self._wn.get_version(),
        }

    def _synsets(self, label: str) -> list[Any]:
        return list(self._wn.synsets(label.strip().replace(" ", "_"), pos="n"))

    def _is_proper(self, label: str) -> bool:
        synsets = self._synsets(label)
        if not synsets:
            return False
        if self._rule == "capitalized":
            return any(lemma.name()[:1].isupper() for s in synsets for lemma in s.lemmas())
        return all(s.instance_hypernyms() for s in synsets)

    def _ancestors(self, label: str) -> set[Any]:
        found: set[Any] = set()
        for synset in self._synsets(label):
            found.update(synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms()))
        return found

    def _is_subcategory(self, label: str, id_label: str) -> bool:
        lemmas = _id_label_lemmas(id_label)
        words = label.strip().lower().split()
        for lemma in lemmas:
            head = lemma.lower().split("_")
            if self._head and len(words) > len(head) and words[-len(head) :] == head:
                return True
        targets = {s for lemma in lemmas for s in self._wn.synsets(lemma, pos="n")}
        return bool(self._ancestors(label) & targets)

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]:
        out = []
        for q in questions:
            t0 = time.perf_counter()
            yes = (
                self._is_proper(q.label) if q.kind == "proper" else self._is_subcategory(q.label, q.id_label)
            )
            out.append(Answer(q.qid, yes, raw="yes" if yes else "no", latency_s=time.perf_counter() - t0))
        return out


# ------------------------------------------------------------------------------------------ replay

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
            self._answers.update(parse_decision_log(path.read_text().splitlines()))

    def identity(self) -> dict[str, Any]:
        from negrefine_ray.artifacts import file_sha256

        return {"backend": "replay", "logs": [file_sha256(p) for p in self._logs]}

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]:
        out = []
        for q in questions:
            yes, line = self._answers.get(q.qid, (None, ""))
            out.append(Answer(q.qid, yes, raw=line))
        return out
