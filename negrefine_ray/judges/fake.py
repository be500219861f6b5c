"""The `fake` backend: a deterministic stand-in for an LLM engine, so the judge actor, the Ray asker
and the filter stage run in the default CPU test suite without torch or transformers. Its answers
are meaningless; they depend only on what a real engine's answers depend on.

P(yes) = (h + 0.5) / 16**12, h the first 12 hex digits of sha256(model, chat): uniform in (0, 1),
the same for the same prompt in any batch, process or actor, and independent of the seed (as a real
logprob pass is). generate mode: "Yes", "No" or "Maybe" (invalid) from sha256(model, seed, chat).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from negrefine_ray.judges.base import Chat, Usage

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig

GENERATED = ("Yes", "No", "Maybe")  # "Maybe" parses as invalid


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def fake_p_yes(model: str, chat: Chat) -> float:
    """The fake engine's P(yes) for one chat (see the module docstring)."""
    return (int(_digest(model, chat)[:12], 16) + 0.5) / 16**12


class FakeBackend:
    """A `Backend` that loads nothing; `cfg.model` names the fake "model" and changes its answers."""

    def __init__(self, cfg: JudgeConfig, seed: int = 0) -> None:
        self.model, self.seed = cfg.model, seed
        self.usage = Usage()  # "tokens" are whitespace-separated words here: there is no tokenizer

    def _count(self, chats: Sequence[Chat]) -> None:
        self.usage.prompt_tokens += sum(len(m["content"].split()) for c in chats for m in c)

    def yes_probabilities(self, chats: Sequence[Chat]) -> list[float]:
        self._count(chats)
        return [fake_p_yes(self.model, c) for c in chats]

    def generate(self, chats: Sequence[Chat], max_new_tokens: int, seed: int) -> list[str]:
        self._count(chats)
        texts = [GENERATED[int(_digest(self.model, seed, c)[:8], 16) % len(GENERATED)] for c in chats]
        self.usage.generated_tokens += sum(len(t.split()) for t in texts)
        return texts
