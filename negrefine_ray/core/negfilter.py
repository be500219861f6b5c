"""NegFilter's questions and decision rule (NegRefine, methods.md 3.2), free of any LLM.

Input: negative labels, each with its n nearest ID labels (bare-string CLIP similarity, descending).
A label is removed when it is a proper noun, equal to one of its ID labels ("same"), or a
subcategory of one of them. The reference asks one question at a time with early exit; here the
questions go in two waves (every proper-noun question, then every subcategory question of the
survivors up to their first "same"), and `decide` applies the reference's sequential rule to the
answers, so the decisions equal the reference's for the same answers with two round trips.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from negrefine_ray.errors import unknown_name

Kind = Literal["proper", "subcategory"]


@dataclass(frozen=True)
class PromptSet:
    system: str
    proper: str  # formatted with neg_label
    subcategory: str  # formatted with neg_label and id_label


# The reference's strings verbatim, its "subcatgeory" typo included.
PROMPT_SETS: dict[str, PromptSet] = {
    "negrefine": PromptSet(
        system="You are a helpful assistant. Answering only Yes/No.",
        proper=(
            "Is '{neg_label}' a proper noun, like the name of a city, country, mountain, river, "
            "or any unique place or entity?"
        ),
        subcategory="Is '{neg_label}' a subcatgeory of '{id_label}'?",
    ),
    "corrected": PromptSet(
        system="You are a helpful assistant. Answer only Yes or No.",
        proper=(
            "Is '{neg_label}' a proper noun, like the name of a city, country, mountain, river, "
            "or any unique place or entity?"
        ),
        subcategory="Is '{neg_label}' a subcategory of '{id_label}'?",
    ),
}


def get_prompt_set(name: str) -> PromptSet:
    if name not in PROMPT_SETS:
        raise unknown_name("prompt set (filter.prompt_set)", name, PROMPT_SETS)
    return PROMPT_SETS[name]


@dataclass(frozen=True)
class Question:
    """One yes/no question. `qid` is a stable hash of (kind, label, id_label), not of the prompt."""

    qid: str
    kind: Kind
    label: str
    id_label: str  # "" for the proper-noun question
    rank: int  # position of id_label among the label's nearest ID labels; -1 for proper

    def user_prompt(self, prompts: PromptSet) -> str:
        if self.kind == "proper":
            return prompts.proper.format(neg_label=self.label)
        return prompts.subcategory.format(neg_label=self.label, id_label=self.id_label)


def question_id(kind: Kind, label: str, id_label: str = "") -> str:
    text = f"{kind}\x1f{label}\x1f{id_label}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def proper_question(label: str) -> Question:
    return Question(question_id("proper", label), "proper", label, "", -1)


def subcategory_questions(label: str, id_labels: Sequence[str]) -> list[Question]:
    """The subcategory questions the label may need: its ID labels in order, up to the first that
    equals the label exactly (that one is decided "same" without an LLM, and nothing after it
    can matter)."""
    out = []
    for rank, id_label in enumerate(id_labels):
        if id_label == label:
            break
        out.append(
            Question(question_id("subcategory", label, id_label), "subcategory", label, id_label, rank)
        )
    return out


@dataclass(frozen=True)
class Decision:
    """Why a label is kept or removed; `id_label` is the one that removed it (same/subcategory)."""

    label: str
    reason: Literal["proper", "same", "subcategory", "kept"]
    id_label: str = ""

    @property
    def kept(self) -> bool:
        return self.reason == "kept"


def decide(label: str, id_labels: Sequence[str], yes: Mapping[str, bool]) -> Decision:
    """The reference's sequential early-exit rule over answers `yes[qid]` (True = "yes").

    Raises KeyError if an answer the rule needs is missing, so a lost answer can never pass as "no".
    """
    if yes[question_id("proper", label)]:
        return Decision(label, "proper")
    for id_label in id_labels:
        if id_label == label:
            return Decision(label, "same", id_label)
        if yes[question_id("subcategory", label, id_label)]:
            return Decision(label, "subcategory", id_label)
    return Decision(label, "kept")


def sequential_questions(label: str, id_labels: Sequence[str], yes: Mapping[str, bool]) -> list[str]:
    """The qids the reference would have asked for this label, in order (its early exit)."""
    asked = [question_id("proper", label)]
    if yes[asked[0]]:
        return asked
    for q in subcategory_questions(label, id_labels):
        asked.append(q.qid)
        if yes[q.qid]:
            break
    return asked


def count_reasons(decisions: Sequence[Decision]) -> dict[str, int]:
    """The reference log's footer counts (n_proper, n_same, n_subcatgeory) plus kept and total."""
    counts = {"proper": 0, "same": 0, "subcategory": 0, "kept": 0}
    for d in decisions:
        counts[d.reason] += 1
    return {**counts, "total": len(decisions)}
