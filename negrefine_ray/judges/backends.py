"""The judge backends as data: each backend's name, the "module:Class" that implements it, how it runs
and the `[[judges]]` keys it reads. It imports nothing of the package, so the config takes from here
both its backend choices and each backend's accepted keys without importing a judge (or itself being
imported by one): the judges sit above the config, this table below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The keys of every `[[judges]]` entry, whatever its backend.
COMMON_OPTIONS = ("name", "backend")
# What every LLM backend reads through LLMJudge (judges/llm.py: the model and how it is asked) and
# the filter stage's Ray actor pool (judges/actor_pool.py: the pool's shape). The pool also reads
# tensor_parallel_size, GPUs per replica, which only vLLM splits a model over (others keep 1).
LLM_OPTIONS = (
    "model",
    "mode",
    "threshold",
    "dtype",
    "max_new_tokens",
    "system_prompt",
    "device",
    "batch_size",
    "num_actors",
    "resource",
)


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives, how it runs and what it reads. `kind` "llm": a `Backend` behind
    `LLMJudge`, asked on a Ray actor pool by the filter stage; "judge": a `Judge` answered in the
    driver process. `options`: the `JudgeConfig` fields it reads besides `name` and `backend`; loading
    a job refuses any other key set to other than its default (config/checks.py)."""

    target: str  # "package.module:Class"
    kind: Literal["llm", "judge"]
    options: tuple[str, ...] = ()

    @property
    def on_ray(self) -> bool:
        """True when the filter stage asks this backend through a Ray actor pool (needs Ray)."""
        return self.kind == "llm"

    @property
    def accepted(self) -> tuple[str, ...]:
        """Every `[[judges]]` key this backend reads: the common ones, then its options."""
        return (*COMMON_OPTIONS, *self.options)


BACKENDS: dict[str, BackendSpec] = {
    "wordnet": BackendSpec(
        "negrefine_ray.judges.wordnet:WordNetJudge", "judge", ("proper_rule", "compound_head")
    ),
    "replay": BackendSpec("negrefine_ray.judges.replay:ReplayJudge", "judge", ("log_noun", "log_adj")),
    "transformers": BackendSpec(
        "negrefine_ray.judges.transformers:TransformersBackend", "llm", (*LLM_OPTIONS, "prefix_cache")
    ),
    "vllm": BackendSpec(
        "negrefine_ray.judges.vllm:VLLMBackend",
        "llm",
        (*LLM_OPTIONS, "max_model_len", "gpu_memory_utilization", "tensor_parallel_size"),
    ),
    "fake": BackendSpec("negrefine_ray.judges.fake:FakeBackend", "llm", LLM_OPTIONS),
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
