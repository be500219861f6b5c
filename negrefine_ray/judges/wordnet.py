"""The `wordnet` judge: a free, deterministic NegFilter baseline that answers from WordNet's own
hierarchy instead of an LLM (proper noun: an instance synset; subcategory: a hypernym path or a
compound whose head is the ID label). Runs in the driver process."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from negrefine_ray.core.negfilter import PromptSet, Question
from negrefine_ray.judges.base import Answer

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig


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

    @classmethod
    def from_config(cls, cfg: JudgeConfig, *, seed: int, cache_dir: Path) -> WordNetJudge:
        """WordNet from `cache_dir` (negrefine_ray.data.wordnet finds or builds it); `seed` is unused."""
        from negrefine_ray.data.wordnet import load_wordnet

        wn = load_wordnet(cache_dir).reader
        return cls(wn, cfg.name, proper_rule=cfg.proper_rule, compound_head=cfg.compound_head)

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
