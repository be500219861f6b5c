"""Judges at once: the scheduler starts tasks whose demand fits beside the running ones and queues
the others; the accounting's histogram and overlap; progress lines on a terminal and in logs."""

from __future__ import annotations

import io
import logging
import math
import threading
import time

import pytest

from negrefine_ray.judges.accounting import JudgeAccount, overlapping, p_yes_histogram
from negrefine_ray.judges.schedule import Task, run_concurrently
from negrefine_ray.progress import Progress


def test_tasks_that_fit_run_together_and_the_others_wait() -> None:
    both = threading.Barrier(2, timeout=20)  # a and b only pass it if they run at the same time
    log: list[str] = []

    def pair(name: str) -> str:
        log.append(f"{name} start")
        both.wait()
        time.sleep(0.05)
        log.append(f"{name} end")
        return name

    def big() -> str:
        log.append("big start")
        return "big"

    tasks = [
        Task("a", {"GPU": 1, "accelerator": 1}, lambda: pair("a")),
        Task("big", {"GPU": 2}, big),  # queued: a holds one of the two GPUs
        Task("b", {"GPU": 1, "accelerator": 1}, lambda: pair("b")),  # fits beside a: starts at once
    ]
    results = run_concurrently(tasks, {"GPU": 2, "accelerator": 2, "CPU": 4})
    assert results == {"a": "a", "big": "big", "b": "b"}
    assert log.index("big start") > max(log.index("a end"), log.index("b end"))


def test_a_task_larger_than_the_cluster_runs_alone_and_errors_propagate() -> None:
    ran: list[str] = []
    tasks = [
        Task("huge", {"GPU": 8}, lambda: ran.append("huge")),  # its pool's own fit check decides
        Task("bad", {"GPU": 1}, lambda: (_ for _ in ()).throw(RuntimeError("engine died"))),
        Task("later", {"GPU": 1}, lambda: ran.append("later")),
    ]
    with pytest.raises(RuntimeError, match="engine died"):
        run_concurrently(tasks, {"GPU": 1})
    assert ran == ["huge"]  # "later" never started after "bad" failed


def test_p_yes_histogram_counts_bins_threshold_and_missing() -> None:
    h = p_yes_histogram([0.0, 0.05, 0.5, 0.51, 0.99, 1.0, math.nan, None], threshold=0.5)
    assert h["counts"] == [2, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert h["above_threshold"] == 3 and h["without_p_yes"] == 2 and len(h["edges"]) == 11


def test_overlap_needs_answers_at_the_same_time() -> None:
    a = JudgeAccount("a", first_answer=10.0, last_answer=20.0)
    b = JudgeAccount("b", first_answer=15.0, last_answer=30.0)
    c = JudgeAccount("c", first_answer=20.5, last_answer=25.0)
    idle = JudgeAccount("idle")
    assert overlapping([c, idle, b, a]) == [("a", "b"), ("b", "c")]
    account = JudgeAccount(
        "x", asked=100, prompt_tokens=5000, gpus=2.0, busy_s=10.0, started=0.0, finished=12.0
    )
    stats = account.stats()
    assert (stats["questions_per_s"], stats["prompt_tokens_per_s"], stats["gpu_seconds"]) == (
        10.0,
        500.0,
        20.0,
    )
    assert stats["wall_s"] == 12.0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_without_a_terminal_logs_a_line_every_ten_seconds(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    progress = Progress("filter: judge 'q'", total=350, unit="questions", tty=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="negrefine_ray.progress"):
        for _ in range(35):
            clock.now += 1.0
            progress.update(10)
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # at 10, 20 and 30 s, then the end
    assert lines[0] == "filter: judge 'q': 100/350 questions (28.6%), 10.0 questions/s, ETA 25s"
    assert lines[-1].startswith("filter: judge 'q': 350/350 questions (100.0%)") and lines[-1].endswith(
        "ETA -"
    )


def test_progress_on_a_terminal_redraws_one_bar(caplog: pytest.LogCaptureFixture) -> None:
    clock, out = _Clock(), io.StringIO()
    progress = Progress("embed", total=4, unit="images", tty=True, stream=out, clock=clock)
    with caplog.at_level(logging.INFO, logger="negrefine_ray.progress"):
        for _ in range(4):
            clock.now += 0.5
            progress.update(1)
        progress.close()
    assert not caplog.records  # the bar, never log lines
    assert out.getvalue().count("\r") == 5 and out.getvalue().endswith("\n")
    assert "[########################] embed: 4/4 images (100.0%), 2.0 images/s" in out.getvalue()


def test_progress_does_not_repeat_a_final_line_already_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    progress = Progress("p", total=300, unit="rows", tty=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="negrefine_ray.progress"):
        for _ in range(30):
            clock.now += 1.0
            progress.update(10)
        progress.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["p: 100/300 rows (33.3%)",
                                                                      "p: 200/300 rows (66.7%)",
                                                                      "p: 300/300 rows (100.0%)"]  # fmt: skip


def test_without_a_terminal_ray_data_logs_no_progress_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.data import DataContext

    from negrefine_ray import progress
    from negrefine_ray.distributed import session as raysession

    ctx = DataContext.get_current()
    monkeypatch.setattr(ctx, "enable_progress_bars", True)
    monkeypatch.setattr(ctx, "print_on_execution_start", True)
    monkeypatch.setattr(progress, "interactive", lambda: True)
    raysession.quiet_ray_data()
    assert ctx.enable_progress_bars and ctx.print_on_execution_start  # a terminal keeps Ray Data's bars
    assert progress.ray_stage_progress("x", 10, "rows") is None
    monkeypatch.setattr(progress, "interactive", lambda: False)
    raysession.quiet_ray_data()
    assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
    assert isinstance(progress.ray_stage_progress("x", 10, "rows"), Progress)
