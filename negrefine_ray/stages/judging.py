"""The filter stage's judges, at once where the cluster holds them (judges.schedule): each LLM judge
asks through its own Ray actor pool with its own shape (GPUs per replica = tensor_parallel_size,
`num_actors` replicas, a custom `resource`), the in-process judges (wordnet, replay) one after
another beside them. Judges that share an answer store (the same model and prompts, e.g. two
thresholds) run one after the other in one task: the second finds every answer stored.
Each judge's accounting (judges.accounting) comes back with its results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import pyarrow as pa

from negrefine_ray.config import JobConfig, JudgeConfig
from negrefine_ray.core.negfilter import PromptSet, Question
from negrefine_ray.judges import backend_spec, make_judge
from negrefine_ray.judges.accounting import JudgeAccount
from negrefine_ray.judges.base import Judge
from negrefine_ray.judges.schedule import Task, run_concurrently
from negrefine_ray.judges.store import AnswerStore, answer_store_root
from negrefine_ray.runfolder.folder import StageContext

if TYPE_CHECKING:
    from negrefine_ray.stages.filter import Asker, JudgeRun

Member = tuple[JudgeConfig, Judge]


def in_process_asker(
    judge: Judge, prompts: PromptSet, store: AnswerStore, chunk_size: int, account: JudgeAccount | None = None
) -> Asker:
    """Ask the unanswered questions chunk by chunk in this process, persisting each chunk."""
    account = account if account is not None else JudgeAccount(judge.name)

    def ask(questions: Sequence[Question]) -> None:
        todo = store.missing(questions)
        account.from_store += len({q.qid for q in questions}) - len(todo)
        t0 = time.perf_counter()
        for start in range(0, len(todo), chunk_size):
            answers = judge.answer(todo[start : start + chunk_size], prompts)
            store.add(answers)
            account.answered(len(answers))
        account.asked += len(todo)
        account.busy_s += time.perf_counter() - t0 if todo else 0.0

    return ask


def _asker(
    cfg: JudgeConfig,
    judge: Judge,
    prompts: PromptSet,
    store: AnswerStore,
    config: JobConfig,
    account: JudgeAccount,
) -> Asker:
    """LLM judges ask on a Ray actor pool; the others answer in this process."""
    if backend_spec(cfg.backend).on_ray:
        from negrefine_ray.judges.actor_pool import ray_asker

        return ray_asker(
            cfg, prompts, store, seed=config.run.seed, chunk_size=config.filter.chunk_size, account=account
        )
    return in_process_asker(judge, prompts, store, config.filter.chunk_size, account)


def _run_members(
    members: Sequence[Member], negatives: pa.Table, prompts: PromptSet, config: JobConfig
) -> dict[str, tuple[JudgeRun, JudgeAccount]]:
    from negrefine_ray.stages.filter import run_judge

    out = {}
    for cfg, judge in members:
        account = JudgeAccount(cfg.name)
        store = AnswerStore(answer_store_root(config.cache_dir, judge.identity(), prompts))
        meta = {"judge": cfg.name, "prompt_set": config.filter.prompt_set}
        ask = _asker(cfg, judge, prompts, store, config, account)
        run = run_judge(negatives, ask, store, meta, config.filter.invalid_policy)
        account.finished = time.time()
        out[cfg.name] = (run, account)
    return out


def judge_demand(cfg: JudgeConfig) -> dict[str, float]:
    """What the judge's actor pool holds while it runs, as Ray resources."""
    from negrefine_ray.distributed.pools import cluster_gpus, plan_pool
    from negrefine_ray.judges.actor_pool import judge_pool_spec, judge_resources

    pool = plan_pool(judge_pool_spec(cfg), cluster_gpus()).pool
    demand = {"CPU": pool.actors * pool.actor_cpus, "GPU": pool.actors * pool.actor_gpus}
    for key, amount in judge_resources(cfg).items():
        demand[key] = demand.get(key, 0.0) + pool.actors * amount
    return demand


def ask_judges(
    ctx: StageContext, cfgs: Sequence[JudgeConfig], negatives: pa.Table, prompts: PromptSet
) -> dict[str, tuple[JudgeRun, JudgeAccount]]:
    """Every judge's run and accounting, by name; LLM judges concurrently where their pools fit."""
    config = ctx.config
    groups: dict[str, list[Member]] = {}
    for cfg in cfgs:
        judge = make_judge(cfg, seed=config.run.seed, cache_dir=config.local_cache_dir)
        on_ray = backend_spec(cfg.backend).on_ray
        key = str(answer_store_root(config.cache_dir, judge.identity(), prompts)) if on_ray else ""
        groups.setdefault(key, []).append((cfg, judge))
    run = partial(_run_members, negatives=negatives, prompts=prompts, config=config)
    capacity: dict[str, float] = {}
    if any(groups):  # some judge asks through Ray
        import ray

        ctx.ray()
        capacity = {k: float(v) for k, v in ray.available_resources().items()}
    if len(groups) == 1:
        return run(next(iter(groups.values())))
    tasks = []
    for key, members in groups.items():
        demand: dict[str, float] = {}
        for cfg, _ in members if key else ():
            for resource, amount in judge_demand(cfg).items():
                demand[resource] = max(demand.get(resource, 0.0), amount)
        name = " + ".join(cfg.name for cfg, _ in members)
        tasks.append(Task(name, demand, partial(run, members)))
    results = run_concurrently(tasks, capacity)
    return {name: value for group in results.values() for name, value in group.items()}
