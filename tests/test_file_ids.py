"""Files and folders that settings name enter their stages' hashes by content (issue 21, items 1-3):
editing a label file, a checkpoint, a replay judge's log or a judge's local model folder changes the
hash of exactly the stages whose settings name it, and a file is hashed once per (path, size,
mtime, inode)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from negrefine_ray.config import build_config
from negrefine_ray.pipeline import STAGES
from negrefine_ray.runfolder import file_ids
from negrefine_ray.runfolder.file_ids import content_id, local_path, named_file_ids
from negrefine_ray.runfolder.folder import MANIFEST, stage_hash


def _config(tmp: Path, **sections: dict[str, object]) -> object:
    return build_config({
        "run": {"name": "t", "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache")},
        "model": {"arch": "nr-tiny-vit", "pretrained": "none", "device": "cpu"},
        **sections,
    })  # fmt: skip


def _hashes(config: object, run_dir: Path) -> dict[str, str]:
    """Every stage's hash, upstream manifests stood in by empty ones (the settings are the point)."""
    for stage in STAGES:
        (run_dir / stage.name).mkdir(parents=True, exist_ok=True)
        (run_dir / stage.name / MANIFEST).write_text('{"artifacts": {}}')
    sourced = {s.name for s in STAGES if s.sources is not None}  # embed-images lists its datasets
    return {s.name: stage_hash(s, config, run_dir) for s in STAGES if s.name not in sourced}  # type: ignore[arg-type]


def _edit(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later mtime, whatever the clock


def test_a_label_file_is_hashed_by_content_in_the_stages_that_read_it(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("tench\ngoldfish\n")
    config = _config(tmp_path, labels={"id_labels": str(labels)})
    before = _hashes(config, tmp_path / "run")
    _edit(labels, "tinca tinca\ngoldfish\n")
    after = _hashes(config, tmp_path / "run")
    assert {s for s in before if before[s] != after[s]} == {"corpus", "embed-text"}
    _edit(labels, "tench\ngoldfish\n")  # the same content again: the same hashes
    assert _hashes(config, tmp_path / "run") == before


def test_a_checkpoint_is_hashed_by_content_in_every_stage_that_loads_or_names_it(tmp_path: Path) -> None:
    weights = tmp_path / "m.pt"
    weights.write_bytes(b"first weights")
    config = build_config({
        "run": {"name": "t", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")},
        "model": {"arch": "nr-tiny-vit", "pretrained": str(weights), "device": "cpu"},
    })  # fmt: skip
    before = _hashes(config, tmp_path / "run")
    weights.write_bytes(b"other weights")  # another checkpoint copied over the same path
    after = _hashes(config, tmp_path / "run")
    assert {s for s in before if before[s] != after[s]} == {"embed-text", "score", "report"}
    embed_images = next(s for s in STAGES if s.name == "embed-images")
    settings = embed_images.settings(config)  # type: ignore[arg-type]
    assert str(weights) in named_file_ids(settings, [str(weights)])


def test_a_replay_log_and_a_local_model_folder_are_hashed_in_the_filter_stage(tmp_path: Path) -> None:
    log_noun, log_adj, model = tmp_path / "noun.txt", tmp_path / "adj.txt", tmp_path / "model"
    log_noun.write_text("a\n")
    log_adj.write_text("b\n")
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"w1")
    config = _config(
        tmp_path,
        mining={"methods": ["negrefine"]},
        score={"methods": ["negrefine"]},
        filter={"judges": ["replayed", "local"]},
        judges=[
            {"name": "replayed", "backend": "replay", "log_noun": str(log_noun), "log_adj": str(log_adj)},
            {"name": "local", "backend": "transformers", "model": str(model), "device": "cpu"},
        ],
    )
    runs = tmp_path / "run"
    before = _hashes(config, runs)
    _edit(log_noun, "a\nc\n")
    after = _hashes(config, runs)
    assert {s for s in before if before[s] != after[s]} == {"filter"}
    (model / "sub" / "weights.bin").write_bytes(b"w2")
    assert {s for s, h in _hashes(config, runs).items() if after[s] != h} == {"filter"}


def test_content_ids_of_files_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("x")
    (folder / "b" / "c.txt").write_text("y")
    first = content_id(folder)
    assert first.startswith("tree:") and content_id(folder / "a.txt").startswith("sha256:")
    (folder / "b" / "c.txt").rename(folder / "b" / "d.txt")  # a renamed file is another tree
    assert content_id(folder) != first
    (folder / "b" / "d.txt").rename(folder / "b" / "c.txt")
    assert content_id(folder) == first
    (folder / "e.txt").write_text("")
    assert content_id(folder) != first


def test_only_values_that_look_like_existing_paths_are_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").mkdir()  # a folder named like a tag: the tag stays a tag
    (tmp_path / "labels.txt").write_text("x")
    assert local_path("openai") is None and local_path("none") is None and local_path("") is None
    assert local_path("s3://bucket/labels.txt") is None and local_path("missing/file.txt") is None
    assert local_path("labels.txt") == Path("labels.txt")
    settings = {"a": {"b": ["labels.txt", "openai"]}, "c": "labels.txt"}
    assert list(named_file_ids(settings, ["labels.txt", "openai", "unused.txt"])) == ["labels.txt"]


def test_a_file_is_hashed_once_per_path_size_mtime_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"1" * 1000)
    calls: list[Path] = []
    real = file_ids.file_sha256

    def counting(p: Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(file_ids, "file_sha256", counting)
    first = file_ids.file_id(path)
    assert file_ids.file_id(path) == first and len(calls) == 1
    _edit(path, "2" * 1000)  # same size, later mtime
    assert file_ids.file_id(path) != first and len(calls) == 2
