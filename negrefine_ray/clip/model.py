"""CLIP loading through open_clip: architecture from open_clip's registry, weights from a pretrained
tag, a local checkpoint file, or random initialisation ("none").

The weights' identity (the tag, the checkpoint's sha256, or the init seed) is part of every cache key
built on the model's outputs. The package registers its tiny test architectures (`nr-tiny-vit*`) in
open_clip's own registry; it adds no registry of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from negrefine_ray.config import ModelConfig
from negrefine_ray.errors import NegRefineError, unknown_name
from negrefine_ray.runfolder.atomic import file_sha256

CONFIG_DIR = Path(__file__).parents[1] / "model_configs"
RANDOM_INIT = "none"
_registered = False


def register_bundled_configs() -> None:
    """Add the package's tiny architectures to open_clip's model-config registry (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


@dataclass(frozen=True)
class WeightsRef:
    """Where the weights come from: kind 'tag', 'file' or 'random', and a content identity.
    `quick_gelu`: the weights were trained with QuickGELU but the architecture's config has GELU, so
    the model is built with QuickGELU (OpenAI's weights under `ViT-B-16` rather than
    `ViT-B-16-quickgelu`: open_clip would build GELU and only warn of the mismatch)."""

    kind: str
    value: str
    identity: str
    quick_gelu: bool = False

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


def resolve_weights(cfg: ModelConfig) -> WeightsRef:
    """Classify `model.pretrained` and compute its identity, failing early on bad values."""
    import open_clip

    register_bundled_configs()
    if cfg.arch not in open_clip.list_models():
        raise unknown_name("CLIP architecture (model.arch)", cfg.arch, open_clip.list_models())
    value = cfg.pretrained
    if value.lower() == RANDOM_INIT:
        return WeightsRef("random", RANDOM_INIT, f"random-init-seed{cfg.init_seed}")
    path = Path(value).expanduser()
    if path.suffix or "/" in value or path.exists():
        if not path.is_file():
            raise NegRefineError(
                f"model.pretrained = {value!r} looks like a checkpoint path but no such file exists; "
                f"give an existing checkpoint file, an open_clip tag for {cfg.arch} or 'none'."
            )
        return WeightsRef("file", str(path.resolve()), f"sha256:{file_sha256(path)}")
    tags = open_clip.list_pretrained_tags_by_model(cfg.arch)
    if value not in tags:
        raise unknown_name(f"pretrained tag for {cfg.arch} (model.pretrained)", value, [*tags, "none"])
    trained = bool(open_clip.get_pretrained_cfg(cfg.arch, value).get("quick_gelu", False))
    built = bool((open_clip.get_model_config(cfg.arch) or {}).get("quick_gelu", False))
    if trained and not built:  # the activation the weights were trained with, as the references' clip.load
        return WeightsRef("tag", value, f"open_clip:{cfg.arch}:{value}:quickgelu", quick_gelu=True)
    return WeightsRef("tag", value, f"open_clip:{cfg.arch}:{value}")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise NegRefineError("model.device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    return device


_SAFETENSORS_MAX_HEADER = 100 * 1024**2  # safetensors' own limit on the JSON header


def check_checkpoint(path: Path) -> None:
    """Read a checkpoint's header, not its tensors, and raise a NegRefineError naming the file and the
    fix when it is not a readable .safetensors, torch zip or legacy torch pickle file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        problem = ""
        if path.suffix == ".safetensors":
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= min(size - 8, _SAFETENSORS_MAX_HEADER):
                problem = f"its header length field ({n}) does not fit a {size:,}-byte file"
            else:
                try:
                    header = json.loads(fh.read(n))
                    problem = "" if isinstance(header, dict) else "its header is not a JSON object"
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    problem = f"its header is not JSON ({exc})"
        elif head[:4] == b"PK\x03\x04":
            try:
                zipfile.ZipFile(path).close()  # reads the central directory at the end of the file
            except zipfile.BadZipFile as exc:
                problem = f"it is a truncated or damaged torch zip file ({exc})"
        elif head[:1] != b"\x80":  # legacy torch.save: a pickle stream
            problem = "it is neither a .safetensors file nor a torch.save file"
    if problem:
        raise NegRefineError(
            f"Checkpoint {path} (model.pretrained) is unreadable: {problem}. Re-download or re-save it "
            f"(torch.save or safetensors), or set model.pretrained to an open_clip tag or 'none'."
        )


def _load_file(model: torch.nn.Module, arch: str, path: str) -> None:
    import open_clip
    from safetensors import SafetensorError

    check_checkpoint(Path(path))
    try:
        open_clip.load_checkpoint(model, path, strict=True)  # type: ignore[arg-type]
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, SafetensorError) as exc:
        raise NegRefineError(
            f"Checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); it is truncated or not "
            f"a torch/safetensors state dict. Re-download or re-save it."
        ) from exc
    except RuntimeError as exc:
        text = str(exc)
        if "state_dict" in text or "size mismatch" in text or "Missing key" in text:
            raise NegRefineError(
                f"Checkpoint {path} does not match architecture '{arch}': {text[:500]}. "
                f"Set model.arch to the architecture the checkpoint was saved from."
            ) from exc
        raise NegRefineError(f"Checkpoint {path} could not be loaded: {text[:500]}") from exc


def resolve_precision(device: str, precision: str) -> str:
    """The precision inference runs at on `device`: `precision` (model.precision, applied by
    `autocast`) on CUDA, "fp32" on CPU whatever was asked. Cache keys embed this string, so every
    stage and actor resolves it here."""
    return precision if str(device).startswith("cuda") else "fp32"


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast to fp16/bf16 on CUDA as `resolve_precision` decides; a no-op at fp32."""
    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if resolved == "fp16" else torch.bfloat16)


class _NoRandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning. Random
    initialisation is what model.pretrained = "none" asks for (and a weights file follows it); the
    driver says so once per run (pipeline.run_pipeline), not every process that builds the model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init() -> Any:
    root, notice = logging.getLogger(), _NoRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def create_clip(cfg: ModelConfig, device: str = "cpu") -> tuple[torch.nn.Module, Any, WeightsRef]:
    """Build the model (eval mode, fp32 on `device`) and its open_clip image preprocessing.

    Returns (model, preprocess, weights). Inference runs under `autocast(device, cfg.precision)`.
    """
    import open_clip

    weights = resolve_weights(cfg)
    if weights.kind == "tag":
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.arch, pretrained=weights.value, device=device, force_quick_gelu=weights.quick_gelu
            )
        except Exception as exc:  # network and hub errors come in many types; re-raised with a fix
            raise NegRefineError(
                f"Could not obtain open_clip weights '{weights.value}' for {cfg.arch}: "
                f"{type(exc).__name__}: {exc}. On a machine without internet, download the checkpoint "
                f"elsewhere and set model.pretrained to its local path."
            ) from exc
    else:
        torch.manual_seed(cfg.init_seed)  # random init is reproducible from model.init_seed
        with _quiet_random_init():
            model, _, preprocess = open_clip.create_model_and_transforms(cfg.arch, pretrained=None)
        if weights.kind == "file":
            _load_file(model, cfg.arch, weights.value)
        model = model.to(device)
    model.eval()
    return model, preprocess, weights


def get_tokenizer(arch: str) -> Any:
    import open_clip

    register_bundled_configs()
    return open_clip.get_tokenizer(arch)
