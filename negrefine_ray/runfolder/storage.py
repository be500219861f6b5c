"""Run folders and caches on object stores (s3://, gs://, any URI pyarrow.fs opens) or shared paths.

`location(text)` is a local `Path` for a path and an `ObjectPath` for a URI. `ObjectPath` has the few
pathlib methods the caches use, so the image-, text- and answer caches work on either unchanged.

Object stores have no rename, so nothing here relies on one:
- every object is written by one PUT (or one completed multipart upload), which makes it visible
  whole or not at all; a writer killed mid-upload leaves no object;
- a cache entry's sha256 sidecar is written after the entry, so an entry without a matching sidecar
  is a miss, never a wrong hit (cache_files);
- a stage's manifest is written after all its artifacts and lists each one's size and sha256, so it
  is the commit record: a stage without a manifest, or whose artifacts do not match it, is redone
  (runfolder, RemoteRun);
- the run-folder lock is a lease object (RunLease), since there is no exclusive create either.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from negrefine_ray.errors import ConfigError, StageError


def is_uri(text: str) -> bool:
    """True for "scheme://..." locations other than file://."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme != "file"


@dataclass(frozen=True)
class FileStat:
    st_size: int
    st_mtime_ns: int


class ObjectPath:
    """A file or folder on a pyarrow.fs file system, addressed like a pathlib.Path."""

    def __init__(self, fs: pafs.FileSystem, path: str, uri: str) -> None:
        self.fs, self.path, self.uri = fs, path.rstrip("/"), uri.rstrip("/")

    @classmethod
    def from_uri(cls, uri: str) -> ObjectPath:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise ConfigError(
                f"Cannot open {uri!r} ({exc}); use a local path or a URI pyarrow supports."
            ) from exc
        base, _, query = uri.partition("?")
        return cls(fs, path, base + ("?" + query if query else ""))

    # -- naming -------------------------------------------------------------------------------------
    def __truediv__(self, part: str) -> ObjectPath:
        base, sep, query = self.uri.partition("?")
        return ObjectPath(self.fs, posixpath.join(self.path, part), posixpath.join(base, part) + sep + query)

    def __str__(self) -> str:
        return self.uri.partition("?")[0]

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> ObjectPath:
        base, sep, query = self.uri.partition("?")
        return ObjectPath(self.fs, posixpath.dirname(self.path), posixpath.dirname(base) + sep + query)

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    # -- queries ------------------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def is_file(self) -> bool:
        return bool(self._info().type == pafs.FileType.File)

    def is_dir(self) -> bool:
        return bool(self._info().type == pafs.FileType.Directory)

    def exists(self) -> bool:
        return bool(self._info().type != pafs.FileType.NotFound)

    def stat(self) -> FileStat:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        return FileStat(int(info.size or 0), int(info.mtime_ns or 0))

    def iterdir(self) -> Iterator[ObjectPath]:
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        for info in sorted(self.fs.get_file_info(selector), key=lambda i: i.path):
            yield self / info.base_name

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Children (one level) whose names match `pattern`, in name order."""
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    # -- reads and writes ---------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            raise
        except OSError as exc:
            if not self.exists():
                raise FileNotFoundError(str(self)) from exc
            raise

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """One PUT: the object appears whole, or (writer killed) not at all."""
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except OSError:
            if self.exists():
                raise  # a real failure (permissions, the store down): never a silent leftover
            if not missing_ok:
                raise FileNotFoundError(str(self)) from None

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no folders to make: a prefix exists once an object is under it."""

    def rmtree(self) -> None:
        self.fs.delete_dir_contents(self.path, missing_dir_ok=True)


Location = Path | ObjectPath


def location(text: str) -> Location:
    """A local Path (user folder expanded) for a path, an ObjectPath for a URI."""
    return ObjectPath.from_uri(text) if is_uri(text) else Path(text).expanduser()


def glob(folder: Location, pattern: str) -> list[Location]:
    """The files directly in `folder` whose names match `pattern`, in name order."""
    found: list[Location] = [p for p in folder.glob(pattern) if p.is_file()]
    return sorted(found, key=lambda p: p.name)


def write_bytes_atomic(target: Location, data: bytes) -> None:
    """Write `data` to `target` so that readers see the old content or the new, never a part: a
    rename on local file systems, one PUT on object stores."""
    if isinstance(target, ObjectPath):
        target.write_bytes(data)
        return
    from negrefine_ray.runfolder.atomic import atomic_path

    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def local_copy_dir(local_root: Path, uri: str) -> Path:
    """The driver's working copy of the object-store folder `uri` under `local_root`."""
    from negrefine_ray.runfolder.atomic import stable_hash

    return local_root / "runs" / stable_hash(uri)[:16] / posixpath.basename(uri.partition("?")[0].rstrip("/"))


_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")


class ConditionalS3:
    """Compare-and-swap on one S3 object: conditional PUTs (If-None-Match: *, If-Match: ETag) through
    boto3, which pyarrow.fs does not expose. Only for s3:// paths where boto3 is installed
    (`conditional_object`); the endpoint, scheme and region come from the URI's options."""

    def __init__(self, obj: ObjectPath) -> None:
        import urllib.parse

        import boto3

        options = dict(urllib.parse.parse_qsl(obj.uri.partition("?")[2]))
        endpoint = options.get("endpoint_override")
        url = f"{options.get('scheme', 'https')}://{endpoint}" if endpoint else None
        self.client = boto3.client("s3", endpoint_url=url, region_name=options.get("region") or None)
        self.bucket, _, self.key = obj.path.partition("/")

    def get(self) -> tuple[bytes, str] | None:
        """(bytes, ETag) of the object, or None when there is none."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        return reply["Body"].read(), reply["ETag"]

    def etag(self) -> str | None:
        try:
            return str(self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"])
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def put(self, data: bytes, *, if_match: str | None) -> str | None:
        """Write `data` if the object's ETag is still `if_match` (None: if there is no object); the
        new ETag, or None when the condition failed (another writer came first)."""
        condition = {"IfMatch": if_match} if if_match is not None else {"IfNoneMatch": "*"}
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _CONDITION_FAILED:
                return None
            raise
        return str(reply["ETag"])


def conditional_object(obj: ObjectPath) -> ConditionalS3 | None:
    """Compare-and-swap for `obj` where the store and the installed clients offer it, else None."""
    if not obj.uri.startswith("s3://"):
        return None
    try:
        return ConditionalS3(obj)
    except ImportError:  # boto3 is optional: without it the lease relies on its settle-and-reread
        return None


class RunLease:
    """The run-folder lock on an object store: a lease object `<run>/.lease.json` holding its owner,
    host, process and a heartbeat renewed every `ttl / 4` seconds by a thread.

    Acquire: a lease whose heartbeat is younger than `ttl`, or whose owner is a live process on this
    host, refuses the run. On S3 with boto3 installed every write of the lease is a compare-and-swap
    (ConditionalS3): taking it is conditional on the lease read (or on there being none), renewing it
    on our last write, so of two drivers that raced exactly one wins, and a driver that lost its lease
    learns so from the refused write. Elsewhere: write our lease, wait `settle` seconds and read it
    back, backing off if another driver's lease replaced ours (exclusive on stores with
    read-after-write consistency as long as a PUT completes within `settle`), and renew by
    read-then-write. A driver killed without releasing leaves a lease that expires after `ttl`; one
    killed on this host is recognised at once (its process is gone).
    """

    def __init__(self, run: ObjectPath, ttl: float = 60.0, settle: float = 1.0) -> None:
        self.path, self.ttl, self.settle = run / ".lease.json", ttl, settle
        self.owner = uuid.uuid4().hex
        self.lost: str | None = None  # why the lease was lost, once another driver's replaced it
        self._cas = conditional_object(self.path)
        self._etag: str | None = None  # of our last write of the lease (compare-and-swap)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
        }

    def _read(self) -> dict[str, Any] | None:
        import json

        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn or foreign file holds no lease
        return data if isinstance(data, dict) else None

    def _held_by_other(self, lease: dict[str, Any] | None) -> str | None:
        if lease is None or lease.get("owner") == self.owner:
            return None
        age = time.time() - float(lease.get("heartbeat", 0))
        if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", -1))):
            return None
        if age >= self.ttl:
            return None
        return (
            f"process {lease.get('pid')} on {lease.get('host')}, heartbeat {age:.0f} s ago "
            f"(the lease expires {self.ttl - age:.0f} s from now if that process is gone)"
        )

    def _parse(self, data: bytes) -> dict[str, Any] | None:
        import json

        try:
            value = json.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def acquire(self) -> None:
        import json

        if self._cas is not None:
            current = self._cas.get()
            holder = self._held_by_other(self._parse(current[0]) if current else None)
            if holder is None:
                record = json.dumps(self._record()).encode()
                self._etag = self._cas.put(record, if_match=current[1] if current else None)
                if self._etag is None:
                    holder = "another driver that took it at the same moment"
        else:
            holder = self._held_by_other(self._read())
            if holder is None:
                self.path.write_text(json.dumps(self._record()))
                time.sleep(self.settle)
                holder = self._held_by_other(self._read())
        if holder is not None:
            raise StageError(
                f"Run folder {self.path.parent} is in use by another negrefine-ray driver ({holder}); "
                f"wait for it to finish or set run.name to another folder."
            )
        self._thread = threading.Thread(target=self._renew, name="negrefine-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4) and self.beat():
            pass

    def beat(self) -> bool:
        """Renew the heartbeat if the lease is still ours; if another driver's lease has replaced it
        (this one was paused past `ttl`), record that it is lost and write nothing. True while held."""
        import json

        if self.lost is None and self._cas is not None:
            self._etag = self._cas.put(json.dumps(self._record()).encode(), if_match=self._etag)
            if self._etag is None:
                self.lost = self._holder_now()
        elif self.lost is None:
            current = self._read()
            if current is not None and current.get("owner") != self.owner:
                self.lost = self._holder_now(current)
            else:
                self.path.write_text(json.dumps(self._record()))
        return self.lost is None

    def _holder_now(self, current: dict[str, Any] | None = None) -> str:
        current = current if current is not None else self._read()
        if current is None:
            return "the lease object was removed"
        return f"process {current.get('pid')} on {current.get('host')} holds it now"

    def check(self) -> None:
        """Before a commit: raise if the lease is lost or the store's lease is not our last write (a
        fencing check; the commit's own PUT is not conditional, so a driver paused for more than `ttl`
        between this check and that PUT can still write once)."""
        if self.lost is None and self._cas is not None:
            if self._cas.etag() != self._etag:
                self.lost = self._holder_now()
        elif self.lost is None:
            current = self._read()
            if current is not None and current.get("owner") != self.owner:
                self.lost = self._holder_now(current)
        if self.lost is not None:
            raise StageError(
                f"This driver lost its lease on {self.path.parent} ({self.lost}): it was paused or cut "
                f"off for more than run.lease_seconds = {self.ttl:g}, and another driver took the run. "
                f"It stops without committing; the other driver's results stand."
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        lease = self._read()
        if lease is not None and lease.get("owner") == self.owner:
            self.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
