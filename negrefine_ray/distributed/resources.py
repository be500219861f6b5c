"""Does a stage's Ray pool fit the cluster next to the driver? Checked before the pool starts, so a
stage never waits forever for CPUs or GPUs held elsewhere (under `ray job submit
--entrypoint-num-cpus 1` the job's entrypoint holds a CPU for the whole run).

Pure core `fit_pool(pool, cluster)`: a pool is `actors` actors of {CPU, GPU} each plus, for
embed-images, stateless tasks of `task_cpus` that must be able to run beside them. GPUs are hard: an
actor's GPUs and its CPU share lie on one node; a user-set actor count is honoured or refused, an
automatic one is cut to what fits. CPUs are soft (a Ray CPU is a scheduling token, not a core limit),
so CPU requests are scaled down together, keeping their ratio, but not below MIN_CPUS.
Ray adapter: `fit_pool_on_cluster` reads each node's free resources at stage start.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from negrefine_ray.errors import StageError

log = logging.getLogger(__name__)
MIN_CPUS = 0.1  # the smallest CPU request a pool is sized down to; below it the stage refuses


@dataclass(frozen=True)
class PoolRequest:
    """What one stage asks Ray for. `count_key` names the setting behind `actors` in messages
    (e.g. "images.num_actors"); `count_fixed` is True when the user set it (then it is never cut)."""

    stage: str
    actors: int
    actor_cpus: float
    actor_gpus: float = 0.0
    task_cpus: float = 0.0  # 0: the pool runs no tasks beside its actors
    count_key: str = ""
    count_fixed: bool = False

    def describe(self) -> str:
        unit = f"{self.actor_cpus:g} CPU" + (f" + {self.actor_gpus:g} GPU" if self.actor_gpus else "")
        tasks = f" + tasks of {self.task_cpus:g} CPU" if self.task_cpus else ""
        return f"{self.actors} actor{'s' if self.actors != 1 else ''} x ({unit}){tasks}"


def _amounts(cpu: float, gpu: float) -> str:
    return f"{cpu:g} CPU, {gpu:g} GPU"


@dataclass(frozen=True)
class Cluster:
    """The cluster at stage start: `total` {CPU, GPU} and, per live node, what is free (not held by
    the driver, the job's entrypoint, other jobs or actors still shutting down)."""

    total: Mapping[str, float]
    free: Sequence[Mapping[str, float]]

    def free_total(self, key: str) -> float:
        return sum(n.get(key, 0.0) for n in self.free)

    def held(self, key: str) -> float:
        return max(self.total.get(key, 0.0) - self.free_total(key), 0.0)

    def describe(self) -> str:
        big = max(self.free, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        total = _amounts(self.total.get("CPU", 0.0), self.total.get("GPU", 0.0))
        held = _amounts(self.held("CPU"), self.held("GPU"))
        free = _amounts(self.free_total("CPU"), self.free_total("GPU"))
        largest = (
            f", the largest {_amounts(big.get('CPU', 0.0), big.get('GPU', 0.0))}"
            if len(self.free) > 1
            else ""
        )
        return (
            f"the cluster has {total}, of which the driver, the job entrypoint or other work holds {held}, "
            f"leaving {free} free on {len(self.free)} node(s){largest}"
        )


@dataclass(frozen=True)
class Fit:
    """The pool to run and, when it differs from the request, one line saying what changed and why."""

    pool: PoolRequest
    note: str = ""


def _floor4(x: float) -> float:
    """Ray keeps resource amounts to 1e-4 and wants amounts above 1 whole."""
    return float(math.floor(x)) if x > 1 else math.floor(x * 1e4 + 1e-9) / 1e4


def _slots(pool: PoolRequest, nodes: Sequence[Mapping[str, float]]) -> list[int]:
    """Per node, how many of the pool's actors it could hold: GPU actors by its free GPUs, CPU actors
    without limit (CPU is soft); a node with less than MIN_CPUS free CPU holds none."""
    return [
        0
        if n.get("CPU", 0.0) < MIN_CPUS
        else int(n.get("GPU", 0.0) / pool.actor_gpus + 1e-9)
        if pool.actor_gpus > 0
        else pool.actors
        for n in nodes
    ]


def _place(pool: PoolRequest, nodes: Sequence[Mapping[str, float]], slots: list[int]) -> list[int]:
    """Actors per node: each goes where the most CPU is left among the nodes with a slot open."""
    placed = [0] * len(nodes)
    for _ in range(pool.actors):
        open_ = [i for i in range(len(nodes)) if placed[i] < slots[i]]
        best = max(open_, key=lambda i: nodes[i].get("CPU", 0.0) - placed[i] * pool.actor_cpus)
        placed[best] += 1
    return placed


def _cpu_scale(pool: PoolRequest, nodes: Sequence[Mapping[str, float]], placed: list[int]) -> float:
    """The largest s <= 1 such that every node holds its actors at s * actor_cpus and some node also
    holds one task at s * task_cpus."""
    cpu = [n.get("CPU", 0.0) for n in nodes]
    s = min([1.0] + [c / (k * pool.actor_cpus) for c, k in zip(cpu, placed, strict=True) if k])
    if pool.task_cpus > 0:
        s = min(s, max(c / (k * pool.actor_cpus + pool.task_cpus) for c, k in zip(cpu, placed, strict=True)))
    return s


def fits_as_asked(pool: PoolRequest, cluster: Cluster) -> bool:
    """True when `pool` fits `cluster.free` without sizing anything down."""
    slots = _slots(pool, cluster.free)
    if sum(slots) < pool.actors:
        return False
    return _cpu_scale(pool, cluster.free, _place(pool, cluster.free, slots)) >= 1.0


def _refusal(pool: PoolRequest, cluster: Cluster, why: str, fixes: list[str]) -> StageError:
    return StageError(
        f"{pool.stage} cannot start: it needs {pool.describe()}, that is {why}; {cluster.describe()}. "
        f"Waiting would never end, so it stops now. Fix: {'; or '.join(fixes)}."
    )


def _fixes(pool: PoolRequest, cluster: Cluster, key: str, count: str = "") -> list[str]:
    """The ways out: free what the entrypoint holds, change the actor count, add nodes."""
    fixes = []
    if cluster.held(key) > 0:
        fixes.append(
            f"if the job was submitted with `--entrypoint-num-{key.lower()}s` above 0, submit it with "
            f"`--entrypoint-num-{key.lower()}s 0` (cluster/submit.sh does), or stop the other work"
        )
    if count:
        fixes.append(count)
    return [*fixes, f"add nodes with free {key}s"]


def fit_pool(pool: PoolRequest, cluster: Cluster) -> Fit:
    """`pool` as asked when it fits `cluster.free`; else sized down (an automatic GPU actor count cut
    to the free places, CPU requests scaled down to at least MIN_CPUS); else a StageError with the
    numbers needed and free and the fix."""
    asked, nodes, notes = pool, list(cluster.free), []
    slots = _slots(pool, nodes)
    room = min(sum(slots), pool.actors)
    if room < pool.actors:
        if pool.count_fixed or room == 0:
            key = "GPU" if pool.actor_gpus else "CPU"
            each = f"{pool.actor_gpus:g} GPU and " if pool.actor_gpus else ""
            why = f"{each}at least {MIN_CPUS:g} CPU on one node for each actor, and only {room} actor(s) fit"
            count = f"set {pool.count_key} = {room}" if pool.count_fixed and room and pool.count_key else ""
            raise _refusal(pool, cluster, why, _fixes(pool, cluster, key, count))
        pool = replace(pool, actors=room)
        notes.append(f"{room} actor(s) instead of {asked.actors}, one per free GPU share")
    s = _cpu_scale(pool, nodes, _place(pool, nodes, slots))
    if s < 1.0:
        a, t = _floor4(pool.actor_cpus * s), _floor4(pool.task_cpus * s)
        if a < MIN_CPUS or (pool.task_cpus > 0 and t < MIN_CPUS):
            beside = " and one task beside them" if pool.task_cpus else ""
            why = f"at least {MIN_CPUS:g} CPU for each actor{beside}"
            count = f"lower {pool.count_key}" if pool.count_key and pool.actors > 1 else ""
            raise _refusal(pool, cluster, why, _fixes(pool, cluster, "CPU", count))
        pool = replace(pool, actor_cpus=a, task_cpus=t)
        tasks = f", tasks {t:g} CPU instead of {asked.task_cpus:g}" if asked.task_cpus else ""
        notes.append(f"actors take {a:g} CPU instead of {asked.actor_cpus:g}{tasks}")
    if not notes:
        return Fit(pool)
    return Fit(pool, f"{pool.stage}: sized down to fit: {'; '.join(notes)} ({cluster.describe()}).")


def cpu_threads(pool: PoolRequest, cluster: Cluster) -> int:
    """The intra-op threads (OMP_NUM_THREADS) each CPU actor of `pool` should run: the free CPUs of
    the node it is placed on shared among the pool's actors there, rounded down, at least 1; 0 for a
    GPU pool (Ray's default stands). Ray would give an actor floor(its CPU request) threads, 1 for
    the 0.5 or 1 CPU the pools ask, so a CPU-only pool's one actor left every other core idle; a Ray
    CPU is a scheduling token, so the threads follow the cores. Tasks beside the actors (embed-images'
    decoding) share those cores with them."""
    if pool.actor_gpus > 0 or pool.actors < 1:
        return 0
    slots = _slots(pool, cluster.free)
    if sum(slots) < pool.actors:
        return 1
    placed = _place(pool, cluster.free, slots)
    shares = [n.get("CPU", 0.0) / k for n, k in zip(cluster.free, placed, strict=True) if k]
    return max(1, int(min(shares) + 1e-9))


def read_cluster() -> Cluster:
    """Total CPU/GPU and each live node's free CPU/GPU, read from the connected Ray."""
    import ray
    from ray._private import state  # DeveloperAPI; Ray has no public per-node reading of free resources

    per_node = state.available_resources_per_node().values()
    free = [{k: float(v.get(k, 0.0)) for k in ("CPU", "GPU")} for v in per_node]
    total = {k: float(ray.cluster_resources().get(k, 0.0)) for k in ("CPU", "GPU")}
    return Cluster(total, free)


def fit_pool_on_cluster(pool: PoolRequest, settle_s: float = 2.0) -> Fit:
    """`fit_pool` on the connected Ray, logging what was sized down. When the pool does not fit as
    asked, the reading is repeated for up to `settle_s` seconds first: the previous stage's actors may
    still be releasing their resources."""
    deadline = time.monotonic() + settle_s
    cluster = read_cluster()
    while not fits_as_asked(pool, cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
        cluster = read_cluster()
    fit = fit_pool(pool, cluster)
    if fit.note:
        log.warning(fit.note)
    return fit
