"""One way to build a stage's actor pool: the image pool runs on Ray Data (`ActorPool.apply`), the text
and judge pools as actors kept for the stage's run (`ResidentPool`), both from one `ActorPool`.

A pool is a triple, as Ray's batch-LLM stages declare one (ray/llm/_internal/batch/stages/base.py,
`StatefulStage`): the callable actor class, its constructor arguments (its own config sections, no
JobConfig) and its map_batches arguments (CPU/GPU per actor, pool size, batch size): `ActorPool`.
One sizing rule (`plan_pool`, pure), one fit to what the cluster has free (`fit_plan`, through
resources.fit_pool_on_cluster), one column check for actors (`require_columns`), and one reassembly
of the rows by their ROW column that fails on lost or duplicated rows (`reassemble`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from negrefine_ray.distributed.resources import PoolRequest, cpu_threads, fit_pool_on_cluster, read_cluster
from negrefine_ray.errors import StageError

ROW = "row"  # int64 row index 0..N-1 that each row carries through a pool and comes back by


@dataclass(frozen=True)
class PoolSpec:
    """What a stage asks of its pool, read from its own config section.

    `count`: the configured number of actors (0: automatic). `gpus_per_actor`: each actor's GPU share
    when the pool runs on GPUs (0: CPU actors by request). `device`: "auto" | "cpu" | "cuda". The
    `*_key`s name those settings in messages. GPU and CPU actors may take different CPU shares;
    `task_cpus` is the CPU of the stateless tasks that must run beside the actors (0: none).
    """

    stage: str
    count: int
    gpus_per_actor: float
    device: str = "auto"
    count_key: str = ""
    gpus_key: str = ""
    device_key: str = "model.device"
    gpu_actor_cpus: float = 1.0
    cpu_actor_cpus: float = 1.0
    task_cpus: float = 0.0


@dataclass(frozen=True)
class PoolPlan:
    """Where the actors run ("cuda" or "cpu") and what the pool asks Ray for."""

    device: str
    pool: PoolRequest
    # OMP_NUM_THREADS of each CPU actor, set by fit_plan (resources.cpu_threads); 0: Ray's default
    cpu_threads: int = 0

    def describe(self) -> str:
        """ "1 actor x CPU", "8 actors x 0.25 GPU": the stage summaries' wording."""
        n = self.pool.actors
        unit = f"{self.pool.actor_gpus:g} GPU" if self.device == "cuda" else "CPU"
        return f"{n} actor{'s' if n > 1 else ''} x {unit}"


def _no_gpu(spec: PoolSpec, cluster_gpus: float) -> StageError:
    gpus_key = spec.gpus_key or "gpus_per_actor"
    if spec.gpus_per_actor <= 0:
        why, fix = f"{gpus_key} = 0 gives its actors no GPU", f"set {gpus_key} above 0"
    else:
        why = f"the Ray cluster has {cluster_gpus:g} GPUs ({gpus_key} = {spec.gpus_per_actor:g})"
        fix = "add GPU workers"
    return StageError(
        f"{spec.stage}: {spec.device_key} = 'cuda' but {why}; use {spec.device_key} = 'auto' or 'cpu', "
        f"or {fix}."
    )


def plan_pool(spec: PoolSpec, cluster_gpus: float) -> PoolPlan:
    """The one sizing rule. GPU actors when the cluster has GPUs, `spec.device` is not "cpu" and
    `spec.gpus_per_actor` > 0: `spec.count` of them, or one per GPU share (at least 1). Otherwise CPU
    actors: `spec.count`, or 1. Device "cuda" that gets no GPU actors is a StageError, not a silent
    CPU run. The plan is not yet fitted to what is free: see `fit_plan`."""
    use_gpu = spec.device != "cpu" and cluster_gpus > 0 and spec.gpus_per_actor > 0
    if spec.device == "cuda" and not use_gpu:
        raise _no_gpu(spec, cluster_gpus)
    if use_gpu:
        n = spec.count or max(1, int(cluster_gpus / spec.gpus_per_actor + 1e-9))
        device, cpus, gpus = "cuda", spec.gpu_actor_cpus, spec.gpus_per_actor
    else:
        n, device, cpus, gpus = spec.count or 1, "cpu", spec.cpu_actor_cpus, 0.0
    fixed = spec.count > 0  # a user-set count is honoured or refused by fit_plan, never cut
    pool = PoolRequest(spec.stage, n, cpus, gpus, spec.task_cpus, spec.count_key, count_fixed=fixed)
    return PoolPlan(device, pool)


def fit_plan(plan: PoolPlan) -> PoolPlan:
    """`plan` sized to what the connected Ray has free next to the driver (resources.fit_pool): fewer
    automatic GPU actors, or smaller CPU shares for actors and tasks alike (their ratio kept); a
    StageError with the numbers when even that does not fit. Call it right before the pool starts.
    CPU actors get the intra-op threads of resources.cpu_threads, their node's free cores shared
    among the pool's actors there (2x end-to-end on 2 cores: jobs/bench/pipeline_efficiency.py),
    unless the driver's environment sets OMP_NUM_THREADS (then every process keeps that) or
    NEGREFINE_CPU_ACTOR_THREADS=ray (Ray's default: the floor of the CPU request, 1 thread for the
    0.5 or 1 CPU the pools ask). Ray nodes that share one machine's cores (the multi-node and fault
    tests) set OMP_NUM_THREADS=1."""
    pool = fit_pool_on_cluster(plan.pool).pool
    cores = os.environ.get(CPU_ACTOR_THREADS_ENV, "cores") != "ray"
    own = plan.device != "cpu" or "OMP_NUM_THREADS" in os.environ or not cores
    return dataclasses.replace(plan, pool=pool, cpu_threads=0 if own else cpu_threads(pool, read_cluster()))


CPU_ACTOR_THREADS_ENV = "NEGREFINE_CPU_ACTOR_THREADS"  # "cores" (the default) or "ray": see fit_plan
NODE = "node"  # the batch column an actor writes its Ray node id into (manifests count rows per node)


def node_id() -> str:
    """This process's Ray node id, or "local" outside Ray (the DataLoader path, in-process encoding).
    A process that never imported ray is outside Ray: not importing it here keeps the embedders usable
    where Ray is not installed (jobs/bench on a bare GPU machine)."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else "local"


def count_nodes(nodes: np.ndarray, into: dict[str, int] | None) -> None:
    """Add the rows each node ran (a reassembled NODE column) to `into`, when given."""
    if into is not None:
        for node, n in zip(*np.unique(nodes.astype(str), return_counts=True), strict=True):
            into[str(node)] = into.get(str(node), 0) + int(n)


def cluster_gpus() -> float:
    """The connected Ray cluster's GPU count (the `cluster_gpus` of `plan_pool`)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


@dataclass(frozen=True)
class ActorPool:
    """A Ray Data actor pool: `actor` (a callable class that loads its model once in __init__),
    `constructor` (its keyword arguments: config sections and the plan's device, not the JobConfig),
    and the map_batches arguments derived from `plan` (fitted) and `batch_size`."""

    actor: type
    constructor: Mapping[str, Any]
    plan: PoolPlan
    batch_size: int
    resources: Mapping[str, float] = dataclasses.field(default_factory=dict)  # custom, per actor

    def actor_resources(self) -> dict[str, Any]:
        """What each actor takes, as Ray's options name it: CPU and GPU shares, the custom resources,
        and a CPU actor's OMP_NUM_THREADS (the plan's cpu_threads, unless 0)."""
        out: dict[str, Any] = {"num_gpus": self.plan.pool.actor_gpus, "num_cpus": self.plan.pool.actor_cpus}
        if self.resources:
            out["resources"] = dict(self.resources)
        if self.plan.cpu_threads:
            out["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(self.plan.cpu_threads)}}
        return out

    def map_batches_kwargs(self) -> dict[str, Any]:
        import ray

        return {
            "fn_constructor_kwargs": dict(self.constructor),
            # Actors go on as many nodes as fit: Ray Data's default scheduling strategy for them is
            # DataContext.scheduling_strategy, "SPREAD" (on one node: no effect). Only named
            # map_batches parameters are passed: Ray 2.60 deprecates the **ray_remote_args catch-all.
            "compute": ray.data.ActorPoolStrategy(size=self.plan.pool.actors),
            "batch_size": self.batch_size,
            **self.actor_resources(),
            "batch_format": "numpy",
            "udf_modifying_row_count": False,  # every actor maps rows 1:1
        }

    def apply(self, ds: Any) -> Any:
        """`ds.map_batches` through the pool (lazy). Actor restarts and task retries are Ray Data
        2.60's defaults for actor pools (max_restarts=-1, max_task_retries=-1): a retried batch
        replaces the lost one, and `reassemble` checks that no row was lost or doubled."""
        return ds.map_batches(self.actor, **self.map_batches_kwargs())


class ResidentPool:
    """An ActorPool's actors started once and kept for every pass of a stage (embed-text's text
    lists, the score stage's pair texts), so each actor loads its model once per stage run. Plain
    Ray actors with the pool's resources, spread over the nodes; their constructor arguments are
    small config sections passed inline, so Ray can restart an actor that dies (max_restarts=-1) and
    retry its batch (max_task_retries=-1). The actors end with the pool (`close`, or when it is
    dropped). Batches are dicts of numpy columns carrying a ROW column; `map` yields the results in
    the order they finish, for `reassemble`."""

    def __init__(self, pool: ActorPool) -> None:
        import ray

        base: Any = pool.actor
        base_init = base.__init__

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            base_init(self, *args, **kwargs)
            self.loaded = f"{os.getpid()}-{time.time_ns()}"  # new at every start or restart

        methods = {"__init__": __init__, "run": _run_batch, "load_id": lambda self: self.loaded}
        resident = type(f"Resident{base.__name__}", (base,), methods)
        options = {**pool.actor_resources(), "scheduling_strategy": "SPREAD", "max_restarts": -1,
                   "max_task_retries": -1}  # fmt: skip
        cls: Any = ray.remote(resident).options(**options)
        self.actors: list[Any] = [cls.remote(**pool.constructor) for _ in range(pool.plan.pool.actors)]

    def map(self, batches: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
        from ray.util import ActorPool as RayActorPool

        return RayActorPool(self.actors).map_unordered(lambda a, b: a.run.remote(b), list(batches))

    def load_ids(self) -> list[str]:
        """One id per actor that changes whenever the actor starts again (its model loaded again)."""
        import ray

        return list(ray.get([a.load_id.remote() for a in self.actors]))

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _run_batch(self: Any, batch: Mapping[str, Any]) -> Any:
    """A resident actor's one remote method: its callable class's __call__ on one batch."""
    return self(batch)


def require_columns(batch: Mapping[str, Any], needed: Sequence[str], who: str) -> None:
    """Raise a StageError naming the columns `who` needs, those missing and those that arrived."""
    missing = [c for c in needed if c not in batch]
    if missing:
        raise StageError(
            f"{who} needs columns {', '.join(needed)}; {', '.join(missing)} missing from a batch "
            f"with columns {sorted(batch)}."
        )


def _empty(values: np.ndarray, n: int) -> np.ndarray:
    """(n, ...) zeros of a numeric column's dtype and row shape; an object array for anything else."""
    if values.dtype.kind in "biuf":
        return np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    return np.empty(n, dtype=object)


def reassemble(
    batches: Iterable[Mapping[str, Any]], n: int, columns: Sequence[str], *, stage: str
) -> dict[str, np.ndarray]:
    """`columns` of rows 0..n-1 put back in place by their ROW column; each row must come back once.

    Numeric columns keep their dtype and row shape (an embedding column becomes (n, D) float32);
    strings come back as object arrays. A StageError says how many rows were lost, duplicated or out
    of range, or that no batch came back at all.
    """
    from negrefine_ray.progress import ray_stage_progress

    out: dict[str, np.ndarray] = {}
    seen = np.zeros(n, dtype=np.int64)
    progress = ray_stage_progress(stage, n, "rows")
    for batch in batches:
        require_columns(batch, [ROW, *columns], f"{stage}'s row reassembly")
        rows = np.asarray(batch[ROW], dtype=np.int64)
        bad = rows[(rows < 0) | (rows >= n)]
        if bad.size:
            raise StageError(f"{stage} got back row index {int(bad[0])}; it sent rows 0 to {n - 1}.")
        for c in columns:
            values = np.asarray(batch[c])
            if c not in out:
                out[c] = _empty(values, n)
            out[c][rows] = values
        np.add.at(seen, rows, 1)
        if progress is not None:
            progress.update(len(rows))
    if progress is not None:
        progress.close()
    lost, twice = int((seen == 0).sum()), int((seen > 1).sum())
    if not out or lost or twice:
        raise StageError(f"{stage} got {n:,} rows back with {lost:,} lost and {twice:,} duplicated.")
    return out
