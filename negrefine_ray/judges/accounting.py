"""What each judge cost in one filter run (the manifest's and the report's accounting): questions
asked and answered from the store, tokens, wall time and GPU-seconds, duplicates, and the P(yes)
histogram against the judge's threshold.

`asked` counts the questions sent to the judge in this run (the store answered the others);
`duplicates` counts answers that arrived for a question already answered (a batch Ray Data retried
after its first result had come back) and were dropped. Ray Data's own task retries and actor
restarts replace lost batches without a trace in the answers, so they are not counted here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HISTOGRAM_BINS = 10


@dataclass
class JudgeAccount:
    name: str
    asked: int = 0
    from_store: int = 0
    duplicates: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    actors: int = 0
    gpus: float = 0.0  # GPUs the judge's pool held while it answered
    busy_s: float = 0.0  # seconds its pools ran (the GPU-seconds are busy_s x gpus)
    started: float = field(default_factory=time.time)  # unix times: when the judge began and ended,
    finished: float = 0.0
    first_answer: float = 0.0  # and when its first and last answers arrived (0: none asked)
    last_answer: float = 0.0

    def answered(self, n: int) -> None:
        """`n` answers arrived now."""
        if n:
            now = time.time()
            self.first_answer = self.first_answer or now
            self.last_answer = now

    def stats(self) -> dict[str, Any]:
        wall = max(self.finished - self.started, 0.0)
        busy = self.busy_s or wall

        def per_s(n: float) -> float:
            return round(n / busy, 2) if busy > 0 else 0.0

        return {
            "questions_sent": self.asked,
            "answers_from_store": self.from_store,
            "duplicates_dropped": self.duplicates,
            "questions_per_s": per_s(self.asked),
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "prompt_tokens_per_s": per_s(self.prompt_tokens),
            "generated_tokens_per_s": per_s(self.generated_tokens),
            "actors": self.actors,
            "gpus": self.gpus,
            "wall_s": round(wall, 3),
            "gpu_seconds": round(busy * self.gpus, 3),
            "started": round(self.started, 3),
            "finished": round(self.finished, 3),
            "first_answer": round(self.first_answer, 3),
            "last_answer": round(self.last_answer, 3),
        }


def p_yes_histogram(values: Iterable[float | None], threshold: float) -> dict[str, Any]:
    """Counts of P(yes) in HISTOGRAM_BINS equal bins over [0, 1] (the last one closed), how many lie
    above `threshold` (decided "yes"), and how many had none (generate mode, invalid answers)."""
    counts = [0] * HISTOGRAM_BINS
    above = missing = 0
    for v in values:
        if v is None or math.isnan(v):
            missing += 1
            continue
        counts[min(int(v * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
        above += v > threshold
    return {
        "edges": [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)],
        "counts": counts,
        "threshold": threshold,
        "above_threshold": above,
        "without_p_yes": missing,
    }


def overlapping(accounts: Iterable[JudgeAccount]) -> list[tuple[str, str]]:
    """Pairs of judges that were answering at the same time: their [first answer, last answer]
    intervals overlap (judges that asked nothing never overlap)."""
    items = sorted((a for a in accounts if a.first_answer), key=lambda a: a.first_answer)
    return [
        (a.name, b.name)
        for i, a in enumerate(items)
        for b in items[i + 1 :]
        if b.first_answer < a.last_answer and a.first_answer < b.last_answer
    ]
