"""Within-stage checkpoints of embed-images (clip/image_checkpoint.py), without Ray: a pass stopped
part-way leaves partial cache entries holding exactly the rows it finished, which `get` never takes
for a complete entry and which the resumed pass takes back instead of embedding them again; a second
interruption keeps the first one's rows; the partial entries go once the complete ones are stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from negrefine_ray.clip.image_cache import EmbedResult, ImageEmbeddingCache, image_cache_base, image_cache_key
from negrefine_ray.clip.image_checkpoint import PassCheckpoints, PassListing, partial_key, remove_partials
from negrefine_ray.config import DatasetConfig
from negrefine_ray.core.methods import embedding_name
from negrefine_ray.data.datasets import Listing, list_dataset
from negrefine_ray.distributed.pools import ROW
from negrefine_ray.runfolder.atomic import stable_hash
from negrefine_ray.stages._embed_images_cache import OnBatch, Todo, embed_with_cache

VARIANTS = ("clip", "torchvision")
BATCH = 4


class KilledPass(Exception):
    """Stands for whatever stops a pass: a lost driver connection, a failed pool, Ctrl-C."""


def vector(path: str, variant: str) -> np.ndarray:
    """A row's embedding, from its path and variant only (as CLIP's depends on the file only)."""
    seed = int(stable_hash([path, variant])[:8], 16)
    v = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


class FakePass:
    """An `embed` for embed_with_cache: files named bad* are "corrupt", the rest get `vector`; the
    rows go to `on_batch` BATCH at a time, and with `stop_after` the pass stops after that many
    batches (before it returns, even when they were all of them)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.paths: list[list[str]] = []  # the files of each pass

    def __call__(self, work: pa.Table, variants: Sequence[str], on_batch: OnBatch) -> dict[str, EmbedResult]:
        paths = work.column("path").to_pylist()
        self.paths.append(paths)
        status = np.array(["corrupt" if p.startswith("bad") else "ok" for p in paths])
        detail = np.array(["cut short" if s != "ok" else "" for s in status])
        ok = status == "ok"
        emb = {v: np.stack([vector(p, v) for p in paths]) * ok[:, None] for v in variants}
        for k, a in enumerate(range(0, len(paths), BATCH)):
            rows = np.arange(a, min(a + BATCH, len(paths)))
            on_batch(
                {ROW: rows, "status": status[rows], "detail": detail[rows]}
                | {embedding_name(v): emb[v][rows] for v in variants}
            )
            if k + 1 == self.stop_after:
                raise KilledPass(f"stopped after {k + 1} batches")
        return {v: EmbedResult(status, detail, emb[v]) for v in variants}


def make_listing(root: Path, names: Sequence[str]) -> Listing:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        if not (root / name).exists():  # a file written again would be a changed file (new mtime)
            (root / name).write_bytes(bytes([i]) * (10 + i))
    return list_dataset(DatasetConfig(name=root.name, role="ood", root=str(root), format="files"))


def todo_of(listings: Sequence[Listing]) -> dict[str, Todo]:
    todo = {}
    for li in listings:
        entries = {}
        for v in VARIANTS:
            base = image_cache_base("weights", "nr-tiny-vit", "fp32", {"variant": v}, li.root)
            entries[v] = (base, image_cache_key(base, li.fingerprint()))
        todo[li.name] = Todo(li, entries)
    return todo


def cache_files(cache: ImageEmbeddingCache) -> list[str]:
    return sorted(p.name for p in cache.root.glob("*/*.parquet"))


def complete_names(todo: Mapping[str, Todo]) -> list[str]:
    return sorted(f"{key}.parquet" for item in todo.values() for _, key in item.variants.values())


def test_a_stopped_pass_resumes_from_its_partial_entries(tmp_path: Path) -> None:
    a = make_listing(tmp_path / "a", [f"{i:02d}.jpg" for i in range(9)] + ["bad.jpg"])
    b = make_listing(tmp_path / "b", [f"{i:02d}.png" for i in range(7)])
    todo = todo_of([a, b])
    cache = ImageEmbeddingCache(tmp_path / "cache")

    first = FakePass(stop_after=2)  # rows 0-7 of a finished; never due, so kept when the pass fails
    with pytest.raises(KilledPass):
        embed_with_cache(todo, cache, first, checkpoint_s=3600)
    for v, (base, key) in todo["a"].variants.items():
        assert cache.get(base, key, a.table.column("path").to_pylist()) is None  # partial, never complete
        rows, found = cache.reusable(base, a.table)
        assert found.tolist() == [True] * 8 + [False] * 2 and rows is not None
        want = [vector(p, v) for p in a.table.column("path").to_pylist()[:8]]
        np.testing.assert_array_equal(rows.embedding[:8], want)
    assert not any(cache.reusable(base, b.table)[1].any() for base, _ in todo["b"].variants.values())

    second = FakePass(stop_after=2)  # a's last two rows (one bad) and b's first six
    with pytest.raises(KilledPass):
        embed_with_cache(todo, cache, second, checkpoint_s=0)  # a checkpoint after every batch
    assert second.paths == [["08.jpg", "bad.jpg", *(f"{i:02d}.png" for i in range(7))]]
    base, _ = todo["a"].variants["clip"]
    rows, found = cache.reusable(base, a.table)
    assert found.all() and rows is not None and rows.status.tolist() == ["ok"] * 9 + ["corrupt"]
    assert rows.detail[-1] == "cut short"  # the first interruption's rows were kept too

    third = FakePass()
    results, embedded = embed_with_cache(todo, cache, third, checkpoint_s=0)
    assert third.paths == [["06.png"]] and embedded == {"b": 1}
    assert cache_files(cache) == complete_names(todo)  # the partial entries are gone

    fresh_cache = ImageEmbeddingCache(tmp_path / "fresh")
    undisturbed, _ = embed_with_cache(todo, fresh_cache, FakePass(), checkpoint_s=0)
    for name in ("a", "b"):
        for v in VARIANTS:
            got, want = results[name][v], undisturbed[name][v]
            assert got.status.tolist() == want.status.tolist() and got.detail.tolist() == want.detail.tolist()
            np.testing.assert_array_equal(got.embedding, want.embedding)
    assert cache_files(fresh_cache) == complete_names(todo)


def test_a_complete_partial_entry_is_reused_whole_but_never_returned_by_get(tmp_path: Path) -> None:
    a = make_listing(tmp_path / "a", [f"{i}.jpg" for i in range(6)])
    todo = todo_of([a])
    cache = ImageEmbeddingCache(tmp_path / "cache")
    with pytest.raises(KilledPass):  # every batch came back; the driver died before the entry was stored
        embed_with_cache(todo, cache, FakePass(stop_after=2), checkpoint_s=3600)
    base, key = todo["a"].variants["clip"]
    assert cache.get(base, key, a.table.column("path").to_pylist()) is None
    assert cache.reusable(base, a.table)[1].all()
    again = FakePass()
    _, embedded = embed_with_cache(todo, cache, again, checkpoint_s=3600)
    assert again.paths == [] and embedded == {}  # nothing embedded again
    assert cache_files(cache) == complete_names(todo)
    assert cache.get(base, key, a.table.column("path").to_pylist()) is not None


def test_reused_rows_of_a_changed_listing_stay_in_its_partial_entries(tmp_path: Path) -> None:
    old = make_listing(tmp_path / "a", [f"{i}.jpg" for i in range(4)])
    cache = ImageEmbeddingCache(tmp_path / "cache")
    embed_with_cache(todo_of([old]), cache, FakePass(), checkpoint_s=3600)
    grown = make_listing(tmp_path / "a", [f"{i}.jpg" for i in range(10)])  # 6 new files, 4 unchanged
    todo = todo_of([grown])
    interrupted = FakePass(stop_after=1)
    with pytest.raises(KilledPass):
        embed_with_cache(todo, cache, interrupted, checkpoint_s=0)
    assert interrupted.paths == [[f"{i}.jpg" for i in range(4, 10)]]
    base, _ = todo["a"].variants["clip"]
    cache.path(base, image_cache_key(base, old.fingerprint())).unlink()  # only the partial entry is left
    rows, found = cache.reusable(base, grown.table)
    assert found.tolist() == [True] * 8 + [False] * 2 and rows is not None


class SlowCache(ImageEmbeddingCache):
    """A cache whose writes take `write_s` seconds of the test's clock."""

    def __init__(self, root: Path, clock: list[float], write_s: float) -> None:
        super().__init__(root)
        self.clock, self.write_s = clock, write_s
        self.puts: list[str] = []

    def put(self, base: str, key: str, rows: pa.Table, result: EmbedResult) -> None:
        super().put(base, key, rows, result)
        self.puts.append(key)
        self.clock[0] += self.write_s


def test_checkpoints_come_when_due_alternate_slots_and_survive_a_torn_write(tmp_path: Path) -> None:
    li = make_listing(tmp_path / "a", [f"{i}.jpg" for i in range(12)])
    (base, key), found = todo_of([li])["a"].variants["clip"], np.zeros(12, dtype=bool)
    now = [0.0]
    cache = SlowCache(tmp_path / "cache", now, write_s=2.0)
    listing = PassListing(li.table, np.ones(12, dtype=bool), {"clip": (base, key)}, {"clip": (None, found)})
    checkpoints = PassCheckpoints(cache, [listing], every_s=10.0, clock=lambda: now[0])
    paths = li.table.column("path").to_pylist()

    def batch(rows: range) -> dict[str, np.ndarray]:
        r = np.array(rows)
        return {
            ROW: r,
            "status": np.array(["ok"] * len(r)),
            "detail": np.array([""] * len(r)),
            "embedding@clip": np.stack([vector(paths[i], "clip") for i in r]),
        }

    checkpoints.observe(batch(range(0, 4)))
    assert cache.puts == []  # not due before 10 s
    now[0] = 10.0
    checkpoints.observe(batch(range(4, 8)))
    assert cache.puts == [partial_key(key, 0)]
    now[0] = 21.0  # 10 s after the last write, but it took 2 s: the next is due 20 s after it
    checkpoints.observe(batch(range(8, 10)))
    assert len(cache.puts) == 1
    now[0] = 32.0
    checkpoints.observe(batch(range(10, 12)))
    assert cache.puts == [partial_key(key, 0), partial_key(key, 1)]
    assert checkpoints.flush() == 0  # nothing new since the last write
    # A driver killed while rewriting slot 0 (its checksum goes first) still leaves slot 1.
    cache_root = cache.path(base, partial_key(key, 0))
    cache_root.with_name(cache_root.name + ".sha256").unlink()
    rows, got = cache.reusable(base, li.table)
    assert got.all() and rows is not None
    np.testing.assert_array_equal(rows.embedding, [vector(p, "clip") for p in paths])
    remove_partials(cache, base, key)
    assert cache_files(cache) == []
