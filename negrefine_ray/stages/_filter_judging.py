"""The filter stage's judges, at once where the cluster holds them (judges.schedule): each LLM judge
asks through its own Ray actor pool with its own shape (GPUs per replica = tensor_parallel_size,
`num_actors` replicas, a custom `resource`), the in-process judges (wordnet, replay) one after
another beside them. Judges that share an answer store (the same model and prompts, e.g. two
thresholds) run one after the other in one task: the second finds every answer stored.
Each judge's accounting (judges.accounting) comes back with its results. A judge's run is NegFilter's
rule (methods.md 3.2) over its answers: the proper-noun wave, then the subcategory wave for the labels
that are not proper nouns (run_judge).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import pyarrow as pa

from negrefine_ray.config import JobConfig, JudgeConfig
from negrefine_ray.core.negfilter import (
    Decision,
    PromptSet,
    Question,
    count_reasons,
    decide,
    proper_question,
    sequential_questions,
    subcategory_questions,
)
from negrefine_ray.judges import backend_spec, make_judge
from negrefine_ray.judges.accounting import JudgeAccount
from negrefine_ray.judges.base import Answer, Judge
from negrefine_ray.judges.schedule import Task, run_concurrently
from negrefine_ray.judges.store import AnswerStore, answer_store_root
from negrefine_ray.runfolder.folder import StageContext

Asker = Callable[[Sequence[Question]], None]


@dataclass(frozen=True)
class JudgeRun:
    decisions: pa.Table  # one row per question asked
    labels: pa.Table  # one row per label
    counts: dict[str, int]
    answer_seconds: float = 0.0  # the judge's time answering the questions asked (their latencies)


def _resolve(answer: Answer, invalid_policy: str) -> bool:
    """An invalid answer counts as "no" under policy "keep" (the label survives that question, as
    in the reference) and as "yes" under "drop"."""
    return answer.yes if answer.yes is not None else invalid_policy == "drop"


def filter_labels(
    labels: Sequence[str], nearest: Sequence[Sequence[str]], ask: Asker, store: AnswerStore, *, policy: str
) -> tuple[list[Decision], list[Question], dict[str, bool]]:
    """Two waves: every proper-noun question, then the subcategory questions of the survivors.
    Returns the decisions, the questions asked (wave order) and the resolved yes/no per qid."""
    wave1 = [proper_question(label) for label in labels]
    ask(wave1)
    yes = {q.qid: _resolve(store.answers[q.qid], policy) for q in wave1}
    wave2 = [
        q
        for label, ids in zip(labels, nearest, strict=True)
        if not yes[proper_question(label).qid]
        for q in subcategory_questions(label, ids)
    ]
    ask(wave2)
    yes.update({q.qid: _resolve(store.answers[q.qid], policy) for q in wave2})
    decisions = [decide(label, ids, yes) for label, ids in zip(labels, nearest, strict=True)]
    return decisions, wave1 + wave2, yes


def _decision_table(
    asked: Sequence[Question],
    store: AnswerStore,
    yes: dict[str, bool],
    needed: set[str],
    meta: dict[str, str],
) -> pa.Table:
    answers = [store.answers[q.qid] for q in asked]
    return pa.table(
        {
            "qid": [q.qid for q in asked],
            "wave": [1 if q.kind == "proper" else 2 for q in asked],
            "label": [q.label for q in asked],
            "kind": [q.kind for q in asked],
            "id_label": [q.id_label for q in asked],
            "rank": pa.array([q.rank for q in asked], pa.int32()),
            "prompt_set": [meta["prompt_set"]] * len(asked),
            "judge": [meta["judge"]] * len(asked),
            "answer": [{True: "yes", False: "no", None: "invalid"}[a.yes] for a in answers],
            "p_yes": pa.array([a.p_yes for a in answers], pa.float64()),
            "raw": [a.raw for a in answers],
            "decision_yes": [yes[q.qid] for q in asked],
            "needed_by_sequential_rule": [q.qid in needed for q in asked],
        }
    )  # no latency here: timings vary by run, and this table must not (they go to the manifest)


def run_judge(
    negatives: pa.Table, ask: Asker, store: AnswerStore, meta: dict[str, str], policy: str
) -> JudgeRun:
    labels = negatives.column("label").to_pylist()
    nearest = negatives.column("nearest_id_labels").to_pylist()
    decisions, asked, yes = filter_labels(labels, nearest, ask, store, policy=policy)
    needed = {
        qid
        for label, ids in zip(labels, nearest, strict=True)
        for qid in sequential_questions(label, ids, yes)
    }
    table = _decision_table(asked, store, yes, needed, meta)
    label_table = pa.table(
        {
            "label": labels,
            "pos": negatives.column("pos"),
            "reason": [d.reason for d in decisions],
            "id_label": [d.id_label for d in decisions],
            "kept": [d.kept for d in decisions],
        }
    )
    counts = count_reasons(decisions)
    counts.update(
        questions_in_table=len(asked),  # the decision table's rows (from the store or sent)
        # distinct questions: a label's nearest ID labels may repeat a name (ImageNet's two
        # "sunglasses"), which asks one question in two rows; sent + from the store = distinct
        questions_distinct=len({q.qid for q in asked}),
        questions_sequential_rule=len(needed),
        invalid_answers=sum(store.answers[q.qid].yes is None for q in asked),
    )
    seconds = sum(store.answers[q.qid].latency_s for q in asked)
    return JudgeRun(table, label_table, counts, round(seconds, 3))


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
    out = {}
    for cfg, judge in members:
        account = JudgeAccount(cfg.name)
        store = AnswerStore(answer_store_root(config.cache_dir, judge.identity(), prompts))
        meta = {"judge": cfg.name, "prompt_set": config.filter.prompt_set}
        ask = _asker(cfg, judge, prompts, store, config, account)
        try:
            run = run_judge(negatives, ask, store, meta, config.filter.invalid_policy)
        finally:
            getattr(ask, "close", lambda: None)()  # an LLM judge's actors, kept across both waves
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
