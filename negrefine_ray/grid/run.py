"""The grid driver: every point's config checked (load_config and preflight) before any work, then
each point run as a job of its own in `<run>/<point>/` (with its seeds, if any), every other point's
run folders offered as donors, so a stage whose settings and inputs hash the same as one already
computed is linked in, not run again; last, the grid summary.

Points run one after another in the grid's order (the first computes the shared stages, the later
ones link them in and compute only what differs), or with `grid.parallel = n`, n at once in threads
of the driver, sharing one lock per stage hash: the first point to need a stage computes it while the
others that need it wait, then link it in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from negrefine_ray.config import GridPoint, JobConfig, grid_points, point_config
from negrefine_ray.distributed.session import ensure_ray
from negrefine_ray.errors import ConfigError, NegRefineError
from negrefine_ray.pipeline import planned_stages, run_job, save_resolved_config
from negrefine_ray.preflight import preflight
from negrefine_ray.runfolder.donors import Donors, HashLocks
from negrefine_ray.runfolder.folder import StageResult, remote_run, run_folder_lock
from negrefine_ray.seeds import seed_run_dirs


def grid_configs(config: JobConfig) -> list[tuple[GridPoint, JobConfig]]:
    """Each point of the job's grid with the job as run there, in the grid's order."""
    return [(point, point_config(config, point)) for point in grid_points(config.grid)]


def run_grid(
    config: JobConfig,
    *,
    force: Iterable[str] = (),
    ray_address: str | None = None,
    until: str | None = None,
    on_result: Callable[[StageResult], None] | None = None,
    on_point: Callable[[GridPoint], None] | None = None,
) -> list[StageResult]:
    """Run every point of the grid (each a `run_job`, seeds included), then write the summary in
    the job's folder (not with `until`: the points have no reports yet)."""
    points = grid_configs(config)
    stages = [s.name for s in planned_stages(until=until)]
    for point, point_cfg in points:  # a missing dataset or an unknown architecture, before any work
        try:
            preflight(point_cfg, stages, ray_address)
        except NegRefineError as exc:
            raise ConfigError(f"[grid] point '{point.name}' ({', '.join(point.sets)}): {exc}") from None
    folders = [d for _, c in points for d in seed_run_dirs(c).values()]
    at_once = min(config.grid.parallel, len(points))
    donors = Donors(tuple(folders), HashLocks() if at_once > 1 else None)
    force = list(force)

    def run_point(
        point: GridPoint, point_cfg: JobConfig, report: Callable[[StageResult], None] | None
    ) -> Any:
        return run_job(
            point_cfg, force=force, ray_address=ray_address, until=until, on_result=report, donors=donors
        )

    results: list[StageResult] = []
    with run_folder_lock(config.run_dir):
        save_resolved_config(config)
        remote = remote_run(config)
        if remote is not None:
            remote.push_file("config.json")
        if at_once > 1:
            ensure_ray(config.ray, ray_address)  # once, before the points' threads would race to start it
            results = _at_once(points, at_once, run_point, on_result)
        else:
            for point, point_cfg in points:
                if on_point is not None:
                    on_point(point)
                results += run_point(point, point_cfg, on_result)
        if until is None:
            # scikit-learn and matplotlib (the summary's metrics and plots) are absent from the vLLM
            # environment, whose CLI imports this module
            from negrefine_ray.grid.summary import write_grid_summary

            written = write_grid_summary(config, points)
            if remote is not None:
                for name in written:
                    remote.push_file(name)
    return results


def _at_once(
    points: Sequence[tuple[GridPoint, JobConfig]],
    workers: int,
    run_point: Callable[..., list[StageResult]],
    on_result: Callable[[StageResult], None] | None,
) -> list[StageResult]:
    """The points in `workers` threads; each result line names its point. Every point ends (a stage
    cannot be stopped half-way) before the first failure, in grid order, is raised."""

    def reporter(point: GridPoint) -> Callable[[StageResult], None] | None:
        if on_result is None:
            return None
        return lambda r: on_result(dataclasses.replace(r, stage=f"{point.name}: {r.stage}"))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grid-point") as pool:
        futures = [pool.submit(run_point, p, c, reporter(p)) for p, c in points]
        wait(futures)
    return [result for future in futures for result in future.result()]
