"""A stage's pool fits the cluster next to the driver, is sized down, or is refused at once with the
numbers and the fix: on hand-built resource readings, and on the session Ray with CPUs held the way
`ray job submit --entrypoint-num-cpus 1` holds one (the embed-images hang of issue 9 item 8)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from negrefine_ray.distributed.resources import MIN_CPUS, Cluster, PoolRequest, fit_pool
from negrefine_ray.errors import StageError

CPU_IMAGES = PoolRequest("embed-images", 1, 0.5, task_cpus=1.0, count_key="images.num_actors")


def node(cpu: float, gpu: float = 0.0) -> dict[str, float]:
    return {"CPU": cpu, "GPU": gpu}


def test_a_pool_that_fits_is_left_alone() -> None:
    fit = fit_pool(CPU_IMAGES, Cluster(node(2), [node(2)]))
    assert fit.pool == CPU_IMAGES and fit.note == ""
    gpus = PoolRequest("judge 'q'", 4, 1.0, 1.0, count_key="num_actors")
    cluster = Cluster(node(33, 4), [node(0), node(16, 2), node(16, 2)])  # the head has no CPU to give
    assert fit_pool(gpus, cluster).pool == gpus


def test_tasks_may_run_on_another_node_than_the_actors() -> None:
    # The GPU node's only CPU goes to the actor; decode tasks run on the CPU node, nothing shrinks.
    pool = PoolRequest("embed-images", 1, 1.0, 1.0, task_cpus=1.0)
    assert fit_pool(pool, Cluster(node(5, 1), [node(1, 1), node(4)])).note == ""


def test_the_2_cpu_head_with_the_driver_holding_one_is_sized_down() -> None:
    """The hang: 1 CPU left, the actor takes 0.5 and a decode task needs 1. Both shrink in ratio, so
    the task still fits beside the actor and the two stay distinct (unequal CPU, no fusion)."""
    fit = fit_pool(CPU_IMAGES, Cluster(node(2), [node(1)]))
    assert (fit.pool.actors, fit.pool.actor_cpus, fit.pool.task_cpus) == (1, 0.3333, 0.6666)
    assert fit.pool.actor_cpus + fit.pool.task_cpus <= 1.0
    assert fit.note.startswith("embed-images: sized down to fit: actors take 0.3333 CPU instead of 0.5")
    assert "has 2 CPU, 0 GPU" in fit.note and "holds 1 CPU, 0 GPU" in fit.note
    gpu = fit_pool(PoolRequest("embed-images", 1, 1.0, 1.0, task_cpus=1.0), Cluster(node(2, 1), [node(1, 1)]))
    assert (gpu.pool.actor_cpus, gpu.pool.actor_gpus, gpu.pool.task_cpus) == (0.5, 1.0, 0.5)


def test_an_automatic_gpu_count_is_cut_to_the_free_places() -> None:
    pool = PoolRequest("judge 'q'", 4, 1.0, 2.0, count_key="num_actors of [[judges]] 'q'")
    fit = fit_pool(pool, Cluster(node(32, 4), [node(16, 2), node(15, 2)]))
    assert fit.pool.actors == 2 and "2 actor(s) instead of 4" in fit.note


def test_gpus_must_lie_on_one_node() -> None:
    """Two free GPUs on two nodes cannot hold one 2-GPU actor."""
    pool = PoolRequest("judge 'q'", 1, 1.0, 2.0, count_key="num_actors of [[judges]] 'q'")
    with pytest.raises(StageError) as err:
        fit_pool(pool, Cluster(node(8, 2), [node(4, 1), node(4, 1)]))
    msg = str(err.value)
    assert msg.startswith("judge 'q' cannot start: it needs 1 actor x (1 CPU + 2 GPU)")
    assert "only 0 actor(s) fit" in msg and "leaving 8 CPU, 2 GPU free on 2 node(s), the largest 4 CPU" in msg
    assert "add nodes with free GPUs" in msg


def test_a_user_set_count_is_honoured_or_refused_with_the_count_that_fits() -> None:
    pool = PoolRequest(
        "embed-images", 4, 1.0, 1.0, task_cpus=1.0, count_key="images.num_actors", count_fixed=True
    )
    with pytest.raises(StageError, match=r"needs 4 actors x \(1 CPU \+ 1 GPU\).*set images\.num_actors = 2"):
        fit_pool(pool, Cluster(node(16, 2), [node(16, 2)]))
    cpu = PoolRequest("judge 'q'", 2, 1.0, count_key="num_actors", count_fixed=True)
    fit = fit_pool(cpu, Cluster(node(2), [node(1)]))  # CPU is soft: two actors at half a CPU
    assert (fit.pool.actors, fit.pool.actor_cpus) == (2, 0.5)


def test_no_free_cpu_is_refused_with_the_numbers_and_the_fix() -> None:
    with pytest.raises(StageError) as err:
        fit_pool(CPU_IMAGES, Cluster(node(1), [node(0)]))
    msg = str(err.value)
    assert "needs 1 actor x (0.5 CPU) + tasks of 1 CPU" in msg
    assert (
        "the cluster has 1 CPU, 0 GPU, of which the driver, the job entrypoint or other work holds 1 CPU"
        in msg
    )
    assert "leaving 0 CPU, 0 GPU free" in msg and "--entrypoint-num-cpus 0" in msg
    # Enough CPU for an actor but not for MIN_CPUS beside it: refused, not shrunk to nothing.
    many = PoolRequest("text embedding", 8, 1.0, count_key="text.num_actors", count_fixed=True)
    with pytest.raises(
        StageError, match=rf"at least {MIN_CPUS:g} CPU for each actor.*lower text\.num_actors"
    ):
        fit_pool(many, Cluster(node(2), [node(0.5)]))


def test_scaled_amounts_follow_rays_granularity() -> None:
    fit = fit_pool(PoolRequest("x", 3, 1.0), Cluster(node(1), [node(1)]))
    assert fit.pool.actor_cpus == 0.3333  # Ray keeps 1e-4
    big = fit_pool(PoolRequest("x", 1, 4.0), Cluster(node(4), [node(3)]))
    assert big.pool.actor_cpus == 3.0  # and wants amounts above 1 whole


# --- on Ray: the stage itself, with CPUs held -------------------------------------------------


def _job(tmp: Path) -> Any:
    from negrefine_ray.config import build_config

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for j in range(3):
            path = tmp / "id" / cls / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (30, 40 + j, 3), dtype=np.uint8)).save(path)
    return build_config(
        {
            "run": {"name": "t", "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache")},
            "model": {"arch": "nr-tiny-vit", "pretrained": "none", "init_seed": 3, "device": "cpu"},
            "images": {"batch_size": 4},
            "datasets": [{"name": "id", "role": "id", "root": str(tmp / "id"), "format": "imagefolder"}],
        }
    )


def _run_stage_with_cpus_held(tmp: Path, held: int, deadline_s: float) -> tuple[Any, float]:
    """run_embed_images on the session Ray while a placement group holds `held` CPUs (as the job
    entrypoint does). Returns (StageOutput or the exception, seconds); fails if it outlasts the
    deadline, after freeing the CPUs so that a hung stage can finish and leave the session usable."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from negrefine_ray.runfolder.folder import StageContext
    from negrefine_ray.stages.embed_images import run_embed_images

    config = _job(tmp)
    out = tmp / "stage"
    out.mkdir()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["out"] = run_embed_images(StageContext(config, "embed-images", out, config.run_dir))
        except StageError as exc:
            result["out"] = exc

    pg = placement_group([{"CPU": held}])
    ray.get(pg.ready(), timeout=60)
    t0 = time.monotonic()
    try:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(deadline_s)
        seconds = time.monotonic() - t0
    finally:
        remove_placement_group(pg)
    if thread.is_alive():
        thread.join(120)
        pytest.fail(f"embed-images with {held} CPU held did not finish within {deadline_s} s: it hangs")
    return result["out"], seconds


@pytest.mark.ray
@pytest.mark.slow
def test_stage_on_a_2_cpu_ray_with_one_cpu_held_is_sized_down_and_finishes(
    ray_session: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import ray

    assert ray.cluster_resources().get("CPU") == 2  # the session Ray: the 2-CPU head of the issue
    with caplog.at_level(logging.WARNING, logger="negrefine_ray.distributed.resources"):
        output, _ = _run_stage_with_cpus_held(tmp_path, 1, deadline_s=240)
    assert not isinstance(output, BaseException), output
    assert output.stats["embedded"] == 6 and output.stats["failures"] == {}
    assert any("embed-images: sized down to fit" in r.getMessage() for r in caplog.records)


@pytest.mark.ray
def test_stage_with_every_cpu_held_fails_at_once_with_the_numbers(ray_session: None, tmp_path: Path) -> None:
    error, seconds = _run_stage_with_cpus_held(tmp_path, 2, deadline_s=60)
    assert isinstance(error, StageError), error
    assert seconds < 30
    msg = str(error)
    assert msg.startswith("embed-images cannot start") and "holds 2 CPU" in msg and "leaving 0 CPU" in msg
    assert "--entrypoint-num-cpus 0" in msg
