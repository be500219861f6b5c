"""CPU actors' intra-op threads (resources.cpu_threads, pools.PoolPlan.cpu_threads): the free cores of
their node shared among the pool's actors there, not Ray's default of floor(CPU request) = 1
(jobs/bench/pipeline_efficiency.py measured the CPU pools at about half their capacity with it)."""

from __future__ import annotations

import pytest

from negrefine_ray.clip.image import ImageEmbedder
from negrefine_ray.distributed.pools import ActorPool, PoolPlan
from negrefine_ray.distributed.resources import Cluster, PoolRequest, cpu_threads


def cluster(*free_cpus: float, gpus: float = 0.0) -> Cluster:
    nodes = [{"CPU": c, "GPU": gpus} for c in free_cpus]
    return Cluster({"CPU": sum(free_cpus), "GPU": gpus * len(free_cpus)}, nodes)


def test_one_cpu_actor_gets_every_free_core_of_its_node() -> None:
    assert cpu_threads(PoolRequest("embed-images", 1, 0.5, task_cpus=1.0), cluster(2)) == 2
    assert cpu_threads(PoolRequest("text embedding", 1, 1.0), cluster(16)) == 16
    assert cpu_threads(PoolRequest("judge", 1, 1.0), cluster(1.5)) == 1  # what is held elsewhere is not taken


def test_actors_on_one_node_share_its_cores() -> None:
    assert cpu_threads(PoolRequest("text embedding", 2, 1.0), cluster(8)) == 4
    assert cpu_threads(PoolRequest("text embedding", 3, 1.0), cluster(2)) == 1  # never below 1
    assert cpu_threads(PoolRequest("text embedding", 2, 1.0), cluster(8, 8)) == 8  # one on each node


def test_gpu_pools_keep_rays_default() -> None:
    assert cpu_threads(PoolRequest("embed-images", 1, 1.0, 1.0), cluster(16, gpus=1)) == 0


def test_the_plan_sets_omp_num_threads_of_cpu_actors_only() -> None:
    pytest.importorskip("ray")
    cpu = ActorPool(ImageEmbedder, {}, PoolPlan("cpu", PoolRequest("p", 1, 0.5), cpu_threads=2), 8)
    env = cpu.map_batches_kwargs()["runtime_env"]["env_vars"]
    assert env == {"OMP_NUM_THREADS": "2"}
    unset = ActorPool(ImageEmbedder, {}, PoolPlan("cuda", PoolRequest("p", 1, 1.0, 1.0)), 8)
    assert "runtime_env" not in unset.map_batches_kwargs()


@pytest.mark.ray
def test_cpu_actors_take_the_free_cores_by_default(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit_plan's default gives a CPU pool's actor the node's free cores; OMP_NUM_THREADS in the
    driver's environment, or NEGREFINE_CPU_ACTOR_THREADS=ray, leave Ray's own default (0 here)."""
    from negrefine_ray.distributed.pools import CPU_ACTOR_THREADS_ENV, fit_plan
    from negrefine_ray.distributed.resources import read_cluster

    plan = PoolPlan("cpu", PoolRequest("p", 1, 0.5))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(CPU_ACTOR_THREADS_ENV, raising=False)
    free = int(max(n["CPU"] for n in read_cluster().free))
    assert fit_plan(plan).cpu_threads == max(1, free)
    monkeypatch.setenv(CPU_ACTOR_THREADS_ENV, "ray")
    assert fit_plan(plan).cpu_threads == 0
    monkeypatch.delenv(CPU_ACTOR_THREADS_ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert fit_plan(plan).cpu_threads == 0
