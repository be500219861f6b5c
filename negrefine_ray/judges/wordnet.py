"""The `wordnet` judge: a free, deterministic NegFilter baseline that answers from WordNet's own
hierarchy instead of an LLM (proper noun: a named instance; subcategory: a hypernym path, or a
compound whose head is the ID label and that WordNet files beside it). Runs in the driver process.
Agreement with NegRefine's Qwen2.5-14B answers: jobs/bench/judge_agreement.py."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from negrefine_ray.core.mining import clean_label
from negrefine_ray.core.negfilter import PromptSet, Question
from negrefine_ray.judges.base import Answer

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig

RULES_VERSION = 2  # bump when a rule changes: it keys the answer cache through identity()
# A label holding one of these is a phrase whose head is not its last word ("lily of the valley").
FUNCTION_WORDS = frozenset(
    {"of", "in", "on", "for", "from", "with", "at", "by", "to", "and", "or", "the", "de", "du", "la", "le"}
)


def split_id_label(id_label: str) -> tuple[list[str], list[str]]:
    """An ID class name's alternatives and its parenthesised note, each split on "/" and "or":
    "kite (bird of prey)" -> (["kite"], ["bird of prey"]); "spiral or coil" -> (["spiral", "coil"], [])."""
    m = re.fullmatch(r"(.*?)\s*\((.*)\)\s*", id_label)
    head, note = (m[1], m[2]) if m else (id_label, "")

    def parts(text: str) -> list[str]:
        return [p.strip().lower() for p in re.split(r"\s*/\s*|\s+or\s+", text) if p.strip()]

    return parts(head), parts(note)


class WordNetJudge:
    """NegFilter's two questions answered from WordNet 3.0 nouns.

    Senses of a label: the noun synsets of the label (nltk's morphy included) and of every WordNet
    noun lemma that NegFilter's cleaning (`clean_label`) turns into the label, so "shepherds purse"
    finds "shepherd's_purse" and "st elias range" finds "St._Elias_Range". A label without noun
    senses answers "no" to both questions: so do the CSP adjective phrases ("wildcat pattern"). The
    reference's LLM said yes to 32 of their 13,820 subcategory questions, mostly to unrelated pairs
    ("quiet place" | "safe"); a rule through the adjective's pertainyms and derived nouns said yes
    to 2 other questions and to none of the 32, so there is none.

    Proper noun, `proper_rule` "instance": the label's first sense (WordNet orders senses by tagged
    frequency: the reading a reader takes) is an instance synset ("etna": the volcano, though a rare
    sense is a Bunsen burner). "capitalized": a lemma of one of its senses is capitalised.

    Subcategory of an ID label: the ID label's senses are those of its alternatives ("spiral or
    coil", "product packet / packaging"; "vaulted or arched ceiling": "vaulted ceiling"); a
    parenthesis keeps the senses under the noun it names ("kite (bird of prey)": the bird; "ram
    (adult male sheep)": via "sheep"), else adds its own as alternatives ("military hat (bearskin or
    shako)"). Yes when (1) one of those senses is a transitive hypernym (instance hypernyms
    included) of one of the label's senses, or (2, `compound_head`) the label is a compound ending
    in an alternative, with no function word ("african daisy" -> "daisy"; not "wild lily of the
    valley" -> "valley"), and WordNet does not contradict it: if both are WordNet nouns, a sense of
    the compound is, or lies under, a hypernym of the head, i.e. WordNet files it beside the head
    (african_daisy under flower, next to daisy), not elsewhere ("indian paintbrush": a plant).
    """

    def __init__(
        self, wn: Any, name: str = "wordnet", *, proper_rule: str = "instance", compound_head: bool = True
    ) -> None:
        self.name, self._wn, self._rule, self._head = name, wn, proper_rule, compound_head
        self._index: dict[str, list[str]] | None = None
        self._senses_of: dict[str, list[Any]] = {}
        self._ancestors_of: dict[Any, frozenset[Any]] = {}
        self._id_of: dict[str, tuple[frozenset[Any], list[str]]] = {}

    @classmethod
    def from_config(cls, cfg: JudgeConfig, *, seed: int, cache_dir: Path) -> WordNetJudge:
        """WordNet from `cache_dir` (negrefine_ray.data.wordnet finds or builds it); `seed` is unused."""
        from negrefine_ray.data.wordnet import load_wordnet

        wn = load_wordnet(cache_dir).reader
        return cls(wn, cfg.name, proper_rule=cfg.proper_rule, compound_head=cfg.compound_head)

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "wordnet",
            "rules": RULES_VERSION,
            "proper_rule": self._rule,
            "compound_head": self._head,
            "wordnet": self._wn.get_version(),
        }

    def _lemma_index(self) -> dict[str, list[str]]:
        """Cleaned, lowercased spelling -> the WordNet noun lemmas that clean to it (built once)."""
        if self._index is None:
            self._index = {}
            for lemma in self._wn.all_lemma_names(pos="n"):
                key = (clean_label(lemma.replace("_", " ")) or "").strip().lower()
                if key:  # lemmas of 2 characters or fewer are no NegFilter label
                    self._index.setdefault(key, []).append(lemma)
        return self._index

    def senses(self, text: str) -> list[Any]:
        """The noun synsets `text` may name, WordNet's own order first (see the class doc)."""
        key = text.strip().lower()
        if key not in self._senses_of:
            found = list(self._wn.synsets(key.replace(" ", "_"), pos="n")) if key else []
            for lemma in sorted(self._lemma_index().get(key, ())):
                found += [s for s in self._wn.synsets(lemma, pos="n") if s not in found]
            self._senses_of[key] = found
        return self._senses_of[key]

    def _ancestors(self, synset: Any) -> frozenset[Any]:
        if synset not in self._ancestors_of:
            up = synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())
            self._ancestors_of[synset] = frozenset(up)
        return self._ancestors_of[synset]

    def _alternatives(self, parts: list[str]) -> list[str]:
        """Elliptic coordination: "vaulted or arched ceiling" means "vaulted ceiling or arched
        ceiling". A shorter alternative takes the last one's head word when it is no WordNet noun
        on its own or the joined spelling is one ("bell or wind chime" keeps "bell")."""
        last = parts[-1].split()[-1]
        out = []
        for part in parts[:-1]:
            joined = f"{part} {last}"
            shorter = len(part.split()) < len(parts[-1].split())
            out.append(joined if shorter and (self.senses(joined) or not self.senses(part)) else part)
        return [*out, parts[-1]]

    def id_senses(self, id_label: str) -> tuple[frozenset[Any], list[str]]:
        """The senses an ID label names and the spellings of its alternatives (see the class doc)."""
        if id_label not in self._id_of:
            parts, notes = split_id_label(id_label)
            heads = self._alternatives(parts) if parts else []
            own = [s for h in heads for s in self.senses(h)]
            named = {n: self.senses(n) for n in notes}
            under = {s for n in notes for s in (named[n] or self.senses(n.split()[-1]))}
            kept = [s for s in own if s in under or self._ancestors(s) & under]
            if kept:
                self._id_of[id_label] = (frozenset(kept), heads)
            else:
                extra = [n for n in notes if named[n]]
                found = own + [s for n in extra for s in named[n]]
                self._id_of[id_label] = (frozenset(found), heads + extra)
        return self._id_of[id_label]

    def is_proper(self, label: str) -> bool:
        """The answer to "Is LABEL a proper noun?" under `proper_rule` (see the class doc)."""
        senses = self.senses(label)
        if not senses:
            return False
        if self._rule == "capitalized":
            return any(lemma.name()[:1].isupper() for s in senses for lemma in s.lemmas())
        return bool(senses[0].instance_hypernyms())

    def _compound_of(self, label: str, head: str, targets: frozenset[Any]) -> bool:
        words, head_words = label.strip().lower().split(), head.split()
        n = len(head_words)
        if len(words) <= n or words[-n:] != head_words or FUNCTION_WORDS & set(words):
            return False
        head_senses = [s for s in self.senses(head) if s in targets] or self.senses(head)
        compound = self.senses(label)
        if not compound or not head_senses:
            return True  # WordNet holds one of them only: nothing contradicts the head
        beside = {p for h in head_senses for p in h.hypernyms() + h.instance_hypernyms()}
        return any(({s} | self._ancestors(s)) & (beside | set(head_senses)) for s in compound)

    def is_subcategory(self, label: str, id_label: str) -> bool:
        """The answer to "Is LABEL a subcategory of ID_LABEL?": rule (1) or (2) of the class doc."""
        targets, heads = self.id_senses(id_label)
        if any(self._ancestors(s) & targets for s in self.senses(label)):
            return True
        return self._head and any(self._compound_of(label, head, targets) for head in heads)

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]:
        out = []
        for q in questions:
            t0 = time.perf_counter()
            yes = self.is_proper(q.label) if q.kind == "proper" else self.is_subcategory(q.label, q.id_label)
            out.append(Answer(q.qid, yes, raw="yes" if yes else "no", latency_s=time.perf_counter() - t0))
        return out
