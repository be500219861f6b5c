"""The `negrefine-ray` command line: `run` a job file, run one stage against a run folder, `doctor`.

Each command parses its arguments, loads the config, calls one pipeline function and prints where
the results are. User-fixable errors print one message and exit with status 2.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from negrefine_ray.config import JobConfig, load_config
from negrefine_ray.errors import NegRefineError, StageError
from negrefine_ray.grid import run_grid
from negrefine_ray.pipeline import STAGES, get_stage, pending_stages, run_job, run_pipeline
from negrefine_ray.runfolder.folder import StageResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Zero-shot OOD detection with negative labels (NegRefine and related methods) on Ray.",
)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a job-file key: section.key=value (repeatable)."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (default: ray.address, RAY_ADDRESS, local)."),
]


def _print_result(result: StageResult) -> None:
    if result.status == "ran":
        typer.echo(f"{result.stage}: {result.summary} [{result.seconds:.1f} s]")
    elif result.status == "reused":
        typer.echo(f"{result.stage}: {result.summary}")
    else:
        typer.echo(f"{result.stage}: up to date, skipped ({result.summary})")


def _load_target(target: Path, overrides: list[str] | None) -> JobConfig:
    """A job file, or a run folder whose saved config.json is reused."""
    if target.is_dir():
        saved = target / "config.json"
        if not saved.is_file():
            raise NegRefineError(
                f"{target} is a folder without config.json, so it is not a run folder; pass a job "
                f"file (jobs/*.toml) or a folder that `negrefine-ray run` created."
            )
        config = load_config(saved, overrides or [])
        # A run folder may have been moved: results stay where the folder is now.
        if config.run_dir.resolve() != target.resolve():
            config = load_config(
                saved,
                [*(overrides or []), f'run.output_dir="{target.parent}"', f'run.name="{target.name}"'],
            )
        return config
    return load_config(target, overrides or [])


def _within(config: JobConfig, name: str = "") -> str:
    """`name` in the run (its object-store URI, or the local folder), for the closing lines."""
    base = config.run_location.partition("?")[0]
    return f"{base}/{name}" if name else base


def _fail(exc: NegRefineError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


# Storage that fails under a running job: the disk fills up, the folder turns read-only, the store
# drops out. Stages commit whole (run folder: a rename; store: the manifest last), so nothing finished
# is lost and the same command resumes; say that instead of a traceback.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}


def _storage_error(exc: OSError, config: JobConfig | None) -> NegRefineError | None:
    """The message for a storage failure mid-run, or None for any other OSError (raised as is)."""
    where = exc.filename or (config.run_location.partition("?")[0] if config is not None else "")
    if exc.errno in _STORAGE_ERRNOS:
        free = ""
        folder = Path(str(where or ".")).expanduser()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        with contextlib.suppress(OSError):
            free = f"; {shutil.disk_usage(folder).free / 1e9:.2f} GB free on {folder}'s file system"
        what = f"{_STORAGE_ERRNOS[exc.errno]} writing {where}{free}"
    elif config is not None and "://" in config.run.output_dir + config.run.cache_dir and exc.errno is None:
        what = f"the object store failed ({exc})"
    else:
        return None
    return NegRefineError(
        f"Storage failed: {what}. Finished stages are kept (each commits whole): free space or fix the "
        f"storage, then run the same command again to resume after the last finished stage."
    )


@app.command()
def run(
    job: Annotated[Path, typer.Argument(help="TOML job file (or an existing run folder).")],
    set_: SetOpt = None,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="Recompute this stage even if up to date.")
    ] = None,
    address: AddressOpt = None,
    until: Annotated[str | None, typer.Option("--until", help="Stop after this stage.")] = None,
) -> None:
    """Run every stage of a job in order, skipping the stages whose outputs are up to date."""
    config: JobConfig | None = None
    try:
        config = _load_target(job, set_)
        if config.grid.axes:
            run_grid(
                config, force=force or (), ray_address=address, until=until, on_result=_print_result,
                on_point=lambda p: typer.echo(f"== grid point {p.name}: {', '.join(p.sets)}"),
            )  # fmt: skip
        else:
            run_job(config, force=force or (), ray_address=address, until=until, on_result=_print_result)
    except NegRefineError as exc:
        _fail(exc)
    except OSError as exc:
        error = _storage_error(exc, config)
        if error is None:
            raise
        _fail(error)
    pending = pending_stages()
    if pending:
        names = ", ".join(f"{s.name} ({s.planned_in})" for s in pending)
        typer.echo(f"not built yet, so not run: {names}")
    if config.grid.axes and until is None:
        typer.echo(f"grid summary: {_within(config, 'grid.md')}")
    elif len(set(config.run.seeds)) > 1 and until is None:
        typer.echo(f"mean ± std over seeds: {_within(config, 'report-seeds.md')}")
    typer.echo(f"results: {_within(config)}")


def _stage_command(name: str, help_text: str) -> None:
    def command(
        target: Annotated[Path, typer.Argument(help="Run folder (or a job file).")],
        set_: SetOpt = None,
        force: Annotated[bool, typer.Option("--force", help="Recompute even if up to date.")] = False,
        address: AddressOpt = None,
    ) -> None:
        config: JobConfig | None = None
        try:
            stage = get_stage(name)
            if stage.fn is None:
                raise StageError(f"Stage '{name}' is not built yet ({stage.planned_in}); nothing was run.")
            config = _load_target(target, set_)
            run_pipeline(
                config,
                force=[name] if force else [],
                ray_address=address,
                only=[name],
                on_result=_print_result,
            )
        except NegRefineError as exc:
            _fail(exc)
        except OSError as exc:
            error = _storage_error(exc, config)
            if error is None:
                raise
            _fail(error)
        typer.echo(f"results: {_within(config, name)}")

    command.__doc__ = help_text
    app.command(name=name)(command)


for _stage in STAGES:
    if _stage.fn is not None:
        _stage_command(_stage.name, f"Run the '{_stage.name}' stage: {_stage.summary}.")
    else:
        _stage_command(_stage.name, f"{_stage.summary} (not built yet: {_stage.planned_in}).")


@app.command("demo-images")
def demo_images(
    folder: Annotated[Path, typer.Argument(help="Where to write the images (replaced if present).")],
    seed: Annotated[int, typer.Option(help="Random seed of the generated images.")] = 0,
) -> None:
    """Generate the smoke job's image datasets (textures, with one corrupt file)."""
    from negrefine_ray.data.demo_data import make_demo_images

    typer.echo(f"demo images: {make_demo_images(folder, seed=seed)}")


@app.command()
def doctor(
    job: Annotated[Path | None, typer.Argument(help="Job file whose settings to check.")] = None,
    address: AddressOpt = None,
) -> None:
    """Check WordNet, CLIP weights, LLM backends, Ray and GPUs; print the fix for each problem."""
    from negrefine_ray.doctor import run_checks

    try:
        config = _load_target(job, None) if job is not None else JobConfig()
    except NegRefineError as exc:
        _fail(exc)
    ok = True
    for check in run_checks(config, address):
        mark = "ok  " if check.ok else ("warn" if check.optional else "FAIL")
        typer.echo(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            typer.echo(f"       fix: {check.fix}")
        ok = ok and (check.ok or check.optional)
    if not ok:
        raise typer.Exit(code=1)


def _setup_logging() -> None:
    """The package's log lines (progress without a terminal, warnings) on stderr with the time;
    the library's own loggers (Ray, transformers) keep their settings."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logger = logging.getLogger("negrefine_ray")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    from negrefine_ray.distributed.session import close_ray

    _setup_logging()
    try:
        app()
    except NegRefineError as exc:  # raised outside a command body, e.g. while importing a stage
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        close_ray()


if __name__ == "__main__":
    main()
