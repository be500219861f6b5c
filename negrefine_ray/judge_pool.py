"""NegFilter's LLM judges on a Ray Data actor pool: one engine per actor (one GPU, or a tensor-
parallel group of GPUs per actor; CPU actors where the cluster has no GPU), answers streamed back
to the driver and persisted chunk by chunk. An actor that dies is restarted by Ray and its batch
retried; an answer only counts once it is persisted, so no question is lost or recorded twice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from negrefine_ray.config import JudgeConfig
from negrefine_ray.judges import Answer
from negrefine_ray.negfilter import PromptSet, Question
from negrefine_ray.resources import Pool, fit_pool_on_cluster

QUESTION_COLUMNS = ("qid", "kind", "label", "id_label", "rank")


class JudgeActor:
    """Ray Data callable class: loads the backend once, answers one batch of questions per call."""

    def __init__(self, judge: JudgeConfig, prompts: PromptSet, seed: int) -> None:
        from negrefine_ray.llm_judge import make_backend

        self.cfg, self.prompts, self.seed = judge, prompts, seed
        self.backend = make_backend(judge, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from negrefine_ray.llm_judge import answer_with

        questions = [
            Question(str(qid), kind, str(label), str(id_label), int(rank))
            for qid, kind, label, id_label, rank in zip(*(batch[c] for c in QUESTION_COLUMNS), strict=True)
        ]
        answers = answer_with(self.backend, questions, self.prompts, self.cfg, self.seed)
        return {
            "qid": np.array([a.qid for a in answers], dtype=object),
            "yes": np.array([{True: 1, False: 0, None: -1}[a.yes] for a in answers], dtype=np.int8),
            "p_yes": np.array([math.nan if a.p_yes is None else a.p_yes for a in answers]),
            "raw": np.array([a.raw for a in answers], dtype=object),
            "latency_s": np.array([a.latency_s for a in answers]),
        }


def _answers(batch: dict[str, np.ndarray]) -> list[Answer]:
    return [
        Answer(
            str(qid),
            {1: True, 0: False}.get(int(yes)),
            None if math.isnan(p) else float(p),
            str(raw),
            float(t),
        )
        for qid, yes, p, raw, t in zip(
            batch["qid"], batch["yes"], batch["p_yes"], batch["raw"], batch["latency_s"], strict=True
        )
    ]


def pool_size(cfg: JudgeConfig, cluster_gpus: int) -> tuple[int, int]:
    """(actors, GPUs per actor): one engine per tensor-parallel group of GPUs, or CPU actors."""
    if cluster_gpus == 0 or cfg.device == "cpu":
        return max(cfg.num_actors, 1), 0
    per_actor = cfg.tensor_parallel_size
    return cfg.num_actors or max(cluster_gpus // per_actor, 1), per_actor


def ray_asker(
    cfg: JudgeConfig,
    prompts: PromptSet,
    store: Any,
    *,
    seed: int,
    chunk_size: int,
    actor_cls: type = JudgeActor,
) -> Any:
    """An asker that sends the store's unanswered questions through an actor pool of `actor_cls`."""
    import ray

    def ask(questions: Sequence[Question]) -> None:
        todo = store.missing(questions)
        if not todo:
            return
        actors, gpus = pool_size(cfg, int(ray.cluster_resources().get("GPU", 0)))
        pool = Pool(
            f"judge '{cfg.name}'",
            actors,
            1.0,
            float(gpus),
            count_key=f"num_actors of [[judges]] '{cfg.name}'",
            count_fixed=cfg.num_actors > 0,
        )
        fit = fit_pool_on_cluster(pool).pool
        rows = [{c: getattr(q, c) for c in QUESTION_COLUMNS} for q in todo]
        ds = ray.data.from_items(rows).map_batches(
            actor_cls,
            fn_constructor_kwargs={"judge": cfg, "prompts": prompts, "seed": seed},
            batch_size=cfg.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=fit.actors),
            num_gpus=fit.actor_gpus,
            num_cpus=fit.actor_cpus,
        )  # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1)
        for batch in ds.iter_batches(batch_size=chunk_size, batch_format="numpy"):
            store.add(_answers(batch))

    return ask
