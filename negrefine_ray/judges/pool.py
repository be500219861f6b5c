"""NegFilter's LLM judges on a Ray Data actor pool: one engine per actor (one GPU, or a tensor-
parallel group of GPUs per actor; CPU actors where the cluster has no GPU), answers streamed back
to the driver and persisted chunk by chunk. An actor that dies is restarted by Ray and its batch
retried; an answer only counts once it is persisted, so no question is lost or recorded twice.
Actor input columns: qid, kind, label, id_label, rank; output: the answer store's columns."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from negrefine_ray.core.negfilter import PromptSet, Question
from negrefine_ray.judges import make_backend
from negrefine_ray.judges.base import Answer
from negrefine_ray.judges.llm import answer_with
from negrefine_ray.judges.store import YES_CODE, YES_FROM_CODE, AnswerStore
from negrefine_ray.pools import ActorPool, PoolSpec, cluster_gpus, fit_plan, plan_pool, require_columns

if TYPE_CHECKING:
    from negrefine_ray.config import JudgeConfig

QUESTION_COLUMNS = ("qid", "kind", "label", "id_label", "rank")


class JudgeActor:
    """Ray Data callable class: loads the backend once, answers one batch of questions per call."""

    def __init__(self, judge: JudgeConfig, prompts: PromptSet, seed: int) -> None:
        self.cfg, self.prompts, self.seed = judge, prompts, seed
        self.backend = make_backend(judge, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_columns(batch, QUESTION_COLUMNS, "JudgeActor")
        questions = [
            Question(str(qid), kind, str(label), str(id_label), int(rank))
            for qid, kind, label, id_label, rank in zip(*(batch[c] for c in QUESTION_COLUMNS), strict=True)
        ]
        answers = answer_with(self.backend, questions, self.prompts, self.cfg, self.seed)
        return {
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
) -> Callable[[Sequence[Question]], None]:
    """An asker that sends the store's unanswered questions through an actor pool of `actor_cls`."""
    import ray

    def ask(questions: Sequence[Question]) -> None:
        todo = store.missing(questions)
        if not todo:
            return
        plan = fit_plan(plan_pool(judge_pool_spec(cfg), cluster_gpus()))
        pool = ActorPool(actor_cls, {"judge": cfg, "prompts": prompts, "seed": seed}, plan, cfg.batch_size)
        rows = [{c: getattr(q, c) for c in QUESTION_COLUMNS} for q in todo]
        # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1); the
        # store keys answers by qid, so no row reassembly is needed here.
        ds = pool.apply(ray.data.from_items(rows))
        for batch in ds.iter_batches(batch_size=chunk_size, batch_format="numpy"):
            store.add(_answers(batch))

    return ask
