"""What every judge shares: the `Answer` record, the `Judge` protocol (questions in, answers out),
the `Backend` protocol an LLM engine implements (chats in, P(yes) or text out), and the three-way
parse of a generated answer. Pure Python: no model, no Ray."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from negrefine_ray.core.negfilter import PromptSet, Question

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig

Chat = list[dict[str, str]]  # [{"role": "system", "content": ...}, {"role": "user", "content": ...}]


@dataclass(frozen=True)
class Answer:
    """A judge's answer. `yes` is None when the answer is invalid (neither yes nor no, or missing)."""

    qid: str
    yes: bool | None
    p_yes: float | None = None  # logprob mode: P(yes) over the Yes/No token variants
    raw: str = ""  # generate mode: the generated text; replay: the log line
    latency_s: float = 0.0


@dataclass
class Usage:
    """Tokens an LLM backend has processed since it was built (the judges' accounting): prompt
    tokens read and tokens generated (logprob mode generates none: it reads one next-token
    distribution per prompt). Backends that do not tokenize (wordnet, replay, fake) count nothing."""

    prompt_tokens: int = 0
    generated_tokens: int = 0


class Judge(Protocol):
    name: str

    def identity(self) -> dict[str, Any]:
        """Everything that determines this judge's answers (the answer cache's key)."""
        ...

    def answer(self, questions: Sequence[Question], prompts: PromptSet) -> list[Answer]: ...


class Backend(Protocol):
    """An LLM engine behind `LLMJudge` and the Ray judge actors. Built as `Backend(cfg, seed)` by
    `negrefine_ray.judges.make_backend`; loads its model in `__init__`."""

    usage: Usage

    def __init__(self, cfg: JudgeConfig, seed: int) -> None: ...

    def yes_probabilities(self, chats: Sequence[Chat]) -> list[float]:
        """P(yes) of each chat's first answer token; nan where neither Yes nor No is possible."""
        ...

    def generate(self, chats: Sequence[Chat], max_new_tokens: int, seed: int) -> list[str]: ...


def parse_yes_no(text: str) -> bool | None:
    """The reference's rule, `text.lower().startswith("yes")`, made three-way: an answer that starts
    with neither "yes" nor "no" is invalid (None) instead of silently counting as "no"."""
    low = text.lower()
    if low.startswith("yes"):
        return True
    if low.startswith("no"):
        return False
    return None
