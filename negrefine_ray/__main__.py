"""`python -m negrefine_ray`: the same CLI as `negrefine-ray` (the entry point `ray job submit` uses)."""

from negrefine_ray.cli import main

main()
