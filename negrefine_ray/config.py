"""Typed, frozen job configuration loaded from a TOML job file with `--set section.key=value` overrides.

Each `[section]` of a job file maps to one frozen dataclass below; every field declares its type and,
where it matters, its allowed range or choices in `field(metadata=...)`. Validation happens before any
work starts and every message names the key, the value seen and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from negrefine_ray.errors import ConfigError, did_you_mean


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"range": (lo, hi)}


@dataclass(frozen=True)
class RunConfig:
    """Where results go and the run-wide seed."""

    name: str = "run"
    output_dir: str = "runs"
    cache_dir: str = "~/.cache/negrefine-ray"
    seed: int = field(default=0, metadata=_range(0))


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray: a local single-node Ray unless an address is given (or RAY_ADDRESS is set)."""

    address: str = ""
    num_cpus: int = field(default=0, metadata=_range(0))  # 0: all cores of a local Ray
    num_gpus: int = field(default=-1, metadata=_range(-1))  # -1: what a local Ray detects


@dataclass(frozen=True)
class ModelConfig:
    """The CLIP model: an open_clip architecture and its weights.

    `pretrained` is an open_clip pretrained tag (downloaded by open_clip where there is internet), a
    path to a local checkpoint file, or "none" for random initialisation (results are meaningless).
    """

    arch: str = "ViT-B-16"
    pretrained: str = "openai"
    precision: Literal["fp32", "fp16", "bf16"] = field(
        default="fp16", metadata=_choices("fp32", "fp16", "bf16")
    )
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    init_seed: int = field(default=0, metadata=_range(0))  # random init when pretrained = "none"


@dataclass(frozen=True)
class CorpusConfig:
    """The WordNet candidate corpus (methods.md 0.3).

    `source` is "wordnet" (built from WordNet 3.0 through nltk) or a folder of word-list files in the
    published layout (`<lexname>.txt`). `lexnames` empty means the 27 published files.
    """

    source: str = "wordnet"
    rule: Literal["first-lemma", "all-lemmas"] = field(
        default="first-lemma", metadata=_choices("first-lemma", "all-lemmas")
    )
    lexnames: tuple[str, ...] = ()
    extra_lexnames: tuple[str, ...] = ()  # e.g. ("noun.animal", "noun.food"), absent from the lists
    max_words_per_lexname: int = field(default=0, metadata=_range(0))  # 0: all; >0 for smoke runs


@dataclass(frozen=True)
class LabelsConfig:
    """In-distribution labels: a named set ("imagenet1k", "imagenet10", ...) or a label file."""

    id_labels: str = "imagenet1k"


@dataclass(frozen=True)
class JobConfig:
    """A whole job: one field per `[section]` of the job file."""

    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    model: ModelConfig = ModelConfig()
    corpus: CorpusConfig = CorpusConfig()
    labels: LabelsConfig = LabelsConfig()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists), the form saved in the run folder."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir).expanduser() / self.run.name

    @property
    def cache_dir(self) -> Path:
        return Path(self.run.cache_dir).expanduser()


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
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
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
        return float(value) if tp is float else value
    raise ConfigError(f"{key} = {value!r} is not {_describe(tp)}; set it to {_describe(tp)}.")


def _check_metadata(key: str, value: Any, meta: Mapping[str, Any]) -> None:
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


def _build_section(name: str, values: Mapping[str, Any]) -> Any:
    cls = _section_type(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{name}.{key}"
        if key not in fields:
            raise ConfigError(
                f"Unknown key '{full}'.{did_you_mean(key, fields)} "
                f"Section [{name}] accepts: {', '.join(fields)}."
            )
        coerced = _coerce(full, value, hints[key])
        _check_metadata(full, coerced, fields[key].metadata)
        kwargs[key] = coerced
    return cls(**kwargs)


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


def build_config(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> JobConfig:
    """Validate a job mapping (as read from TOML) plus `section.key=value` overrides."""
    merged: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        if section not in section_names():
            raise ConfigError(
                f"Unknown section [{section}].{did_you_mean(section, section_names())} "
                f"Known sections: {', '.join(section_names())}."
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] must be a table of key = value pairs, got {values!r}.")
        merged[section] = dict(values)
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in section_names():
            raise ConfigError(
                f"--set {text!r}: unknown section '{section}'."
                f"{did_you_mean(section, section_names())} Known: {', '.join(section_names())}."
            )
        merged.setdefault(section, {})[key] = value
    return JobConfig(**{name: _build_section(name, merged.get(name, {})) for name in section_names()})


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a TOML job file (or a saved `config.json`) and apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Job file {path} does not exist; pass a TOML job file such as jobs/smoke.toml.")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Job file {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    return build_config(data, overrides)
