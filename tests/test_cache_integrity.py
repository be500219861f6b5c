"""Cache entries are verified before use (issue 9 item 2): a flipped byte anywhere in an image, text
or answer cache file, a NaN in an embedding, an unknown status or an entry without a checksum is a
miss that deletes the entry with a warning, never different data; embed-images then recomputes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from negrefine_ray.clip.image_cache import EmbedResult, ImageEmbeddingCache
from negrefine_ray.clip.text_cache import TextEmbeddingCache
from negrefine_ray.config import build_config
from negrefine_ray.core.negfilter import proper_question
from negrefine_ray.judges.base import Answer
from negrefine_ray.judges.store import AnswerStore
from negrefine_ray.runfolder.atomic import write_parquet
from negrefine_ray.runfolder.cache_files import checksum_path, write_entry
from negrefine_ray.runfolder.folder import StageContext
from negrefine_ray.stages import embed_images as image_stage
from negrefine_ray.stages.embed_images import run_embed_images

RNG = np.random.default_rng(9)
PATHS = ["a.jpg", "b.jpg", "c.png", "d/e.jpg", "f.jpg"]
STATUS = np.array(["ok", "corrupt", "ok", "missing", "ok"])
ROWS = pa.table({"path": PATHS, "size": [10, 11, 12, -1, 14], "mtime_ns": [20, 21, 22, -1, 24]})


def image_result(dim: int = 8) -> EmbedResult:
    emb = RNG.normal(size=(len(PATHS), dim)).astype(np.float32)
    emb[STATUS != "ok"] = 0
    return EmbedResult(STATUS.copy(), np.array(["", "bad bytes", "", "gone", ""]), emb)


def same_images(a: EmbedResult, b: EmbedResult) -> bool:
    return (
        a.status.tolist() == b.status.tolist()
        and a.detail.tolist() == b.detail.tolist()
        and np.array_equal(a.embedding, b.embedding)
    )


def flip(data: bytes, offset: int) -> bytes:
    """One byte changed: alternately a single bit and all eight bits."""
    out = bytearray(data)
    out[offset] ^= 1 << (offset % 8) if offset % 2 else 0xFF
    return bytes(out)


def offsets(size: int, count: int = 400) -> list[int]:
    """About `count` offsets spread over the whole file, the first and last byte included."""
    return sorted({*range(0, size, max(1, size // count)), size - 1})


def assert_flips_never_change_data(
    file: Path, read: Callable[[], Any], same: Callable[[Any], bool], caplog: pytest.LogCaptureFixture
) -> tuple[int, int]:
    """Flip each offset of `file` and of its checksum, each on a fresh copy of the entry: every read
    returns the original data or a miss, and a miss has deleted the entry and logged why.
    Returns (misses, hits)."""
    originals = {file: file.read_bytes(), checksum_path(file): checksum_path(file).read_bytes()}
    misses = hits = 0
    for target, data in originals.items():
        for offset in offsets(len(data)):
            for path, content in originals.items():
                path.write_bytes(flip(content, offset) if path == target else content)
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                got = read()
            if got is None:
                misses += 1
                assert not file.exists() and not checksum_path(file).exists(), (target.name, offset)
                assert any(str(file) in r.getMessage() and "bad" in r.getMessage() for r in caplog.records)
            else:
                hits += 1
                assert same(got), f"flipping byte {offset} of {target.name} changed the data"
    return misses, hits


def assert_miss_deletes(
    file: Path, read: Callable[[], Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert read() is None
    assert not file.exists() and not checksum_path(file).exists()
    assert any(str(file) in r.getMessage() and reason in r.getMessage() for r in caplog.records), caplog.text


def test_image_cache_flipped_bytes_are_misses_never_other_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, result = ImageEmbeddingCache(tmp_path), image_result()
    cache.put("b", "k", ROWS, result)
    back = cache.get("b", "k", PATHS)
    assert back is not None and same_images(back, result)
    misses, _ = assert_flips_never_change_data(
        cache.path("b", "k"), lambda: cache.get("b", "k", PATHS), lambda got: same_images(got, result), caplog
    )
    assert misses > 400  # every flip of the Parquet bytes is caught


def test_image_cache_finite_guard_status_and_columns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ImageEmbeddingCache(tmp_path)
    for value in (np.nan, np.inf):
        bad = image_result()
        bad.embedding[2, 3] = value  # an ok row; put records a valid checksum, so only the guard sees it
        cache.put("b", "k", ROWS, bad)
        get = lambda: cache.get("b", "k", PATHS)  # noqa: E731
        assert_miss_deletes(cache.path("b", "k"), get, "NaN or infinite", caplog)
    nan_in_failed_row = image_result()
    nan_in_failed_row.embedding[1] = np.nan  # stored as an empty row: harmless
    cache.put("b", "k", ROWS, nan_in_failed_row)
    assert cache.get("b", "k", PATHS) is not None
    unknown = image_result()
    unknown.status[4] = "okay"
    cache.put("b", "k", ROWS, unknown)
    assert_miss_deletes(cache.path("b", "k"), lambda: cache.get("b", "k", PATHS), "'okay'", caplog)
    write_entry(cache.path("b", "k"), pa.table({"path": PATHS, "status": STATUS.tolist()}))
    assert_miss_deletes(cache.path("b", "k"), lambda: cache.get("b", "k", PATHS), "columns", caplog)


def test_entries_without_checksum_are_recomputed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries written before checksums existed (a plain Parquet file) are misses, then rewritten."""
    cache, result = ImageEmbeddingCache(tmp_path), image_result()
    cache.put("b", "k", ROWS, result)
    legacy = pq.read_table(cache.path("b", "k"))
    checksum_path(cache.path("b", "k")).unlink()
    assert_miss_deletes(cache.path("b", "k"), lambda: cache.get("b", "k", PATHS), "no checksum", caplog)
    write_parquet(cache.path("b", "k"), legacy)
    assert cache.get("b", "k", PATHS) is None
    cache.put("b", "k", ROWS, result)
    back = cache.get("b", "k", PATHS)
    assert back is not None and same_images(back, result)


def test_text_cache_flipped_bytes_and_non_finite_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TextEmbeddingCache(tmp_path)
    texts = ["a photo of a tench.", "a photo of a goldfish.", "a photo of a great white shark."]
    emb = RNG.normal(size=(3, 16)).astype(np.float32)
    path = cache.put("k", texts, emb)

    def same(got: tuple[list[str], np.ndarray]) -> bool:
        return got[0] == texts and np.array_equal(got[1], emb)

    misses, _ = assert_flips_never_change_data(path, lambda: cache.get("k"), same, caplog)
    assert misses > 400
    bad = emb.copy()
    bad[1, 7] = np.nan
    cache.put("k", texts, bad)
    assert_miss_deletes(path, lambda: cache.get("k"), "NaN or infinite", caplog)
    write_entry(path, pa.table({"text": texts}))
    assert_miss_deletes(path, lambda: cache.get("k"), "columns", caplog)


LABELS = [f"label {i}" for i in range(12)]


def answer_shards(root: Path) -> list[list[Answer]]:
    """Three shards of four answers each, every kind of value present."""
    store = AnswerStore(root)
    shards = []
    for s in range(3):
        chunk = [
            Answer(
                proper_question(label).qid,
                [True, False, None][i % 3],
                [0.75, None][i % 2],
                f"raw {i}",
                0.5 * i,
            )
            for i, label in enumerate(LABELS[4 * s : 4 * s + 4], start=4 * s)
        ]
        store.add(chunk)
        shards.append(chunk)
    return shards


def test_answer_store_bad_shard_is_dropped_and_asked_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shards = answer_shards(tmp_path)
    every = {a.qid: a for chunk in shards for a in chunk}
    without_middle = {a.qid: a for a in shards[0] + shards[2]}
    questions = [proper_question(label) for label in LABELS]
    middle = tmp_path / "part-000001.parquet"

    def read() -> dict[str, Answer] | None:
        answers = AnswerStore(tmp_path).answers
        if answers == every:
            return answers
        assert answers == without_middle  # a bad shard loses its answers, never the others'
        assert {q.qid for q in AnswerStore(tmp_path).missing(questions)} == {a.qid for a in shards[1]}
        return None

    misses, _ = assert_flips_never_change_data(middle, read, lambda got: got == every, caplog)
    assert misses > 400


def test_answer_store_never_overwrites_a_good_shard(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shards = answer_shards(tmp_path)
    last = (tmp_path / "part-000002.parquet").read_bytes()
    middle = tmp_path / "part-000001.parquet"
    middle.write_bytes(flip(middle.read_bytes(), 40))
    with caplog.at_level(logging.WARNING):
        store = AnswerStore(tmp_path)
    assert not middle.exists() and str(middle) in caplog.text
    again = [Answer(a.qid, a.yes, a.p_yes, a.raw, 9.0) for a in shards[1]]
    store.add(again)
    assert (tmp_path / "part-000002.parquet").read_bytes() == last
    assert sorted(p.name for p in tmp_path.glob("part-*.parquet")) == [
        "part-000000.parquet", "part-000002.parquet", "part-000003.parquet",
    ]  # fmt: skip
    assert AnswerStore(tmp_path).answers == {a.qid: a for a in shards[0] + shards[2] + again}
    (tmp_path / "part-000000.parquet").unlink()  # a missing shard, whatever the cause
    AnswerStore(tmp_path).add(shards[0])
    assert (tmp_path / "part-000004.parquet").is_file()
    assert (tmp_path / "part-000002.parquet").read_bytes() == last


def noise_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24 + seed, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "PNG")


@pytest.mark.ray
def test_embed_images_recomputes_a_bad_cache_entry(
    ray_session: None, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        noise_png(tmp_path / "data" / f"{i}.png", i)
    config = build_config(
        {
            "run": {"name": "t", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")},
            "model": {"arch": "nr-tiny-vit", "pretrained": "none", "init_seed": 3, "device": "cpu"},
            "images": {"batch_size": 4},
            "datasets": [{"name": "d", "role": "id", "root": str(tmp_path / "data"), "format": "files"}],
        }
    )

    def stage(name: str) -> tuple[dict[str, Any], pa.Table]:
        out = tmp_path / name
        out.mkdir()
        output = run_embed_images(StageContext(config, "embed-images", out, config.run_dir))
        return dict(output.stats), pq.read_table(out / "images.parquet")

    first, table = stage("first")
    assert first["embedded"] == 6 and first["variants"] == ["clip", "torchvision"]
    entries = sorted((tmp_path / "cache" / "image-embeddings").glob("*/*.parquet"))
    assert len(entries) == 2  # one entry per preprocessing variant
    entry = entries[0]
    data = entry.read_bytes()
    entry.write_bytes(flip(data, len(data) // 2))
    asked: list[list[str]] = []
    original = image_stage.embed_rows_ray

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(list(kwargs["specs"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(image_stage, "embed_rows_ray", spy)
    with caplog.at_level(logging.WARNING):
        second, again = stage("second")
    assert second["embedded"] == 6 and second["from_cache"] == 0 and again.equals(table)
    assert str(entry) in caplog.text
    assert len(asked) == 1 and len(asked[0]) == 1  # only the bad entry's variant was embedded again
    third, _ = stage("third")  # the recomputed entry was stored, with its checksum
    assert third["embedded"] == 0 and third["from_cache"] == 6


def test_an_unreadable_row_is_never_taken_from_the_cache(tmp_path: Path) -> None:
    """Issue 21, item 4: a file unreadable on the first run (mode 000) stayed "unreadable" after a
    chmod, even with --force embed-images: a read error is the environment's, not the file's."""
    cache = ImageEmbeddingCache(tmp_path)
    ok = image_result()
    status = np.array(["unreadable", *ok.status[1:]])  # (a fresh array: "unreadable" is longer)
    detail = np.array(["PermissionError: [Errno 13] Permission denied", *ok.detail[1:]])
    result = EmbedResult(status, detail, ok.embedding)
    cache.put("b" * 64, "k1", ROWS, result)
    assert cache.get("b" * 64, "k1", PATHS) is None  # the whole-listing entry: those rows read again
    donated, found = cache.reusable("b" * 64, ROWS)
    assert found.tolist() == [False, True, True, False, True]  # the unreadable and the unknown-size rows
    assert donated is not None and donated.status[1:3].tolist() == ["corrupt", "ok"]
