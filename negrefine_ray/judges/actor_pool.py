"""NegFilter's LLM judges on a Ray Data actor pool: one engine per actor (one GPU, or a tensor-
parallel group of GPUs per actor; CPU actors where the cluster has no GPU), answers streamed back
to the driver and persisted chunk by chunk. An actor that dies is restarted by Ray and its batch
retried; an answer only counts once it is persisted, so no question is lost or recorded twice.
Actor input columns: qid, kind, label, id_label, rank; output: the answer store's columns."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from negrefine_ray.core.negfilter import PromptSet, Question
from negrefine_ray.distributed.pools import (
    ActorPool,
    PoolSpec,
    ResidentPool,
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


def _answers(batch: Mapping[str, np.ndarray]) -> list[Answer]:
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


class RayAsker:
    """Asks the store's unanswered questions through the judge's actors, persisting answers chunk by
    chunk, counting them in `account` and logging progress. The actors start at the first question
    that needs them and stay for every later ask (NegFilter's two waves, corpus-scope chunks), so
    each loads its model once; `close` ends them (so does dropping the asker). A dead actor is
    restarted and its batch retried (distributed.ResidentPool); the store keys answers by qid, so no
    row reassembly is needed."""

    def __init__(
        self, cfg: JudgeConfig, prompts: PromptSet, store: AnswerStore, *, seed: int, chunk_size: int,
        actor_cls: type = JudgeActor, account: JudgeAccount | None = None,
    ) -> None:  # fmt: skip
        self.cfg, self.prompts, self.store, self.seed, self.chunk_size = cfg, prompts, store, seed, chunk_size
        self.actor_cls = actor_cls
        self.account = account if account is not None else JudgeAccount(cfg.name)
        self.pool: ResidentPool | None = None

    def _actors(self) -> ResidentPool:
        if self.pool is None:
            plan = fit_plan(plan_pool(judge_pool_spec(self.cfg), cluster_gpus()))
            self.account.actors = plan.pool.actors
            self.account.gpus = plan.pool.actors * plan.pool.actor_gpus
            constructor = {"judge": self.cfg, "prompts": self.prompts, "seed": self.seed}
            actors = ActorPool(
                self.actor_cls, constructor, plan, self.cfg.batch_size, judge_resources(self.cfg)
            )
            self.pool = ResidentPool(actors)
        return self.pool

    def __call__(self, questions: Sequence[Question]) -> None:
        store, account = self.store, self.account
        todo = store.missing(questions)
        account.from_store += len({q.qid for q in questions}) - len(todo)
        if not todo:
            return
        t0 = time.perf_counter()
        size = self.cfg.batch_size
        batches = [
            {c: np.array([getattr(q, c) for q in todo[i : i + size]], dtype=object) for c in QUESTION_COLUMNS}
            for i in range(0, len(todo), size)
        ]
        progress = ray_stage_progress(f"filter: judge '{self.cfg.name}'", len(todo), "questions")
        pending: list[Answer] = []
        pending_ids: set[str] = set()
        for batch in self._actors().map(batches):
            answers = _answers(batch)
            fresh = [a for a in answers if a.qid not in store.answers and a.qid not in pending_ids]
            account.duplicates += len(answers) - len(fresh)
            pending += fresh
            pending_ids.update(a.qid for a in fresh)
            for name in TOKEN_COLUMNS:
                setattr(account, name, getattr(account, name) + int(batch.get(name, np.zeros(1)).sum()))
            while len(pending) >= self.chunk_size:  # one store shard per chunk_size answers
                self._persist(pending[: self.chunk_size], progress)
                pending = pending[self.chunk_size :]
        self._persist(pending, progress)
        if progress is not None:
            progress.close()
        account.busy_s += time.perf_counter() - t0

    def _persist(self, answers: list[Answer], progress: Any) -> None:
        if answers:
            self.store.add(answers)
            self.account.asked += len(answers)
            self.account.answered(len(answers))
            if progress is not None:
                progress.update(len(answers))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def ray_asker(
    cfg: JudgeConfig,
    prompts: PromptSet,
    store: AnswerStore,
    *,
    seed: int,
    chunk_size: int,
    actor_cls: type = JudgeActor,
    account: JudgeAccount | None = None,
) -> RayAsker:
    """The judge's RayAsker: one set of actors for every ask."""
    return RayAsker(
        cfg, prompts, store, seed=seed, chunk_size=chunk_size, actor_cls=actor_cls, account=account
    )


def judge_resources(cfg: JudgeConfig) -> dict[str, float]:
    """The custom Ray resource each of the judge's actors takes one unit of (`resource`), if any."""
    return {cfg.resource: 1.0} if cfg.resource else {}
