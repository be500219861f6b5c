"""jobs/bench/judge_agreement.py: parsing NegRefine's NegFilter logs (methods.md 3.2 step 4) and
comparing a judge with them on exactly the logged questions, with hand-computed figures."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from negrefine_ray.core.negfilter import PromptSet, Question, question_id
from negrefine_ray.errors import NegRefineError
from negrefine_ray.judges.base import Answer

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "bench" / "judge_agreement.py"
NOUN_LOG = [  # the reference ends every line but the footer with a space
    "alpha | proper noun ",
    "beta | daisy | ",
    "beta | tench | subcategory ",
    "gamma | goldfish | ",
    "gamma | gamma | the same ",
    "delta | baluster / handrail | ",
    "delta | kite (bird of prey) | ",
    "biosafety level  | proper noun ",
    "---------------------------------------------",
    "n_proper: 2",
    "n_same: 1",
    "n_subcatgeory: 1",
]
ADJ_LOG = ["gooey landscape | mountain | "]


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("judge_agreement", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["judge_agreement"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


class SetJudge:
    """Says yes exactly to the given qids."""

    name = "set"

    def __init__(self, yes: set[str]) -> None:
        self.yes = yes

    def identity(self) -> dict[str, Any]:
        return {}

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]:
        return [Answer(q.qid, q.qid in self.yes) for q in questions]


def test_parse_log(script: ModuleType) -> None:
    labels = script.parse_log(NOUN_LOG, "noun")
    assert [(e.label, e.proper, e.subs, e.removed) for e in labels] == [
        ("alpha", True, [], True),
        ("beta", False, [("daisy", False), ("tench", True)], True),
        ("gamma", False, [("goldfish", False), ("gamma", None)], True),  # "the same": no LLM answer
        ("delta", False, [("baluster / handrail", False), ("kite (bird of prey)", False)], False),
        ("biosafety level ", True, [], True),  # the trailing space survives
    ]
    asked = script.logged_questions(labels)
    assert len(asked) == 5 + 5  # every proper-noun question, the subcategory ones but "the same"
    assert [(q.kind, q.label, q.id_label, ref) for q, ref, _ in asked[1:4]] == [
        ("proper", "beta", "", False),
        ("subcategory", "beta", "daisy", False),
        ("subcategory", "beta", "tench", True),
    ]


def test_a_line_of_neither_form_is_an_error(script: ModuleType) -> None:
    with pytest.raises(NegRefineError, match=r"line 2 of the adj log.*'beta \| daisy'"):
        script.parse_log(["alpha | proper noun ", "beta | daisy"], "adj")


def test_agreement_on_the_logged_questions(script: ModuleType) -> None:
    labels = script.parse_log(NOUN_LOG, "noun") + script.parse_log(ADJ_LOG, "adj")
    judge = SetJudge({question_id("proper", "alpha"), question_id("subcategory", "beta", "daisy")})
    stats = script.agreement(labels, judge)["stats"]
    proper = stats["proper (noun)"]  # reference: yes to alpha and biosafety; judge: to alpha
    assert (proper["n"], proper["yes_ref"], proper["yes_judge"]) == (5, 2, 1)
    # p_o = 0.8, p_e = 0.4 * 0.2 + 0.6 * 0.8 = 0.56
    assert proper["agreement"] == pytest.approx(0.8) and proper["kappa"] == pytest.approx(0.24 / 0.44)
    sub = stats["subcategory (noun)"]  # 5 questions; each side says yes once, to different ones
    assert sub["agreement"] == pytest.approx(0.6) and sub["kappa"] == pytest.approx((0.6 - 0.68) / 0.32)
    assert stats["subcategory (adj)"]["n"] == 1 and math.isnan(stats["proper (adj)"]["kappa"])
    assert stats["all questions"]["n"] == 10 + 2
    # removed: reference alpha beta gamma biosafety; judge alpha beta gamma ("the same" is no question)
    removed = stats["labels removed (noun)"]
    assert (removed["yes_ref"], removed["yes_judge"], removed["agreement"]) == (4, 3, pytest.approx(0.8))
    assert stats["labels removed (all)"]["n"] == 6
