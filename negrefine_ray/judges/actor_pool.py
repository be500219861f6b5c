"""NegFilter's LLM judges on a Ray Data actor pool: one engine per actor (one GPU, or a tensor-
parallel group of GPUs per actor; CPU actors where the cluster has no GPU), answers streamed back
to the driver and persisted chunk by chunk. An actor that dies is restarted by Ray and its batch
retried; an answer only counts once it is persisted, so no question is lost or recorded twice.
Actor input columns: qid, kind, label, id_label, rank; output: the answer store's columns."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from negrefine_ray.core.negfilter import PromptSet, Question
from negrefine_ray.distributed.pools import (
    ActorPool,
    PoolSpec,
    cluster_gpus,
    fit_plan,
    plan_pool,
    require_columns,
)
from negrefine_ray.judges import make_backend
from negrefine_ray.judges.accounting import JudgeAccount
from negrefine_ray.judges.base import Answer
from negrefine_ray.judges.llm import answer_with
from negrefine_ray.judges.store import YES_CODE, YES_FROM_CODE, AnswerStore
from negrefine_ray.progress import ray_stage_progress

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig

QUESTION_COLUMNS = ("qid", "kind", "label", "id_label", "rank")
TOKEN_COLUMNS = ("prompt_tokens", "generated_tokens")


class JudgeActor:
    """Ray Data callable class: loads the backend once, answers one batch of questions per call."""

    def __init__(self, judge: JudgeConfig, prompts: PromptSet, seed: int) -> None:
        self.cfg, self.prompts, self.seed = judge, prompts, seed
        self.backend = make_backend(judge, seed)
        self.usage = getattr(self.backend, "usage", None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_columns(batch, QUESTION_COLUMNS, "JudgeActor")
        questions = [
            Question(str(qid), kind, str(label), str(id_label), int(rank))
            for qid, kind, label, id_label, rank in zip(*(batch[c] for c in QUESTION_COLUMNS), strict=True)
        ]
        before = (self.usage.prompt_tokens, self.usage.generated_tokens) if self.usage else (0, 0)
        answers = answer_with(self.backend, questions, self.prompts, self.cfg, self.seed)
        after = (self.usage.prompt_tokens, self.usage.generated_tokens) if self.usage else (0, 0)
        # the batch's tokens on its first row: sums over any re-batching of the rows stay exact
        tokens = {name: np.zeros(len(answers), dtype=np.int64) for name in TOKEN_COLUMNS}
        for name, b, a in zip(TOKEN_COLUMNS, before, after, strict=True):
            if len(answers):
                tokens[name][0] = a - b
        return {
            **tokens,
            "qid": np.array([a.qid for a in answers], dtype=object),
            "yes": np.array([YES_CODE[a.yes] for a in answers], dtype=np.int8),
            "p_yes": np.array([math.nan if a.p_yes is None else a.p_yes for a in answers]),
            "raw": np.array([a.raw for a in answers], dtype=object),
            "latency_s": np.array([a.latency_s for a in answers]),
        }


def _answers(batch: dict[str, np.ndarray]) -> list[Answer]:
    return [
        Answer(
            str(qid),
            YES_FROM_CODE.get(int(yes)),
            None if math.isnan(p) else float(p),
            str(raw),
            float(t),
        )
        for qid, yes, p, raw, t in zip(
            batch["qid"], batch["yes"], batch["p_yes"], batch["raw"], batch["latency_s"], strict=True
        )
    ]


def judge_pool_spec(cfg: JudgeConfig) -> PoolSpec:
    """The judge's pool as every pool is sized (pools.plan_pool): one engine per tensor-parallel group
    of GPUs (`num_actors`, or as many as the GPUs hold), else CPU actors."""
    where = f"of [[judges]] '{cfg.name}'"
    return PoolSpec(
        f"judge '{cfg.name}'",
        cfg.num_actors,
        float(cfg.tensor_parallel_size),
        cfg.device,
        count_key=f"num_actors {where}",
        gpus_key=f"tensor_parallel_size {where}",
        device_key=f"device {where}",
    )


def ray_asker(
    cfg: JudgeConfig,
    prompts: PromptSet,
    store: AnswerStore,
    *,
    seed: int,
    chunk_size: int,
    actor_cls: type = JudgeActor,
    account: JudgeAccount | None = None,
) -> Callable[[Sequence[Question]], None]:
    """An asker that sends the store's unanswered questions through an actor pool of `actor_cls`,
    persisting answers chunk by chunk, counting them in `account` and logging progress."""
    import ray

    account = account if account is not None else JudgeAccount(cfg.name)

    def ask(questions: Sequence[Question]) -> None:
        todo = store.missing(questions)
        account.from_store += len({q.qid for q in questions}) - len(todo)
        if not todo:
            return
        t0 = time.perf_counter()
        plan = fit_plan(plan_pool(judge_pool_spec(cfg), cluster_gpus()))
        account.actors, account.gpus = plan.pool.actors, plan.pool.actors * plan.pool.actor_gpus
        constructor = {"judge": cfg, "prompts": prompts, "seed": seed}
        pool = ActorPool(actor_cls, constructor, plan, cfg.batch_size, judge_resources(cfg))
        rows = [{c: getattr(q, c) for c in QUESTION_COLUMNS} for q in todo]
        progress = ray_stage_progress(f"filter: judge '{cfg.name}'", len(todo), "questions")
        # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1); the
        # store keys answers by qid, so no row reassembly is needed here.
        ds = pool.apply(ray.data.from_items(rows))
        for batch in ds.iter_batches(batch_size=chunk_size, batch_format="numpy"):
            answers = _answers(batch)
            fresh = [a for a in answers if a.qid not in store.answers]
            account.duplicates += len(answers) - len(fresh)
            store.add(fresh)
            account.asked += len(fresh)
            account.answered(len(fresh))
            for name in TOKEN_COLUMNS:
                setattr(account, name, getattr(account, name) + int(batch.get(name, np.zeros(1)).sum()))
            if progress is not None:
                progress.update(len(fresh))
        if progress is not None:
            progress.close()
        account.busy_s += time.perf_counter() - t0

    return ask


def judge_resources(cfg: JudgeConfig) -> dict[str, float]:
    """The custom Ray resource each of the judge's actors takes one unit of (`resource`), if any."""
    return {cfg.resource: 1.0} if cfg.resource else {}
