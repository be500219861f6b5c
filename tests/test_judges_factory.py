"""The judge factory (negrefine_ray.judges): every backend name resolves, an unknown one gets a
did-you-mean, resolving loads no engine; the fake backend drives the judge actor and the Ray asker
with answers persisted through the answer store; and the WordNet judge on words whose answers are
known from WordNet 3.0."""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from negrefine_ray.config import JudgeConfig, build_config
from negrefine_ray.core.negfilter import PROMPT_SETS, proper_question, subcategory_questions
from negrefine_ray.data.wordnet import WordNet
from negrefine_ray.errors import ConfigError, NegRefineError
from negrefine_ray.judges import (
    BACKEND_NAMES,
    BACKENDS,
    backend_class,
    backend_spec,
    make_backend,
    make_judge,
)
from negrefine_ray.judges.actor_pool import JudgeActor, _answers, ray_asker
from negrefine_ray.judges.base import parse_yes_no
from negrefine_ray.judges.fake import FakeBackend, fake_p_yes
from negrefine_ray.judges.llm import LLMJudge, chat
from negrefine_ray.judges.store import AnswerStore
from negrefine_ray.judges.wordnet import WordNetJudge
from negrefine_ray.stages._filter_judging import in_process_asker, run_judge

pytest_plugins = ("conftest_wordnet",)

PROMPTS = PROMPT_SETS["negrefine"]
FAKE = JudgeConfig(name="fake", backend="fake", model="fake-a", batch_size=4, device="cpu")
QUESTIONS = [
    proper_question("costa rica"),
    proper_question("gooey landscape"),
    *subcategory_questions("african daisy", ["daisy", "tench", "goldfish"]),
    *subcategory_questions("minuteman", ["missile"]),
]


# ------------------------------------------------------------------------------------------ factory


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_every_backend_name_resolves_to_its_class(name: str) -> None:
    spec = backend_spec(name)
    cls = backend_class(name)
    assert f"{cls.__module__}:{cls.__name__}" == spec.target
    if spec.kind == "llm":  # a Backend: built as cls(cfg, seed), asked on Ray by the filter stage
        assert spec.on_ray and callable(cls.yes_probabilities) and callable(cls.generate)
    else:  # a Judge answered in the driver process
        assert not spec.on_ray and callable(cls.from_config) and callable(cls.answer)


def test_the_backends_are_the_config_choices() -> None:
    assert set(BACKENDS) == {"wordnet", "replay", "transformers", "vllm", "fake"}
    backend = next(f for f in dataclasses.fields(JudgeConfig) if f.name == "backend")
    assert backend.metadata["choices"] == BACKEND_NAMES


def test_an_unknown_backend_suggests_the_closest_name() -> None:
    with pytest.raises(NegRefineError, match=r"Unknown judge backend 'vlm'\. Did you mean 'vllm'\? Known: "):
        backend_spec("vlm")
    with pytest.raises(NegRefineError, match="Did you mean 'transformers'"):
        make_judge(dataclasses.replace(FAKE, backend="transformer"), seed=0, cache_dir=Path("."))
    job = {"filter": {"judges": ["x"]}, "judges": [{"name": "x", "backend": "wordnte"}]}
    message = r"judges\.x\.backend = 'wordnte' is not allowed\. Did you mean 'wordnet'\?"
    with pytest.raises(ConfigError, match=message):
        build_config(job)


def test_make_backend_refuses_a_judge_that_is_no_llm() -> None:
    with pytest.raises(NegRefineError, match=r"backend 'replay' is not an LLM backend; LLM backends: "):
        make_backend(dataclasses.replace(FAKE, backend="replay"), seed=0)


def test_resolving_every_backend_loads_no_engine() -> None:
    """The factory imports a backend's module only; torch, transformers and vllm load in the class."""
    code = (
        "import sys\nfrom negrefine_ray.judges import BACKENDS, backend_class\n"
        "[backend_class(n) for n in BACKENDS]\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'vllm'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------- fake


def test_fake_backend_is_deterministic_and_batch_independent() -> None:
    chats = [chat(q, PROMPTS) for q in QUESTIONS]
    backend = make_backend(FAKE, seed=0)
    assert isinstance(backend, FakeBackend)
    probs = backend.yes_probabilities(chats)
    assert all(0.0 < p < 1.0 for p in probs) and len(set(probs)) == len(probs)
    assert backend.yes_probabilities(chats[::-1]) == probs[::-1]
    assert make_backend(FAKE, seed=7).yes_probabilities(chats) == probs  # logprob mode ignores the seed
    other = make_backend(dataclasses.replace(FAKE, model="fake-b"), seed=0).yes_probabilities(chats)
    assert other != probs  # another "model", other answers
    texts = backend.generate(chats, max_new_tokens=4, seed=0)
    assert set(texts) <= {"Yes", "No", "Maybe"} and backend.generate(chats, 4, 0) == texts


def test_fake_llm_judge_from_the_factory() -> None:
    judge = make_judge(FAKE, seed=3, cache_dir=Path("."))
    assert isinstance(judge, LLMJudge)
    assert judge.identity() == {"backend": "fake", "model": "fake-a", "mode": "logprob", "dtype": "auto"}
    answers = judge.answer(QUESTIONS, PROMPTS)
    expected = [fake_p_yes("fake-a", chat(q, PROMPTS)) for q in QUESTIONS]
    assert [a.p_yes for a in answers] == expected
    assert [a.yes for a in answers] == [p > FAKE.threshold for p in expected]
    generate = make_judge(dataclasses.replace(FAKE, mode="generate"), seed=3, cache_dir=Path("."))
    assert generate.identity()["seed"] == 3
    assert [a.yes for a in generate.answer(QUESTIONS, PROMPTS)] == [
        parse_yes_no(a.raw) for a in generate.answer(QUESTIONS, PROMPTS)
    ]


def test_judge_actor_answers_a_batch_with_the_fake_backend() -> None:
    actor = JudgeActor(FAKE, PROMPTS, seed=0)
    batch = {
        "qid": np.array([q.qid for q in QUESTIONS], dtype=object),
        "kind": np.array([q.kind for q in QUESTIONS], dtype=object),
        "label": np.array([q.label for q in QUESTIONS], dtype=object),
        "id_label": np.array([q.id_label for q in QUESTIONS], dtype=object),
        "rank": np.array([q.rank for q in QUESTIONS]),
    }
    out = actor(batch)
    assert set(out) == {"qid", "yes", "p_yes", "raw", "latency_s", "prompt_tokens", "generated_tokens"}
    assert out["yes"].dtype == np.int8
    # the batch's tokens (the fake backend counts words) on its first row, so sums stay exact
    words = sum(len(m["content"].split()) for q in QUESTIONS for m in chat(q, PROMPTS))
    assert out["prompt_tokens"].tolist() == [words] + [0] * (len(QUESTIONS) - 1)
    assert out["generated_tokens"].sum() == 0  # logprob mode generates nothing
    local = make_judge(FAKE, seed=0, cache_dir=Path(".")).answer(QUESTIONS, PROMPTS)
    assert [(a.qid, a.yes, a.p_yes) for a in _answers(out)] == [(a.qid, a.yes, a.p_yes) for a in local]


@pytest.mark.ray
def test_ray_asker_with_the_fake_backend_decides_as_in_process(ray_session: Any, tmp_path: Path) -> None:
    """Both waves of NegFilter through one Ray actor pool of fake engines (each loaded once): the same
    decisions as the same judge in this process, every answer persisted once, and a rerun asks
    nothing."""
    rng = random.Random(5)
    labels = [f"neg{i}" for i in range(12)]
    nearest = [rng.sample([f"id{i}" for i in range(20)], 3) for _ in labels]
    negatives = pa.table({"label": labels, "pos": ["noun"] * 12, "nearest_id_labels": nearest})
    meta = {"judge": "fake", "prompt_set": "negrefine"}
    local_store = AnswerStore(tmp_path / "local")
    judge = make_judge(FAKE, seed=0, cache_dir=tmp_path)
    local = run_judge(negatives, in_process_asker(judge, PROMPTS, local_store, 5), local_store, meta, "keep")

    store = AnswerStore(tmp_path / "ray")
    two = dataclasses.replace(FAKE, num_actors=2)
    ask = ray_asker(two, PROMPTS, store, seed=0, chunk_size=5)
    loads: list[list[str]] = []

    def asking(questions: Any) -> None:  # the actors' load ids at every wave
        ask(questions)
        assert ask.pool is not None
        loads.append(ask.pool.load_ids())

    remote = run_judge(negatives, asking, store, meta, "keep")
    ask.close()
    # one set of actors for both waves: each loaded its engine once
    assert len(loads) == 2 and loads[0] == loads[1] and len(set(loads[0])) == 2
    assert remote.decisions.equals(local.decisions) and remote.labels.equals(local.labels)
    asked = remote.counts["questions_in_table"]
    assert asked > 12 and len(store.answers) == asked
    shards = sorted((tmp_path / "ray").glob("part-*.parquet"))
    assert len(shards) == math.ceil(12 / 5) + math.ceil((asked - 12) / 5)  # chunk by chunk, per wave
    reloaded = AnswerStore(tmp_path / "ray")  # a new process: only persisted answers survive
    assert {q: (a.yes, a.p_yes) for q, a in reloaded.answers.items()} == {
        q: (a.yes, a.p_yes) for q, a in local_store.answers.items()
    }
    ray_asker(FAKE, PROMPTS, reloaded, seed=0, chunk_size=5)([proper_question(label) for label in labels])
    assert sorted((tmp_path / "ray").glob("part-*.parquet")) == shards  # nothing asked again


# ------------------------------------------------------------------------------------------ wordnet


@pytest.fixture(scope="module")
def wn_reader(wordnet: WordNet) -> Any:
    return wordnet.reader


def _ask(judge: WordNetJudge, label: str, id_label: str = "") -> bool | None:
    question = proper_question(label) if not id_label else subcategory_questions(label, [id_label])[0]
    return judge.answer([question], PROMPTS)[0].yes


@pytest.mark.parametrize(
    ("label", "instance", "capitalized"),
    [
        ("costa rica", True, True),  # a country: an instance synset
        ("mount everest", True, True),
        ("paris", True, True),  # the first sense, the city, is an instance (a plant genus is another)
        ("tench", False, True),  # a fish; its synset's lemma Tinca tinca is capitalised
        ("daisy", False, False),
        ("gooey landscape", False, False),  # not a WordNet noun: "no"
    ],
)
def test_wordnet_judge_proper_nouns(wn_reader: Any, label: str, instance: bool, capitalized: bool) -> None:
    assert _ask(WordNetJudge(wn_reader), label) is instance
    assert _ask(WordNetJudge(wn_reader, proper_rule="capitalized"), label) is capitalized


@pytest.mark.parametrize(
    ("label", "id_label", "with_head", "without_head"),
    [
        ("african daisy", "daisy", True, False),  # WordNet files it under flower, not daisy
        ("african daisy", "tench", False, False),
        ("goldfish", "fish", True, True),  # a transitive hypernym
        ("goldfish", "cyprinid", True, True),
        ("black kite", "kite (bird of prey)", True, True),  # the ID label's parenthesis is dropped
    ],
)
def test_wordnet_judge_subcategories(
    wn_reader: Any, label: str, id_label: str, with_head: bool, without_head: bool
) -> None:
    assert _ask(WordNetJudge(wn_reader), label, id_label) is with_head
    assert _ask(WordNetJudge(wn_reader, compound_head=False), label, id_label) is without_head


def test_wordnet_judge_from_the_factory(wordnet: WordNet, wordnet_cache: Path) -> None:
    cfg = JudgeConfig(name="wn", backend="wordnet", compound_head=False)
    judge = make_judge(cfg, seed=0, cache_dir=wordnet_cache)
    assert isinstance(judge, WordNetJudge) and judge.name == "wn"
    assert judge.identity() == {
        "backend": "wordnet", "rules": 2, "proper_rule": "instance", "compound_head": False, "wordnet": "3.0",
    }  # fmt: skip
    answers = judge.answer(subcategory_questions("african daisy", ["daisy"]), PROMPTS)
    assert [(a.yes, a.raw) for a in answers] == [(False, "no")]
