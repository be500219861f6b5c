"""One Ray connection per process: a local single-node Ray by default, a cluster when an address is
given (`--address`, `ray.address` in the job file, or RAY_ADDRESS, which `ray job submit` sets)."""

from __future__ import annotations

import os

from negrefine_ray.config import RayConfig


def resolve_address(cfg: RayConfig, override: str | None = None) -> str | None:
    """The cluster address to connect to, or None for a new local Ray."""
    return override or cfg.address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(cfg: RayConfig, override: str | None = None) -> None:
    """Connect to Ray unless this process already is connected."""
    import ray

    if ray.is_initialized():
        return
    address = resolve_address(cfg, override)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local" starts a new single-node Ray even when a `ray start` cluster runs on this machine,
        # which a bare ray.init() would join (ignoring num_cpus); clusters are chosen by address only.
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus or None,
            num_gpus=None if cfg.num_gpus < 0 else cfg.num_gpus,
            include_dashboard=False,
        )
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Without a terminal (CI, `ray job submit` logs) Ray Data's progress would be logged as blocks
    of lines every few seconds per dataset, and each execution would print its plan: both are
    turned off, and the stages log one progress line at most every ~10 s instead
    (progress.ray_stage_progress). On a terminal Ray Data keeps its bars."""
    import logging

    from ray.data import DataContext

    from negrefine_ray.progress import interactive

    if interactive():
        return
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled" notice


def close_ray() -> None:
    """Disconnect from Ray, if this process connected, before the interpreter tears down: leaving it
    to Ray's atexit hook once crashed a job driver on exit (a segfault after every stage had
    finished) on a multi-node cluster."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
