"""Checks run before the first stage of a job: everything that can go wrong without heavy work.

`load_config` already checked types, ranges, choices and names across sections. This adds what needs
the file system or a registry, for the stages about to run only: the run and cache folders can be
written, the CLIP architecture exists in open_clip's registry and a checkpoint file's header is
readable, the ID label set resolves, and every dataset root and image list exists. A typo thus stops
the job at once, not after an hour of mining and filtering.
"""

from __future__ import annotations

import errno
import os
import tempfile
import uuid
from collections.abc import Collection
from pathlib import Path

from negrefine_ray.config import JobConfig
from negrefine_ray.errors import ConfigError, NegRefineError
from negrefine_ray.runfolder.storage import Location, ObjectPath, is_uri, location

# Stages that load the CLIP model, and those that read the ID labels or the image datasets.
CLIP_STAGES = frozenset({"embed-text", "embed-images", "score"})
LABEL_STAGES = frozenset({"corpus", "embed-text"})
IMAGE_STAGES = frozenset({"embed-images"})
# Stages that may connect to Ray (pools, tasks).
RAY_STAGES = frozenset({"embed-text", "filter", "embed-images", "score"})


def check_mining(config: JobConfig) -> None:
    """A method mining by density (DNM) has hyper-parameters for the model (mining.dnm_preset)."""
    from negrefine_ray.core.methods import METHODS
    from negrefine_ray.negatives.selection import dnm_preset

    rules = {m.mining.rule for n in config.mining.methods if (m := METHODS.get(n)) and m.mining}
    if "density" in rules:
        dnm_preset(config)


def check_writable(folder: Location, key: str) -> None:
    """Create `folder` if needed and write a probe file in it, or raise naming the key and the fix.
    An object-store folder gets a probe object, written and deleted."""
    if isinstance(folder, ObjectPath):
        probe = folder / f".write-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.write_bytes(b"")
            probe.unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{key}: cannot write in {folder}: {exc}; check the URI and the store's credentials "
                f"(environment variables, never the job file)."
            ) from exc
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
        hint = " (a read-only file system)" if exc.errno == errno.EROFS else ""
        raise ConfigError(
            f"{key}: cannot write in {folder}: {reason}{hint}; set {key} to a folder you can write to."
        ) from exc


def check_model(config: JobConfig) -> None:
    """The architecture is in open_clip's registry and a checkpoint file's header is readable."""
    from negrefine_ray.clip.model import check_checkpoint, resolve_weights

    weights = resolve_weights(config.model)
    if weights.kind == "file":
        check_checkpoint(Path(weights.value))
    check_local_features(config)


def check_local_features(config: JobConfig) -> None:
    """Methods scoring local features (GL-MCM, L-MCM) need a ViT or ModifiedResNet image tower: refused
    here, before any stage runs, from open_clip's model config (timm towers have none built)."""
    from negrefine_ray.core.glmcm import SUPPORTED
    from negrefine_ray.core.methods import METHODS

    local = [m for m in config.score.methods if m in METHODS and METHODS[m].needs_local]
    if not local:
        return
    import open_clip

    from negrefine_ray.clip.model import register_bundled_configs

    register_bundled_configs()
    vision = (open_clip.get_model_config(config.model.arch) or {}).get("vision_cfg", {})
    if not isinstance(vision.get("layers"), int | list | tuple) or vision.get("timm_model_name"):
        raise ConfigError(
            f"score.methods has {local}, which need an image tower's local features; model.arch = "
            f"{config.model.arch!r} has none this project builds. Supported: {SUPPORTED}; or remove them."
        )


def check_datasets(config: JobConfig) -> None:
    """Every dataset (preset expanded) has an existing root folder and, where it needs one, an image
    list file: the listing's own checks (data.datasets.check_dataset_paths), run up front."""
    from negrefine_ray.data.datasets import check_dataset_paths
    from negrefine_ray.data.presets import resolve_datasets

    datasets = resolve_datasets(config)
    if not datasets:
        raise ConfigError(
            "The job has no image datasets; set images.preset and images.data_root, or add [[datasets]]."
        )
    for ds in datasets:
        check_dataset_paths(ds)


def _looks_local(model: str) -> bool:
    """A judge's `model` that can only be a local path: absolute, relative to ".", under "~", a .gguf
    file, or more than one "/" (a hub id is ORG/NAME)."""
    return model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf") or model.count("/") > 1


def check_judges(config: JobConfig) -> None:
    """Each judge of filter.judges has what its backend loads: an LLM judge a model that resolves (a
    local path that exists), a replay judge its decision logs. The actors would otherwise die on it
    after the mine stage."""
    from negrefine_ray.judges.gguf import resolve_model
    from negrefine_ray.judges.roster import judge_configs

    for cfg in judge_configs(config):
        key = f"judges.{cfg.name}"
        if cfg.backend in ("transformers", "vllm"):
            try:
                model = resolve_model(cfg.model)
            except NegRefineError as exc:
                raise ConfigError(f"{key}.model: {exc}") from exc
            if _looks_local(model) and not Path(model).expanduser().exists():
                raise ConfigError(
                    f"{key}.model = {cfg.model!r} is not an existing folder or file; set it to a local "
                    f"model folder, a .gguf file or a hub id (ORG/NAME)."
                )
        elif cfg.backend == "replay":
            logs = {k: getattr(cfg, k) for k in ("log_noun", "log_adj") if getattr(cfg, k)}
            if not logs:
                raise ConfigError(f"{key} (replay) needs log_noun and/or log_adj: NegRefine's decision logs.")
            for k, value in logs.items():
                if not Path(value).expanduser().is_file():
                    raise ConfigError(f"{key}.{k} = {value!r} does not exist; set it to a decision log.")


def check_device(config: JobConfig, ray_address: str | None) -> None:
    """model.device = "cuda" on a local Ray needs a CUDA GPU on this machine (on a cluster, the
    stages' pool plans check the cluster's GPUs)."""
    from negrefine_ray.distributed.session import resolve_address

    if config.model.device != "cuda" or resolve_address(config.ray, ray_address):
        return
    import torch

    if config.ray.num_gpus == 0 or not torch.cuda.is_available():
        why = "ray.num_gpus = 0" if config.ray.num_gpus == 0 else "this machine has no CUDA GPU"
        raise ConfigError(
            f"model.device = 'cuda' but the job runs on a local Ray and {why}; set model.device = "
            f"'auto' or 'cpu', or give ray.address (or --address) of a cluster with GPUs."
        )


def check_ray_address(config: JobConfig, ray_address: str | None) -> None:
    """A given cluster address accepts connections within ray.connect_seconds, or a ConfigError names
    it (ray.init itself would retry for minutes). "auto" and "local" are left to Ray."""
    import socket
    import time

    from negrefine_ray.distributed.session import resolve_address

    address = resolve_address(config.ray, ray_address)
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"Ray address {address!r} (ray.address, --address or RAY_ADDRESS) is not HOST:PORT or "
            f"ray://HOST:PORT; use the head's GCS address, e.g. 10.0.0.1:6379."
        )
    deadline = time.monotonic() + config.ray.connect_seconds
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return
        except OSError as exc:
            error = exc
        if isinstance(error, socket.gaierror) or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    raise ConfigError(
        f"Cannot reach the Ray cluster at {address} (ray.address, --address or RAY_ADDRESS) within "
        f"{config.ray.connect_seconds:g} s: {error}; start its head (`ray start --head`) or fix the address."
    )


def preflight(config: JobConfig, stages: Collection[str], ray_address: str | None = None) -> None:
    """Check what `stages` (the stages of this invocation) need before any of them runs. The folders
    are created last, so a job stopped by a bad value leaves nothing behind."""
    try:
        if CLIP_STAGES & set(stages):
            check_model(config)
        if LABEL_STAGES & set(stages):
            from negrefine_ray.core.labels import load_id_labels

            load_id_labels(config.labels.id_labels)
        if IMAGE_STAGES & set(stages):
            check_datasets(config)
        if "filter" in stages:
            check_judges(config)
        if "mine" in stages:
            check_mining(config)
        if CLIP_STAGES & set(stages):
            check_device(config, ray_address)
        if RAY_STAGES & set(stages):
            check_ray_address(config, ray_address)
    except ConfigError:
        raise
    except NegRefineError as exc:  # the same message, classified as a configuration error
        raise ConfigError(str(exc)) from exc
    # the cache first: a refused cache folder must not leave a new run folder behind
    check_writable(config.cache_dir, "run.cache_dir")
    if is_uri(config.run.output_dir):  # the driver's working copy of an object-store run
        check_writable(Path(config.run.local_dir).expanduser(), "run.local_dir")
    check_writable(location(config.run_location), "run.output_dir")
