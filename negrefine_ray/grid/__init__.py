"""Grid jobs: a job's `[grid]` (config/grid.py) run point by point in `<run>/<point>/`, every stage
computed once per distinct input and linked into the other points, then one summary of the points
(`grid.json`, `grid.md`, `grid.html`, plots)."""

from negrefine_ray.grid.run import grid_configs, run_grid

__all__ = ["grid_configs", "run_grid"]
