"""Loading a job: TOML (or a saved config.json) plus `--set section.key=value` overrides, validated
field by field (types, ranges, choices, plain names, finite numbers), per judge (the keys its backend
reads) and across sections (methods, judges, presets; checks.py), every message naming the key, the
value seen and the fix."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from negrefine_ray.config.checks import check_backend_options, check_references
from negrefine_ray.config.grid import GridPoint, build_grid, grid_points
from negrefine_ray.config.job import JobConfig
from negrefine_ray.config.sections import _PLAIN_NAME, PLAIN_NAME_MAX, JudgeConfig
from negrefine_ray.core.lines import NotUtf8, utf8_text
from negrefine_ray.errors import ConfigError, did_you_mean


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(JobConfig)]


def _section_type(name: str) -> type:
    return typing.get_type_hints(JobConfig)[name]  # type: ignore[no-any-return]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


# bool is a subclass of int in Python; a TOML `true` must not pass as an integer or number.
_SCALAR_CHECKS: dict[Any, Any] = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin is Literal:  # the field's choices are its type's values
        if value in typing.get_args(tp):
            return value
        close = did_you_mean(value, map(str, typing.get_args(tp))) if isinstance(value, str) else ""
        raise ConfigError(f"{key} = {value!r} is not {_describe(tp)}; set it to {_describe(tp)}.{close}")
    elif origin is tuple:
        if isinstance(value, list | tuple):
            inner = typing.get_args(tp)[0]
            return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    elif origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
    elif tp in _SCALAR_CHECKS and _SCALAR_CHECKS[tp](value):
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} is not a finite number; set it to a finite number.")
        return float(value) if tp is float else value
    raise ConfigError(f"{key} = {value!r} is not {_describe(tp)}; set it to {_describe(tp)}.")


def _check_metadata(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(value, tuple):  # list keys: each element obeys the field's rules
        for i, item in enumerate(value):
            _check_metadata(f"{key}[{i}]", item, meta)
        return
    if meta.get("plain_name") and (not _PLAIN_NAME.fullmatch(value) or value in (".", "..")):
        raise ConfigError(
            f"{key} = {value!r} is not a plain name; it becomes a folder or file name, so use letters, "
            f"digits, '.', '_' and '-' only, starting with a letter or digit (e.g. 'ninco')."
        )
    if meta.get("plain_name") and len(value) > PLAIN_NAME_MAX:
        raise ConfigError(
            f"{key} = {value[:20]!r}... has {len(value)} characters; it becomes part of folder and file "
            f"names, so use at most {PLAIN_NAME_MAX}."
        )
    if "choices" in meta and value not in meta["choices"]:
        choices = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(
            f"{key} = {value!r} is not allowed.{did_you_mean(str(value), meta['choices'])} "
            f"Choose one of {choices}."
        )
    lo, hi = meta.get("range", (None, None))
    if lo is not None and value < lo:
        raise ConfigError(f"{key} = {value!r} is below its minimum {lo}; use a value >= {lo}.")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} = {value!r} is above its maximum {hi}; use a value <= {hi}.")


def _build_dataclass(cls: Any, prefix: str, values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}.{key}"
        if key not in fields:
            raise ConfigError(
                f"Unknown key '{full}'.{did_you_mean(key, fields)} [{prefix}] accepts: {', '.join(fields)}."
            )
        coerced = _coerce(full, value, hints[key])
        _check_metadata(full, coerced, fields[key].metadata)
        kwargs[key] = coerced
    missing = [
        f.name
        for f in fields.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"[{prefix}] lacks the required key(s) {', '.join(missing)}; add them.")
    return cls(**kwargs)


def _table_list_type(name: str) -> Any | None:
    """The entry dataclass of an array-of-tables section (`[[datasets]]`), else None."""
    tp = _section_type(name)
    return typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None


def _build_entry(cls: Any, prefix: str, values: Mapping[str, Any]) -> Any:
    """One entry of an array of tables; a judge's keys must be ones its backend reads."""
    entry = _build_dataclass(cls, prefix, values)
    if isinstance(entry, JudgeConfig):
        check_backend_options(prefix, values, entry)
    return entry


def _build_section(name: str, values: Any) -> Any:
    if name == "grid":  # dotted keys to lists of values, not a dataclass's fields
        return build_grid(values, [s for s in section_names() if s != "grid"])
    entry = _table_list_type(name)
    if entry is None:
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table of key = value pairs, got {values!r}.")
        return _build_dataclass(_section_type(name), name, values)
    if not isinstance(values, list | tuple) or not all(isinstance(v, Mapping) for v in values):
        raise ConfigError(f"{name} must be an array of tables ([[{name}]] entries), got {values!r}.")
    built = tuple(_build_entry(entry, f"{name}.{v.get('name', i)}", v) for i, v in enumerate(values))
    names = [b.name for b in built]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"[[{name}]] names must be unique; {', '.join(duplicates)} appear twice.")
    return built


def _apply_override(merged: dict[str, Any], text: str) -> None:
    section, key, value = parse_override(text)
    if section not in section_names():
        raise ConfigError(
            f"--set {text!r}: unknown section '{section}'."
            f"{did_you_mean(section, section_names())} Known: {', '.join(section_names())}."
        )
    if _table_list_type(section) is None:
        merged.setdefault(section, {})[key] = value
        return
    entry_name, dot, entry_key = key.partition(".")
    entries = merged.setdefault(section, [])
    names = [e.get("name") for e in entries]
    if not dot or entry_name not in names:
        raise ConfigError(
            f"--set {text!r}: address an entry of [[{section}]] by name, as {section}.NAME.key=value; "
            f"names: {', '.join(map(str, names)) or 'none'}.{did_you_mean(entry_name, map(str, names))}"
        )
    entries[names.index(entry_name)] = {**entries[names.index(entry_name)], entry_key: value}


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `section.key=value`; the value is read as TOML (`64`, `true`, `["a","b"]`) or a string."""
    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {text!r} is not of the form section.key=value (e.g. --set run.seed=1).")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key.strip(), value


def _copy_tables(values: Any) -> Any:
    """A mutable copy of a section (a table or an array of tables) for applying overrides."""
    if isinstance(values, Mapping):
        return dict(values)
    if isinstance(values, list | tuple):
        return [dict(v) if isinstance(v, Mapping) else v for v in values]
    return values


def build_config(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> JobConfig:
    """Validate a job mapping (as read from TOML) plus `section.key=value` overrides."""
    for section in data:
        if section not in section_names():
            raise ConfigError(
                f"Unknown section [{section}].{did_you_mean(section, section_names())} "
                f"Known sections: {', '.join(section_names())}."
            )
    merged = {name: _copy_tables(values) for name, values in data.items()}
    for text in overrides:
        _apply_override(merged, text)
    empty: dict[str, Any] = {}
    job = JobConfig(
        **{
            name: _build_section(name, merged.get(name, [] if _table_list_type(name) else empty))
            for name in section_names()
        }
    )
    check_references(job)
    for point in grid_points(job.grid):  # every point is valid before any work
        point_config(job, point)
    return job


def point_config(job: JobConfig, point: GridPoint) -> JobConfig:
    """The job as run at one point of its grid, in `<run>/<point>/`: the job without its grid, with
    the point's values set as `--set` would set them; an invalid value names its point."""
    data = {name: values for name, values in job.to_dict().items() if name != "grid"}
    try:
        config = build_config(data, point.sets)
    except ConfigError as exc:
        raise ConfigError(f"[grid] point '{point.name}' ({', '.join(point.sets)}): {exc}") from None
    run = dataclasses.replace(config.run, output_dir=job.run_location, name=point.name)
    return dataclasses.replace(config, run=run)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a TOML job file (or a saved `config.json`) and apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Job file {path} does not exist; pass a TOML job file such as jobs/smoke.toml.")
    text = _job_text(path)
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Job file {path} is not valid {kind}: {exc}") from exc
    except RecursionError:
        raise ConfigError(
            f"Job file {path} nests tables or arrays too deeply for the {kind} parser; a job file needs "
            f"at most a few levels ([section], [[judges]], lists of values)."
        ) from None
    return build_config(data, overrides)


def _job_text(path: Path) -> str:
    """The job file as text: UTF-8, with or without a byte-order mark; any other encoding is an
    error that says how to convert it."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(
            f"Job file {path} is UTF-16 text; TOML job files are UTF-8: convert it, e.g. "
            f"`iconv -f utf-16 -t utf-8 {path.name} > job.toml`."
        )
    try:
        return utf8_text(data)
    except NotUtf8 as exc:
        raise ConfigError(
            f"Job file {path} is not UTF-8 (line {exc.line}, bytes {exc.raw!r}); TOML job files are "
            f"UTF-8: convert it, e.g. `iconv -f latin1 -t utf-8 {path.name} > job.toml`."
        ) from None
