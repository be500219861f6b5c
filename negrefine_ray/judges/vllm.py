"""The `vllm` backend of the LLM judge: an offline engine answering a batch of chats in one call.

The only module that imports vllm (lazily, inside the backend), so the package imports without it.
P(yes) comes from the log-probabilities of the Yes/No token variants of the first generated token:
`SamplingParams.logprob_token_ids` where the installed vLLM has it (exactly those ids), otherwise
the top-20 logprobs (ids outside the top 20 count as -inf). Prompts share the system prompt and the
question's opening, so vLLM's automatic prefix caching serves their common prefix from cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from negrefine_ray.judges.base import Chat, Usage
from negrefine_ray.judges.gguf import resolve_model
from negrefine_ray.judges.llm import p_yes, yes_no_token_ids

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig

TOP_LOGPROBS = 20  # vLLM's default max_logprobs


def _engine_dtype(cfg: JudgeConfig, on_gpu: bool) -> str:
    # On CPU, bf16 is emulated on AVX2-only machines (5x slower than fp32 measured here).
    if cfg.dtype == "auto" and not on_gpu:
        return "float32"
    return cfg.dtype


def _has_logprob_token_ids(sampling_params: Any) -> bool:
    """Feature test: `logprob_token_ids` exists in recent vLLM (0.3x), not in older releases."""
    try:
        sampling_params(max_tokens=1, logprob_token_ids=[0])
    except TypeError:
        return False
    return True


class VLLMBackend:
    """One vLLM engine (one GPU, or a tensor-parallel group of `tensor_parallel_size` GPUs)."""

    def __init__(self, cfg: JudgeConfig, seed: int, *, prefix_caching: bool = True) -> None:
        """`prefix_caching=False` only for jobs/bench/bench_filter_vllm.py's comparison."""
        import torch
        from vllm import LLM, SamplingParams

        on_gpu = torch.cuda.is_available()
        self._sampling = SamplingParams
        self.llm = LLM(
            model=resolve_model(cfg.model),
            dtype=_engine_dtype(cfg, on_gpu),
            max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enable_prefix_caching=prefix_caching,
            enforce_eager=not on_gpu,
            seed=seed,
        )
        self.yes_ids, self.no_ids = yes_no_token_ids(self.llm.get_tokenizer())
        self.exact_ids = _has_logprob_token_ids(SamplingParams)
        self.usage = Usage()

    def _count(self, outputs: Sequence[Any]) -> None:
        self.usage.prompt_tokens += sum(len(o.prompt_token_ids or ()) for o in outputs)
        self.usage.generated_tokens += sum(len(o.outputs[0].token_ids) for o in outputs)

    def _logprob_params(self) -> Any:
        if self.exact_ids:
            return self._sampling(
                max_tokens=1, temperature=0.0, logprob_token_ids=self.yes_ids + self.no_ids, detokenize=False
            )
        return self._sampling(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS, detokenize=False)

    def yes_probabilities(self, chats: Sequence[Chat]) -> list[float]:
        outputs = self.llm.chat(list(chats), self._logprob_params(), use_tqdm=False)
        self.usage.prompt_tokens += sum(len(o.prompt_token_ids or ()) for o in outputs)
        probs = []
        for output in outputs:
            first = output.outputs[0].logprobs[0]  # token id -> Logprob of the first generated token
            probs.append(
                p_yes(
                    [first[i].logprob if i in first else -math.inf for i in self.yes_ids],
                    [first[i].logprob if i in first else -math.inf for i in self.no_ids],
                )
            )
        return probs

    def generate(self, chats: Sequence[Chat], max_new_tokens: int, seed: int) -> list[str]:
        # The checkpoint's own generation settings, as the reference's bare generate() used.
        params = self.llm.get_default_sampling_params()
        params.max_tokens = max_new_tokens
        params.seed = seed
        outputs = self.llm.chat(list(chats), params, use_tqdm=False)
        self._count(outputs)
        return [o.outputs[0].text for o in outputs]
