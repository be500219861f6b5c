"""The answer store: one judge's answers under one prompt set, persisted as verified Parquet shards
(cache_files: atomic write, sha256 sidecar, content checks) as they arrive, so an interrupted filter
re-asks only the questions without an answer and a finished one is reused by later runs.
Columns: qid, yes (1 yes, 0 no, -1 invalid), p_yes, raw, latency_s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from negrefine_ray.core.negfilter import PromptSet, Question
from negrefine_ray.judges.base import Answer
from negrefine_ray.runfolder.atomic import stable_hash
from negrefine_ray.runfolder.cache_files import (
    check_columns,
    check_no_nulls,
    check_values,
    read_entry,
    write_entry,
)
from negrefine_ray.runfolder.storage import Location, glob

ANSWER_SCHEMA = pa.schema(
    [("qid", pa.string()), ("yes", pa.int8()), ("p_yes", pa.float64()), ("raw", pa.string()),
     ("latency_s", pa.float64())]
)  # fmt: skip
YES_CODE: Mapping[bool | None, int] = {True: 1, False: 0, None: -1}
YES_FROM_CODE: Mapping[int, bool] = {1: True, 0: False}  # any other code: invalid (None)


def answer_store_root(cache_dir: Location, identity: dict[str, Any], prompts: PromptSet) -> Location:
    """The store's folder under `cache_dir`, keyed by the judge's identity and the prompts."""
    key = stable_hash({"judge": identity, "prompts": [prompts.system, prompts.proper, prompts.subcategory]})
    return cache_dir / "answers" / key[:32]


class AnswerStore:
    """Answers of one judge under one prompt set, as Parquet shards written atomically one chunk at
    a time; a shard is either complete or absent, so a crash loses at most the chunk in flight. A
    shard that fails verification (cache_files) is deleted and its questions count as unanswered."""

    def __init__(self, root: Location) -> None:
        self.root = root
        self.answers: dict[str, Answer] = {}
        self._next = 0  # above every shard number seen, deleted ones included
        for part in glob(root, "part-*.parquet"):
            self._next = max(self._next, _shard_number(part) + 1)
            for row in read_entry(part, _parse_shard) or []:
                yes = YES_FROM_CODE.get(row["yes"])
                self.answers[row["qid"]] = Answer(row["qid"], yes, row["p_yes"], row["raw"], row["latency_s"])

    def missing(self, questions: Sequence[Question]) -> list[Question]:
        seen: set[str] = set()
        out = []
        for q in questions:
            if q.qid not in self.answers and q.qid not in seen:
                seen.add(q.qid)
                out.append(q)
        return out

    def add(self, answers: Sequence[Answer]) -> None:
        if not answers:
            return
        table = pa.table(
            {
                "qid": [a.qid for a in answers],
                "yes": [YES_CODE[a.yes] for a in answers],
                "p_yes": [a.p_yes for a in answers],
                "raw": [a.raw for a in answers],
                "latency_s": [a.latency_s for a in answers],
            },
            schema=ANSWER_SCHEMA,
        )
        # Past every shard on disk (another store may share the folder) and every one ever seen here.
        self._next = max([self._next, *(_shard_number(p) + 1 for p in glob(self.root, "part-*.parquet"))])
        write_entry(self.root / f"part-{self._next:06d}.parquet", table)
        self._next += 1
        self.answers.update({a.qid: a for a in answers})


def _shard_number(part: Location) -> int:
    digits = part.stem.removeprefix("part-")
    return int(digits) if digits.isdigit() else -1


def _parse_shard(table: pa.Table) -> list[dict[str, Any]]:
    check_columns(table, {f.name: f.type for f in ANSWER_SCHEMA})
    check_no_nulls(table, ("qid", "yes"))
    check_values(table.column("yes"), "yes", YES_CODE.values())
    return table.to_pylist()
