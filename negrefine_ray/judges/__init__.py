"""NegFilter's judges, and the one place that reads a judge's `backend` name.

`BACKENDS` (judges/backends.py, a table the config reads too) maps each backend name to the
"module:Class" that implements it and the options it reads, in the manner of lm-evaluation-harness's
MODEL_MAPPING: the module is imported only when that backend is chosen, so `import
negrefine_ray.judges` loads no torch, transformers or vllm. Two kinds of backend:

- "judge": a `Judge` (judges/base.py) answered in the driver process, built by the class's
  `from_config(cfg, seed=..., cache_dir=...)`: wordnet, replay.
- "llm": a `Backend` (judges/base.py) built as `Class(cfg, seed)`, wrapped by `LLMJudge`
  (judges/llm.py) and, in the filter stage, run on a Ray actor pool (judges/actor_pool.py):
  transformers, vllm, and fake (a deterministic test double).

Adding a backend:
  1. Write `negrefine_ray/judges/<name>.py` with a class: a `Backend` (`__init__(cfg, seed)`,
     `yes_probabilities`, `generate`) for an LLM engine, or a `Judge` with a `from_config`
     classmethod for anything else. Import heavy dependencies inside the class, never at the top.
  2. Add `"<name>": BackendSpec("negrefine_ray.judges.<name>:<Class>", "llm" or "judge", options)` to
     `BACKENDS` in judges/backends.py, `options` naming the `JudgeConfig` fields the class reads (a new
     knob is a `JudgeConfig` field too). `JudgeConfig.backend` takes its choices from this mapping,
     loading a job refuses a key the backend does not read, and the filter stage asks "llm" backends
     on Ray and the others in process; nothing else lists backends.
  3. Add a case to tests/test_judges_factory.py (the name resolves, the class answers).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from negrefine_ray.errors import NegRefineError, unknown_name
from negrefine_ray.judges.backends import BACKEND_NAMES, BACKENDS, BackendSpec

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig
    from negrefine_ray.judges.base import Backend, Judge

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "BackendSpec",
    "backend_class",
    "backend_spec",
    "make_backend",
    "make_judge",
]


def backend_spec(name: str) -> BackendSpec:
    """The entry of backend `name`; an unknown name raises a NegRefineError that lists the names
    and suggests the closest ("Unknown judge backend 'vlm'. Did you mean 'vllm'?")."""
    if name not in BACKENDS:
        raise unknown_name("judge backend", name, BACKENDS)
    return BACKENDS[name]


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def backend_class(name: str) -> Any:
    """The class implementing backend `name`, importing its module now (and its dependencies)."""
    return _import(backend_spec(name).target)


def make_backend(cfg: JudgeConfig, seed: int) -> Backend:
    """The LLM engine of an "llm" backend (loads the model): what `LLMJudge` and the Ray judge
    actors wrap."""
    spec = backend_spec(cfg.backend)
    if spec.kind != "llm":
        llms = ", ".join(n for n, s in BACKENDS.items() if s.kind == "llm")
        raise NegRefineError(
            f"Judge '{cfg.name}': backend {cfg.backend!r} is not an LLM backend; LLM backends: {llms}."
        )
    backend: Backend = _import(spec.target)(cfg, seed)
    return backend


def make_judge(cfg: JudgeConfig, *, seed: int, cache_dir: Path) -> Judge:
    """The judge `cfg` describes. LLM judges load their model on first use; `seed` seeds generate
    mode and `cache_dir` holds what a judge builds once (WordNet's nltk copy)."""
    spec = backend_spec(cfg.backend)
    if spec.kind == "llm":
        llm_judge: Judge = _import("negrefine_ray.judges.llm:LLMJudge")(cfg, seed)
        return llm_judge
    judge: Judge = _import(spec.target).from_config(cfg, seed=seed, cache_dir=cache_dir)
    return judge
