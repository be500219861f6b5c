"""LLM judges for NegFilter, independent of the engine: chat prompts, the Yes/No token variants,
P(yes) from next-token log-probabilities, and `LLMJudge`, which asks any `Backend` (transformers.py,
vllm.py, fake.py) in this process. Imports no torch, transformers or vllm.

Two decoding modes. `logprob` (default): one forward pass, P(yes) = sum of the probabilities of the
model's single-token Yes variants over those of the Yes and No variants; "yes" iff P(yes) > threshold.
`generate` reproduces the reference: free generation with the checkpoint's own generation settings,
"yes" iff the text starts with "yes" (case-insensitive), an answer starting with neither is invalid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from negrefine_ray.core.negfilter import PromptSet, Question
from negrefine_ray.errors import NegRefineError
from negrefine_ray.judges import make_backend
from negrefine_ray.judges.base import Answer, Backend, Chat, parse_yes_no

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig

YES_VARIANTS = ("Yes", "yes", "YES", " Yes", " yes", " YES")
NO_VARIANTS = ("No", "no", "NO", " No", " no", " NO")
MIN_SHARED_PREFIX = 8  # tokens; below this, reusing the prefix's cache saves too little


def chat(question: Question, prompts: PromptSet, system: str = "system-role") -> Chat:
    """The question as a chat: the system prompt as a system turn (the reference), or with
    `system = "in-user-turn"` placed before the question in the user turn, for chat templates that
    refuse a system role (gemma-2's raises "System role not supported")."""
    if system == "in-user-turn":
        return [{"role": "user", "content": f"{prompts.system}\n\n{question.user_prompt(prompts)}"}]
    return [
        {"role": "system", "content": prompts.system},
        {"role": "user", "content": question.user_prompt(prompts)},
    ]


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids of the single-token spellings of Yes and No (multi-token spellings are skipped)."""

    def single(variants: Sequence[str]) -> list[int]:
        ids = [tokenizer.encode(v, add_special_tokens=False) for v in variants]
        return sorted({i[0] for i in ids if len(i) == 1})

    yes, no = single(YES_VARIANTS), single(NO_VARIANTS)
    if not yes or not no:
        raise NegRefineError("The judge's tokenizer has no single-token 'Yes'/'No'; use mode = 'generate'.")
    return yes, no


def p_yes(yes_logprobs: Sequence[float], no_logprobs: Sequence[float]) -> float:
    """P(yes) = Σ exp(yes) / (Σ exp(yes) + Σ exp(no)), computed stably; -inf entries allowed."""
    values = [*yes_logprobs, *no_logprobs]
    top = max(values)
    if top == -math.inf:
        return math.nan
    mass_yes = sum(math.exp(v - top) for v in yes_logprobs)
    mass_no = sum(math.exp(v - top) for v in no_logprobs)
    return mass_yes / (mass_yes + mass_no)


def common_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Tokens all prompts share at the start, leaving at least one token of each to run."""
    if not ids:
        return 0
    limit = min(len(i) for i in ids) - 1
    first = ids[0]
    n = 0
    while n < limit and all(i[n] == first[n] for i in ids):
        n += 1
    return n


def llm_identity(cfg: JudgeConfig, seed: int) -> dict[str, Any]:
    """What determines an LLM judge's raw answers (thresholds only act on them later)."""
    ident: dict[str, Any] = {"backend": cfg.backend, "model": cfg.model, "mode": cfg.mode, "dtype": cfg.dtype}
    if cfg.system_prompt != "system-role":  # the default leaves earlier answer stores valid
        ident["system_prompt"] = cfg.system_prompt
    if cfg.mode == "generate":
        ident.update(max_new_tokens=cfg.max_new_tokens, seed=seed)
    return ident


def answer_with(
    backend: Backend, questions: Sequence[Question], prompts: PromptSet, cfg: JudgeConfig, seed: int
) -> list[Answer]:
    """Ask `questions` in one backend call; latency is the call's time shared out per question."""
    chats = [chat(q, prompts, cfg.system_prompt) for q in questions]
    t0 = time.perf_counter()
    if cfg.mode == "logprob":
        probs = backend.yes_probabilities(chats)
        each = (time.perf_counter() - t0) / max(len(questions), 1)
        return [
            Answer(q.qid, None if math.isnan(p) else p > cfg.threshold, p_yes=p, latency_s=each)
            for q, p in zip(questions, probs, strict=True)
        ]
    texts = backend.generate(chats, cfg.max_new_tokens, seed)
    each = (time.perf_counter() - t0) / max(len(questions), 1)
    return [
        Answer(q.qid, parse_yes_no(t), raw=t, latency_s=each) for q, t in zip(questions, texts, strict=True)
    ]


class LLMJudge:
    """An LLM judge run in this process (the Ray actor pool in judges/actor_pool.py wraps the same
    backend); the model loads on first use."""

    def __init__(self, cfg: JudgeConfig, seed: int = 0) -> None:
        self.name, self.cfg, self.seed = cfg.name, cfg, seed
        self._backend: Backend | None = None

    def identity(self) -> dict[str, Any]:
        return llm_identity(self.cfg, self.seed)

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]:
        if self._backend is None:
            self._backend = make_backend(self.cfg, self.seed)
        return answer_with(self._backend, questions, prompts, self.cfg, self.seed)
