"""Run folders and caches on an object store, against a real S3-compatible server (moto's server
mode, tests/s3_server.py): object paths, verified cache entries, the run lease, committing and
pulling stages, and a whole job with its run folder and caches on the store."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import LocalCluster, make_smoke_images
from s3_server import S3Server, s3_server

from negrefine_ray.clip.text_cache import TextEmbeddingCache
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.atomic import write_json, write_parquet
from negrefine_ray.runfolder.cache_files import checksum_path, read_entry, write_entry
from negrefine_ray.runfolder.folder import _describe_artifact
from negrefine_ray.runfolder.mirror import RemoteRun
from negrefine_ray.runfolder.storage import ObjectPath, RunLease, is_uri, location, write_bytes_atomic

pytestmark = pytest.mark.cluster  # every test here uses the module's S3 server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        server.make_bucket("negrefine")
        yield server


@pytest.fixture
def prefix(s3: S3Server) -> ObjectPath:
    """A fresh prefix in the bucket for each test."""
    return ObjectPath.from_uri(s3.uri("negrefine", uuid.uuid4().hex[:8]))


def test_locations_are_paths_or_object_paths() -> None:
    assert is_uri("s3://b/x") and is_uri("gs://b") and not is_uri("runs") and not is_uri("file:///tmp")
    assert location("~/x") == Path.home() / "x"


def test_object_paths_read_write_list_and_delete(prefix: ObjectPath) -> None:
    a = prefix / "d" / "part-000001.parquet"
    assert not a.is_file() and not a.exists()
    write_bytes_atomic(a, b"one")
    (prefix / "d" / "part-000000.parquet").write_text("zero")
    (prefix / "d" / "other.txt").write_text("x")
    assert a.read_bytes() == b"one" and a.stat().st_size == 3 and a.stat().st_mtime_ns > 0
    assert [p.name for p in (prefix / "d").glob("part-*.parquet")] == [
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    assert a.stem == "part-000001" and a.parent == prefix / "d" and str(a).startswith("s3://negrefine/")
    assert "endpoint_override" not in str(a)  # printed locations carry no connection options
    with pytest.raises(FileNotFoundError):
        (prefix / "missing").read_bytes()
    a.unlink()
    a.unlink(missing_ok=True)
    assert not a.exists()
    with pytest.raises(FileNotFoundError):
        a.unlink()
    (prefix / "d").rmtree()
    assert list((prefix / "d").iterdir()) == []


def test_a_delete_the_store_refuses_is_raised_not_swallowed(prefix: ObjectPath) -> None:
    kept = prefix / "kept.txt"
    kept.write_text("x")

    class Refusing:  # a test double: moto cannot be told to deny one delete
        def __init__(self, fs: Any) -> None:
            self.fs = fs

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fs, name)

        def delete_file(self, path: str) -> None:
            raise OSError("AccessDenied")

    refused = ObjectPath(Refusing(kept.fs), kept.path, kept.uri)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="AccessDenied"):
        refused.unlink(missing_ok=True)
    assert kept.exists()


def test_cache_entries_on_the_store_are_verified(prefix: ObjectPath) -> None:
    cache = TextEmbeddingCache(prefix / "text-features")
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    cache.put("k1", ["a", "b", "c"], emb)
    texts, got = cache.get("k1")  # type: ignore[misc]
    assert texts == ["a", "b", "c"] and np.array_equal(got, emb)
    # a corrupted entry is a miss, and is deleted with its checksum
    path = cache.path("k1")
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    assert cache.get("k1") is None
    assert not path.exists() and not checksum_path(path).exists()
    # an entry without its checksum (writer killed between the two PUTs) is a miss, never a hit
    entry = prefix / "e.parquet"
    write_entry(entry, pa.table({"x": [1]}))
    checksum_path(entry).unlink()
    assert read_entry(entry, lambda t: t) is None


def _lease(prefix: ObjectPath, **record: object) -> None:
    (prefix / ".lease.json").write_text(json.dumps(record))


def test_the_run_lease_is_exclusive_and_expires(prefix: ObjectPath) -> None:
    first = RunLease(prefix, ttl=30, settle=0.1)
    first.acquire()
    try:
        with pytest.raises(StageError, match="in use by another negrefine-ray driver"):
            RunLease(prefix, ttl=30, settle=0.1).acquire()
    finally:
        first.release()
    assert not (prefix / ".lease.json").exists()
    # a lease of a live process elsewhere holds until its heartbeat is older than the ttl
    import time

    _lease(prefix, owner="x", host="elsewhere", pid=1, heartbeat=time.time())
    with pytest.raises(StageError, match="expires"):
        RunLease(prefix, ttl=30, settle=0.1).acquire()
    _lease(prefix, owner="x", host="elsewhere", pid=1, heartbeat=time.time() - 31)
    taken = RunLease(prefix, ttl=30, settle=0.1)
    taken.acquire()
    taken.release()
    # a lease of a dead process on this host is stale at once
    dead = 2**22 + 12345
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    _lease(prefix, owner="x", host=socket.gethostname(), pid=dead, heartbeat=time.time())
    again = RunLease(prefix, ttl=30, settle=0.1)
    again.acquire()
    again.release()


@pytest.mark.parametrize("cas", [True, False], ids=["compare-and-swap", "settle-and-reread"])
def test_a_paused_driver_that_lost_its_lease_commits_nothing(
    prefix: ObjectPath, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cas: bool
) -> None:
    """Issue 21, item 5: driver A paused past the ttl (here: its renewal stopped, as SIGSTOP stops it),
    B takes the run; when A resumes, its renewal must not overwrite B's lease, and A's next commit is
    refused, while B commits. With boto3's conditional writes (the default on S3) and without."""
    import time

    from negrefine_ray.runfolder import storage

    if not cas:
        monkeypatch.setattr(storage, "conditional_object", lambda obj: None)

    a = RemoteRun(prefix, tmp_path / "a")
    a.lease = RunLease(prefix, ttl=5, settle=0.1)
    a.lease.acquire()
    a.lease._stop.set()  # paused: no heartbeat from now on
    record = json.loads((prefix / ".lease.json").read_text())
    _lease(prefix, **{**record, "heartbeat": time.time() - 6})  # ...for longer than the ttl
    b = RemoteRun(prefix, tmp_path / "b")
    b.lease = RunLease(prefix, ttl=5, settle=0.1)
    b.lease.acquire()
    try:
        assert a.lease.beat() is False  # A resumes: it sees B's lease and writes nothing
        assert json.loads((prefix / ".lease.json").read_text())["owner"] == b.lease.owner
        _stage_folder(a.local, "mine", 1)
        with pytest.raises(StageError, match="lost its lease"):
            a.push_stage("mine")
        assert not (prefix / "mine").exists()
        _stage_folder(b.local, "mine", 2)
        b.push_stage("mine")
        assert json.loads((prefix / "mine" / "sub" / "info.json").read_text()) == {"v": 2}
    finally:
        b.lease.release()
        a.lease.release()  # releases nothing of B's
    assert not (prefix / ".lease.json").exists()


def test_two_drivers_racing_for_the_lease_give_it_to_one(prefix: ObjectPath) -> None:
    """Both read "no lease", then both write: on S3 the second create-if-absent is refused."""
    first, second = RunLease(prefix, ttl=30), RunLease(prefix, ttl=30)
    assert first._cas is not None and second._cas is not None  # boto3 (moto's dependency) is here
    first.acquire()
    try:
        assert second._cas.put(b"{}", if_match=None) is None  # its write as if it had read no lease
        with pytest.raises(StageError, match="in use by another negrefine-ray driver"):
            second.acquire()
    finally:
        first.release()
    assert not (prefix / ".lease.json").exists()


def _stage_folder(root: Path, name: str, value: int) -> None:
    write_parquet(root / name / "table.parquet", pa.table({"v": [value]}))
    write_json(root / name / "sub" / "info.json", {"v": value})
    artifacts = {a: _describe_artifact(root / name / a) for a in ("table.parquet", "sub/info.json")}
    write_json(root / name / "manifest.json", {"stage": name, "hash": str(value), "artifacts": artifacts})


def test_committed_stages_are_pulled_into_a_fresh_working_copy(prefix: ObjectPath, tmp_path: Path) -> None:
    first = RemoteRun(prefix, tmp_path / "a")
    _stage_folder(first.local, "corpus", 1)
    first.push_stage("corpus")
    assert first.has("corpus")
    _stage_folder(first.local, "mine", 2)  # finished locally, never committed
    second = RemoteRun(prefix, tmp_path / "b")
    assert second.pull() == ["corpus"]
    assert (second.local / "corpus" / "sub" / "info.json").read_text() == (
        first.local / "corpus" / "sub" / "info.json"
    ).read_text()
    assert not (second.local / "mine").exists()
    assert second.pull() == []  # the same manifest is not pulled twice
    # a recommit replaces the old objects: nothing of the old attempt is left beside the new one
    (prefix / "corpus" / "stray.bin").write_bytes(b"old")
    _stage_folder(first.local, "corpus", 3)
    first.push_stage("corpus")
    assert sorted(p.name for p in (prefix / "corpus").iterdir()) == ["manifest.json", "sub", "table.parquet"]
    assert second.pull() == ["corpus"]
    assert json.loads((second.local / "corpus" / "sub" / "info.json").read_text()) == {"v": 3}


def test_damage_in_the_store_is_found_by_a_driver_with_a_working_copy(
    prefix: ObjectPath, tmp_path: Path
) -> None:
    """Issue 21, item 6: a flipped byte or a deleted object in the store went unseen by a driver whose
    working copy had the stage; now it is committed again from that copy, or, when the copy is damaged
    too, the stage's manifests go so that it runs again."""
    run = RemoteRun(prefix, tmp_path / "copy")
    _stage_folder(run.local, "mine", 1)
    run.push_stage("mine")
    assert run.pull() == [] and run.repaired == []
    table = prefix / "mine" / "table.parquet"
    good = table.read_bytes()
    table.write_bytes(good[:10] + bytes([good[10] ^ 1]) + good[11:])  # one bit, same size
    (prefix / "mine" / "sub" / "info.json").unlink()
    assert run.pull() == [] and run.repaired == ["mine"]
    assert table.read_bytes() == good and (prefix / "mine" / "sub" / "info.json").is_file()
    assert RemoteRun(prefix, tmp_path / "fresh").pull() == ["mine"]  # the store is whole again
    table.write_bytes(b"x" * len(good))
    (run.local / "mine" / "sub" / "info.json").write_text("{}")  # the working copy is damaged too
    again = RemoteRun(prefix, run.local)
    assert again.pull() == [] and again.repaired == ["mine"]
    assert not (prefix / "mine" / "manifest.json").exists()
    assert not (run.local / "mine" / "manifest.json").exists()


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_smoke_job_on_the_store_survives_a_killed_driver(
    s3: S3Server, shared_cluster: LocalCluster, tmp_path: Path
) -> None:
    """The smoke job with its run folder and caches on the S3 server, its driver killed (SIGKILL, by
    PID) once the filter stage is committed; a second driver with an empty working copy resumes from
    the store: the committed stages are skipped and the results equal the golden smoke results.
    The driver connects to the session's `shared_cluster`, so killing it leaves no Ray process of its
    own behind (its actors end with its job)."""
    import signal
    import subprocess
    import sys
    import time

    import smoke_fingerprint

    env = shared_cluster.env
    cli = [sys.executable, "-m", "negrefine_ray"]
    images = make_smoke_images(tmp_path / "images")  # the session smoke run's images: the golden's
    run_uri, cache_uri = s3.uri("negrefine", "job/runs"), s3.uri("negrefine", "job/cache")

    def sets(local: str) -> list[str]:
        pairs = {
            "run.output_dir": run_uri, "run.cache_dir": cache_uri, "run.local_dir": tmp_path / local,
            "corpus.max_words_per_lexname": 40, "images.max_failed_fraction": 0.2,
            "datasets.demo-id.root": images / "id",
            "datasets.demo-ood.root": images / "ood", "datasets.demo-prototype.root": images / "prototype",
        }  # fmt: skip
        return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]

    run = ObjectPath.from_uri(run_uri) / "smoke"
    job = [*cli, "run", "jobs/smoke.toml", "--address", shared_cluster.gcs]
    first = subprocess.Popen([*job, *sets("local-1")], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while not (run / "filter" / "manifest.json").is_file():
            assert first.poll() is None, first.stdout.read() if first.stdout else ""
            assert time.monotonic() < deadline, "the filter stage was not committed in time"
            time.sleep(0.5)
    finally:
        os.kill(first.pid, signal.SIGKILL)  # by PID, also when the wait failed
        first.wait()
    assert not (run / "report" / "manifest.json").exists()
    second = subprocess.run([*job, *sets("local-2")], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1200)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    skipped = [line.split(":")[0] for line in second.stdout.splitlines() if "up to date, skipped" in line]
    assert skipped == ["corpus", "embed-text", "mine", "filter"], second.stdout
    assert f"results: {run}" in second.stdout
    # the store holds the whole run: a third working copy pulled from it has the golden results
    pulled = RemoteRun(run, tmp_path / "pulled" / "smoke")
    assert set(pulled.pull()) == {"corpus", "embed-text", "mine", "filter", "embed-images", "score", "report"}
    assert smoke_fingerprint.check(pulled.local) == []
    assert (run / "config.json").is_file() and not (run / ".lease.json").exists()
    cache = ObjectPath.from_uri(cache_uri)
    assert {p.name for p in cache.iterdir()} >= {"text-features", "image-embeddings", "answers", "thumbnails"}
    assert (pulled.local / "report" / "report.html").is_file()
    # the drivers' local disks hold working copies and WordNet's files, never a cache entry
    cache_folders = {"text-features", "image-embeddings", "answers"}
    assert not [p for p in (tmp_path / "local-2").rglob("*") if cache_folders & set(p.parts)]


def test_datasets_on_the_store_list_and_read_like_local_folders(s3: S3Server, tmp_path: Path) -> None:
    """Image bytes come from the store: an ImageFolder uploaded to the server lists like the local
    folder and every file decodes to the same pixels; a listed file gone from the store is "missing"."""
    from PIL import Image

    from negrefine_ray.clip.preprocess import CropSpec, DecodeOptions, read_and_decode
    from negrefine_ray.config import DatasetConfig
    from negrefine_ray.data.datasets import list_dataset

    local = tmp_path / "folder"
    remote = ObjectPath.from_uri(s3.uri("negrefine", f"data-{uuid.uuid4().hex[:8]}"))
    for i, rel in enumerate(["b/one.jpg", "a/two.png", "a/sub/three.jpg"]):
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 30), (60 * i, 90, 200)).save(local / rel)
        (remote / rel).write_bytes((local / rel).read_bytes())

    def listing(root: str) -> list[tuple[str, int, int]]:
        table = list_dataset(DatasetConfig(name="d", role="id", root=root, format="imagefolder")).table
        return list(zip(*(table.column(c).to_pylist() for c in ("path", "label", "size")), strict=True))

    remote_uri = s3.uri("negrefine", remote.path.split("/", 1)[1])
    assert listing(remote_uri) == listing(str(local))
    spec = CropSpec(resize=(24,), crop=(24, 24), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    options = DecodeOptions()
    for path, _, _ in listing(str(local)):
        (want, *_), status, _ = read_and_decode(str(local), path, [spec], options)
        (got, *_), status_remote, _ = read_and_decode(remote_uri, path, [spec], options)
        assert status == status_remote == "ok" and np.array_equal(got, want)
    # the report's thumbnails read the store's images, into a cache on the store, made once
    from negrefine_ray.report.thumbnails import PLACEHOLDER, thumbnails

    cache = ObjectPath.from_uri(s3.uri("negrefine", f"cache-{uuid.uuid4().hex[:8]}"))
    shown = [("d", "b/one.jpg"), ("d", "a/two.png"), ("d", "gone.jpg")]
    files, made = thumbnails(shown, {"d": remote_uri}, tmp_path / "report", cache, px=16)
    assert made == {"made": 2, "from_cache": 0, "unreadable": 1} and files["d", "gone.jpg"] == PLACEHOLDER
    assert (tmp_path / "report" / files["d", "b/one.jpg"]).read_bytes() == (
        cache / files["d", "b/one.jpg"]
    ).read_bytes()
    assert thumbnails(shown, {"d": remote_uri}, tmp_path / "again", cache, px=16)[1]["from_cache"] == 2
    (remote / "b" / "one.jpg").unlink()
    assert read_and_decode(remote_uri, "b/one.jpg", [spec], options)[1] == "missing"
