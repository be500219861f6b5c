"""Several judges at once: each judge's work is a task with a resource demand (what its actor pool
holds: CPUs, GPUs, custom resources), and tasks start, in the configured order, as soon as their
demand fits what the running ones leave of the capacity; the others queue. A task that could never
fit starts when nothing else runs, so that its pool's own fit check (pools.fit_plan) sizes it down
or refuses it with the numbers, instead of waiting for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
EPS = 1e-9


@dataclass(frozen=True)
class Task(Generic[T]):
    name: str
    demand: Mapping[str, float]  # resource -> amount held while it runs
    run: Callable[[], T]


def _fits(demand: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(amount <= free.get(key, 0.0) + EPS for key, amount in demand.items() if amount > 0)


def run_concurrently(tasks: Sequence[Task[T]], capacity: Mapping[str, float]) -> dict[str, T]:
    """Run `tasks` in threads, as many at a time as `capacity` holds; results by task name. The
    first error stops the queue and is raised once the running tasks have ended."""
    pending = list(tasks)
    free = dict(capacity)
    running: dict[Future[T], Task[T]] = {}
    results: dict[str, T] = {}
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(len(tasks), 1), thread_name_prefix="judge") as pool:
        while pending or running:
            for task in list(pending):
                if error is None and (_fits(task.demand, free) or not running):
                    pending.remove(task)
                    for key, amount in task.demand.items():
                        free[key] = free.get(key, 0.0) - amount
                    log.info("Judge task '%s' starts (holds %s).", task.name, _describe(task.demand))
                    running[pool.submit(task.run)] = task
                elif error is None and running:
                    log.info("Judge task '%s' waits for resources (%s).", task.name, _describe(task.demand))
            if error is not None:
                pending.clear()
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                for key, amount in task.demand.items():
                    free[key] = free.get(key, 0.0) + amount
                exc = future.exception()
                if exc is not None:
                    error = error or exc
                else:
                    results[task.name] = future.result()
    if error is not None:
        raise error
    return results


def _describe(demand: Mapping[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in demand.items() if v > 0) or "nothing"
