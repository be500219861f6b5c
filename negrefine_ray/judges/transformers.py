"""The `transformers` backend of the LLM judge: a causal LM answering padded batches, one forward
pass each, on CPU or GPU; the prompts' shared prefix (system prompt, chat markup, question opening)
runs once and its key/value cache is reused. torch and transformers are imported inside the class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from negrefine_ray.errors import NegRefineError
from negrefine_ray.judges.base import Chat, Usage
from negrefine_ray.judges.gguf import dense_checkpoint, pretrained_location, resolve_model
from negrefine_ray.judges.llm import MIN_SHARED_PREFIX, common_prefix_length, p_yes, yes_no_token_ids

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig


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


def _load(cfg: JudgeConfig, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(cfg.model)
    if source.endswith(".gguf"):
        source = str(dense_checkpoint(source))  # de-quantised once per node, then read in seconds
    path, kwargs = pretrained_location(source)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(cfg, device), **kwargs)
    return model, tokenizer


class TransformersBackend:
    """A transformers causal LM. Prompts are sorted by length and left-padded in batches, with
    position ids from the attention mask so a padded prompt scores exactly as it would alone."""

    def __init__(self, cfg: JudgeConfig, seed: int = 0, *, model: Any = None, tokenizer: Any = None) -> None:
        """Load `cfg.model`, or wrap an already built `model` and `tokenizer` (benchmarks do, to time
        random weights of a large model's shape). `seed` is unused: generate() takes its own."""
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
        self.usage = Usage()

    def _encode(self, chats: Sequence[Chat]) -> list[list[int]]:
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
        ]
        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        self.usage.prompt_tokens += sum(map(len, ids))
        return ids

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

    def yes_probabilities(self, chats: Sequence[Chat]) -> list[float]:
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

    def generate(self, chats: Sequence[Chat], max_new_tokens: int, seed: int) -> list[str]:
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
                self.usage.generated_tokens += int((new != self.tokenizer.pad_token_id).sum())
                for row, i in enumerate(idx):
                    out[i] = self.tokenizer.decode(new[row], skip_special_tokens=True)
        return out
