"""NegFilter without an LLM: the two-wave rule equals the reference's sequential early exit, invalid
answers follow the policy, the replay judge, resumption, and the judge comparison (the WordNet judge
and the judge factory: test_judges_factory.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from negrefine_ray.core.negfilter import (
    PROMPT_SETS,
    Decision,
    PromptSet,
    Question,
    decide,
    proper_question,
    question_id,
    subcategory_questions,
)
from negrefine_ray.judges.base import Answer, parse_yes_no
from negrefine_ray.judges.compare import cohen_kappa, compare_judges
from negrefine_ray.judges.replay import ReplayJudge, parse_decision_log
from negrefine_ray.judges.store import AnswerStore
from negrefine_ray.stages._filter_judging import filter_labels, in_process_asker, run_judge

PROMPTS = PROMPT_SETS["negrefine"]


def reference_filter(labels: Sequence[str], nearest: Sequence[Sequence[str]], oracle: Any) -> list[Decision]:
    """NegRefine's loop, written out one question at a time with early exit (methods.md 3.2 step 4)."""
    out = []
    for label, ids in zip(labels, nearest, strict=True):
        if oracle("proper", label, ""):
            out.append(Decision(label, "proper"))
            continue
        for id_label in ids:
            if label == id_label:
                out.append(Decision(label, "same", id_label))
                break
            if oracle("subcategory", label, id_label):
                out.append(Decision(label, "subcategory", id_label))
                break
        else:
            out.append(Decision(label, "kept"))
    return out


class TableJudge:
    """A test double standing in for an LLM: answers from a fixed table, counting every question."""

    def __init__(
        self, table: dict[str, bool | None], name: str = "table", fail_after: int | None = None
    ) -> None:
        self.name, self.table, self.asked, self.fail_after = name, table, [], fail_after

    def identity(self) -> dict[str, Any]:
        return {"backend": "table", "name": self.name}

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]:
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise RuntimeError("engine died")
        self.asked.extend(q.qid for q in questions)
        return [Answer(q.qid, self.table[q.qid], raw=str(self.table[q.qid])) for q in questions]


def _random_problem(rng: random.Random, n: int) -> tuple[list[str], list[list[str]], dict[str, bool]]:
    """n distinct labels, 10 ID labels each (a label's own string among them now and then)."""
    vocab = [f"id{i}" for i in range(30)]
    labels = [f"neg{i}" for i in range(n)]
    nearest = [rng.sample(vocab, 10) for _ in labels]
    for label, ids in zip(labels, nearest, strict=True):
        if rng.random() < 0.2:
            ids[rng.randrange(10)] = label
    answers = {question_id("proper", lab): rng.random() < 0.25 for lab in labels}
    for lab, ids in zip(labels, nearest, strict=True):
        answers.update({question_id("subcategory", lab, i): rng.random() < 0.08 for i in ids})
    return labels, nearest, answers


@pytest.mark.parametrize("seed", range(5))
def test_two_waves_equal_the_sequential_rule(tmp_path: Path, seed: int) -> None:
    labels, nearest, answers = _random_problem(random.Random(seed), 200)
    judge = TableJudge(answers)
    store = AnswerStore(tmp_path)
    decisions, asked, _ = filter_labels(
        labels, nearest, in_process_asker(judge, PROMPTS, store, 64), store, policy="keep"
    )

    def oracle(kind: str, label: str, id_label: str) -> bool:
        return answers[question_id(kind, label, id_label)]  # type: ignore[arg-type]

    assert decisions == reference_filter(labels, nearest, oracle)
    assert len(judge.asked) == len(set(judge.asked)) == len({q.qid for q in asked})
    assert any(d.reason == "same" for d in decisions) and any(d.reason == "subcategory" for d in decisions)


def test_same_word_shortcut_needs_no_question() -> None:
    qs = subcategory_questions("daisy", ["flower", "daisy", "tench"])
    assert [q.id_label for q in qs] == ["flower"]  # nothing after the "same" can matter
    yes = {proper_question("daisy").qid: False, qs[0].qid: False}
    assert decide("daisy", ["flower", "daisy", "tench"], yes) == Decision("daisy", "same", "daisy")


def test_a_missing_answer_never_passes_as_no() -> None:
    with pytest.raises(KeyError):
        decide("x", ["y"], {proper_question("x").qid: False})


@pytest.mark.parametrize(("policy", "reason"), [("keep", "kept"), ("drop", "proper")])
def test_invalid_answers_follow_the_policy_and_are_counted(tmp_path: Path, policy: str, reason: str) -> None:
    answers: dict[str, bool | None] = {proper_question("maybe").qid: None}
    answers.update({q.qid: False for q in subcategory_questions("maybe", ["a", "b"])})
    store = AnswerStore(tmp_path)
    negatives = pa.table({"label": ["maybe"], "pos": ["noun"], "nearest_id_labels": [["a", "b"]]})
    ask = in_process_asker(TableJudge(answers), PROMPTS, store, 8)
    run = run_judge(negatives, ask, store, {"judge": "t", "prompt_set": "negrefine"}, policy)
    assert run.labels.column("reason").to_pylist() == [reason]
    assert run.counts["invalid_answers"] == 1
    assert run.decisions.column("answer").to_pylist()[0] == "invalid"


def test_parse_yes_no_is_three_way() -> None:
    assert [parse_yes_no(t) for t in ("Yes.", "yes, it is", "No", "no.", "The answer", "")] == [
        True, True, False, False, None, None,
    ]  # fmt: skip


def test_interrupted_filter_reasks_only_unanswered_questions(tmp_path: Path) -> None:
    labels, nearest, answers = _random_problem(random.Random(7), 120)
    first = TableJudge(answers, fail_after=96)
    with pytest.raises(RuntimeError, match="engine died"):
        filter_labels(
            labels,
            nearest,
            in_process_asker(first, PROMPTS, AnswerStore(tmp_path), 32),
            AnswerStore(tmp_path),
            policy="keep",
        )
    store = AnswerStore(tmp_path)  # a new process: only persisted answers survive
    assert len(store.answers) == 96
    second = TableJudge(answers)
    _, asked, _ = filter_labels(
        labels, nearest, in_process_asker(second, PROMPTS, store, 32), store, policy="keep"
    )
    assert not set(first.asked) & set(second.asked)
    assert sorted(first.asked + second.asked) == sorted({q.qid for q in asked})


LOG = """\
external carotid artery | matchstick | \n\
external carotid artery | scabbard | \n\
genus ginkgo | proper noun \n\
smooth aster | dandelion | \n\
smooth aster | daisy | subcategory \n\
biosafety level  | daisy | \n\
tench | tench | the same \n\
---------------------------------------------
n_proper: 1
n_same: 1
n_subcatgeory: 1
"""


def test_replay_judge_reads_a_negrefine_log(tmp_path: Path) -> None:
    parsed = parse_decision_log(LOG.splitlines())
    assert parsed[question_id("proper", "genus ginkgo")][0] is True
    assert parsed[question_id("proper", "smooth aster")][0] is False
    assert parsed[question_id("subcategory", "smooth aster", "daisy")][0] is True
    assert parsed[question_id("subcategory", "biosafety level ", "daisy")][0] is False  # trailing space kept
    assert question_id("subcategory", "tench", "tench") not in parsed  # "the same" asks no LLM
    log = tmp_path / "llm_process_noun.txt"
    log.write_text(LOG)
    judge = ReplayJudge([log])
    qs = [
        proper_question("genus ginkgo"),
        *subcategory_questions("smooth aster", ["daisy"]),
        proper_question("unseen"),
    ]
    assert [a.yes for a in judge.answer(qs, PROMPTS)] == [True, True, None]


def test_cohen_kappa_by_hand() -> None:
    a = [True, True, False, False, True, False]
    b = [True, False, False, False, True, True]
    # p_o = 4/6; both say yes half the time: p_e = 0.25 + 0.25 = 0.5; kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert cohen_kappa(a, b) == pytest.approx(1 / 3)
    assert cohen_kappa(a, a) == 1.0


def test_judge_comparison(tmp_path: Path) -> None:
    labels, nearest, answers = _random_problem(random.Random(3), 60)
    flipped = {q: (not v) if q.startswith(("0", "1", "2", "3")) else v for q, v in answers.items()}
    negatives = pa.table({"label": labels, "pos": ["noun"] * 60, "nearest_id_labels": nearest})
    runs = {}
    for name, table in (("a", answers), ("b", flipped)):
        store = AnswerStore(tmp_path / name)
        run = run_judge(
            negatives,
            in_process_asker(TableJudge(table), PROMPTS, store, 16),
            store,
            {"judge": name, "prompt_set": "x"},
            "keep",
        )
        runs[name] = (run.decisions, run.labels)
    comparison = compare_judges(runs)
    pair = comparison["pairs"]["a vs b"]
    assert 0 < pair["proper"]["agreement"] < 1 and pair["proper"]["questions"] == 60
    assert comparison["counts"]["a"]["kept"] + comparison["counts"]["a"]["proper"] <= 60
    same_again = compare_judges({"a": runs["a"], "a2": runs["a"]})["pairs"]["a vs a2"]
    assert same_again["proper"]["kappa"] == 1.0 and same_again["removed_only_by_first"]["count"] == 0


def _imported(modules: str, heavy: tuple[str, ...]) -> list[str]:
    import subprocess
    import sys

    code = (
        f"import sys, {modules}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules if m.split('.')[0] in {heavy!r}}}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_filter_stage_imports_neither_open_clip_nor_torchvision() -> None:
    """vLLM's CPU build cannot live beside torchvision, and its environment has no open_clip,
    scikit-learn, matplotlib or scipy: the CLI (which imports every stage module) and the filter
    stage must start without them. torch is there (vLLM needs it)."""
    cli = (
        "negrefine_ray.cli, negrefine_ray.stages.filter, negrefine_ray.judges.actor_pool, "
        "negrefine_ray.judges.vllm"
    )
    heavy = ("open_clip", "torchvision", "transformers", "vllm", "sklearn", "matplotlib", "scipy")
    assert _imported(cli, heavy) == []
    judges = (
        "negrefine_ray.stages.filter, negrefine_ray.judges.actor_pool, negrefine_ray.judges.vllm, "
        "negrefine_ray.judges.llm, negrefine_ray.judges.transformers, negrefine_ray.judges.gguf, "
        "negrefine_ray.judges.fake"
    )
    assert _imported(judges, (*heavy, "torch")) == []  # the filter stage itself needs no torch either
