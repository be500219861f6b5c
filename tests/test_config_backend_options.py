"""Each judge backend owns its options (issue 22, item 3): its spec in judges/backends.py names the
`[[judges]]` keys it reads, and loading a job refuses a key its backend does not read (unless the key
holds its default), naming the judge, the key, the backends that read it and the backend's own list."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from negrefine_ray.config import JudgeConfig, build_config, load_config
from negrefine_ray.errors import ConfigError
from negrefine_ray.judges.backends import BACKENDS, COMMON_OPTIONS

FIELDS = [f.name for f in dataclasses.fields(JudgeConfig)]


def _job(**judge: object) -> dict:
    return {"filter": {"judges": ["j"]}, "judges": [{"name": "j", **judge}]}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_declared_option_is_a_judge_config_field(backend: str) -> None:
    spec = BACKENDS[backend]
    assert spec.accepted[: len(COMMON_OPTIONS)] == COMMON_OPTIONS
    assert len(set(spec.accepted)) == len(spec.accepted), "an option is declared twice"
    assert set(spec.accepted) <= set(FIELDS), sorted(set(spec.accepted) - set(FIELDS))


def test_every_judge_config_field_is_read_by_some_backend() -> None:
    read = {key for spec in BACKENDS.values() for key in spec.accepted}
    assert set(FIELDS) == read, sorted(set(FIELDS) - read)


@pytest.mark.parametrize(
    ("judge", "key", "readers"),
    [
        ({"backend": "wordnet", "mode": "generate"}, "mode", "transformers, vllm, fake"),
        ({"backend": "transformers", "model": "m", "max_model_len": 2048}, "max_model_len", "vllm"),
        ({"backend": "vllm", "model": "m", "prefix_cache": False}, "prefix_cache", "transformers"),
        ({"backend": "replay", "log_noun": "n.txt", "compound_head": False}, "compound_head", "wordnet"),
        ({"backend": "fake", "tensor_parallel_size": 2}, "tensor_parallel_size", "vllm"),
    ],
)
def test_a_key_the_backend_does_not_read_is_refused_with_its_list(
    judge: dict, key: str, readers: str
) -> None:
    backend = judge["backend"]
    with pytest.raises(ConfigError) as info:
        build_config(_job(**judge))
    message = str(info.value)
    assert message.startswith(f"judges.j.{key} = "), message
    assert f"judge 'j' has backend '{backend}', which does not read '{key}'" in message
    assert f"(backends that do: {readers})" in message
    assert message.endswith(f"Backend '{backend}' accepts: {', '.join(BACKENDS[backend].accepted)}.")


def test_an_override_of_a_key_the_backend_does_not_read_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"judges\.j\.threshold = 0\.7: judge 'j' has backend 'wordnet'"):
        build_config(_job(backend="wordnet"), ["judges.j.threshold=0.7"])


@pytest.mark.parametrize(
    "judge",
    [
        {"backend": "wordnet", "proper_rule": "capitalized", "compound_head": False},
        {"backend": "replay", "log_noun": "n.txt", "log_adj": "a.txt"},
        {"backend": "transformers", "model": "m", "device": "cpu", "batch_size": 8, "prefix_cache": False},
        {"backend": "vllm", "model": "m", "max_model_len": 512, "tensor_parallel_size": 2, "resource": "r"},
        {"backend": "fake", "model": "f", "mode": "generate", "max_new_tokens": 3, "threshold": 0.2},
    ],
)
def test_the_keys_a_backend_reads_are_accepted(judge: dict) -> None:
    built = build_config(_job(**judge)).judges[0]
    assert all(getattr(built, k) == v for k, v in judge.items())


def test_a_key_at_its_default_is_let_through_and_a_saved_config_round_trips(tmp_path: Path) -> None:
    """A key the backend does not read but that holds its default asks for nothing: it is accepted,
    so a saved config.json, which holds every key of every judge, loads again."""
    job = build_config(_job(backend="wordnet", mode="logprob", max_model_len=1024, log_noun=""))
    assert job.judges[0] == JudgeConfig(name="j", backend="wordnet")
    judges = [{"name": name, "backend": name} for name in BACKENDS]
    full = build_config({"filter": {"judges": list(BACKENDS)}, "judges": judges})
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(full.to_dict()))
    assert all(set(j) == set(FIELDS) for j in json.loads(saved.read_text())["judges"])
    assert load_config(saved) == full
