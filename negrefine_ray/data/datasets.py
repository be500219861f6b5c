"""Dataset listings: every image of a dataset as (dataset, role, path, label, size, mtime_ns, status)
rows in a fixed order; a root is a local path or a URI (s3://, gs://, hdfs://) read through pyarrow.fs.

Each format's reader is in the format table (data/formats.py); this module checks a dataset's paths,
dispatches to its reader and applies the seeded samples. The papers' benchmark sets are data in
data/benchmarks.py.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from negrefine_ray.config import DatasetConfig
from negrefine_ray.data.file_walk import LISTED_MISSING, confinement, open_root, require_list_file
from negrefine_ray.data.formats import FORMATS, OOD_LABEL, Format, Source
from negrefine_ray.data.image_lists import parse_image_list as parse_image_list  # tests import it here
from negrefine_ray.errors import NegRefineError
from negrefine_ray.runfolder.atomic import stable_hash

log = logging.getLogger(__name__)

LISTING_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("role", pa.string()),
        ("path", pa.string()),  # POSIX path relative to the dataset root
        ("label", pa.int64()),  # class index for ID datasets, -1 for OOD
        ("size", pa.int64()),  # bytes, -1 when missing or not to be read
        ("mtime_ns", pa.int64()),  # -1 when missing, not to be read or unknown
        # "" = to be read; else the failure kind found while listing ("missing", "outside-root")
        ("status", pa.string()),
    ]
)


@dataclass(frozen=True)
class Listing:
    """One dataset's rows (LISTING_SCHEMA), its resolved root, the count before `limit`, and the
    number of image-list lines left out because they repeat an earlier line's path."""

    config: DatasetConfig
    root: str
    table: pa.Table
    total: int
    duplicates: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def missing(self) -> int:
        return int(
            np.count_nonzero(self.table.column("status").to_numpy(zero_copy_only=False) == LISTED_MISSING)
        )

    def expected_mismatch(self) -> str | None:
        """A message when `expected` is set and differs from the listed count (before `limit`)."""
        exp = self.config.expected
        if exp and exp != self.total:
            return (
                f"dataset '{self.name}' lists {self.total:,} images at {self.root}, expected {exp:,} "
                f"(methods.md 7); check the root and image list, or set datasets.{self.name}.expected."
            )
        return None

    def fingerprint(self) -> str:
        """Content identity of the listing: paths, sizes, mtimes and statuses in order (not the root or
        labels). Statuses enter only when one is not "" or "missing" (which a size of -1 already
        says), so listings without such rows keep the fingerprint they had before statuses existed."""
        t = self.table
        parts = [t.column("path").to_pylist(), t.column("size").to_pylist(), t.column("mtime_ns").to_pylist()]
        status = t.column("status").to_pylist()
        if set(status) - {"", LISTED_MISSING}:
            parts.append(status)
        return stable_hash(parts)


def read_file(root: str, path: str) -> bytes:
    """Bytes of `path` under `root`; raises FileNotFoundError when it does not exist."""
    fs, base = _cached_root(root)
    with fs.open_input_stream(posixpath.join(base, path)) as fh:
        return fh.read()  # type: ignore[no-any-return]


def file_stat(root: str, path: str) -> tuple[int, int] | None:
    """(size, modification time in ns) of `path` under `root`, or None when it is not a file."""
    fs, base = _cached_root(root)
    info = fs.get_file_info(posixpath.join(base, path))
    return (info.size, info.mtime_ns) if info.type == pafs.FileType.File else None


_ROOTS: dict[str, tuple[pafs.FileSystem, str]] = {}


def _cached_root(root: str) -> tuple[pafs.FileSystem, str]:
    # One filesystem object per root and process: creating an S3 client costs far more than a read.
    if root not in _ROOTS:
        _ROOTS[root] = open_root(root)
    return _ROOTS[root]


def _require_dir(fs: pafs.FileSystem, base: str, ds: DatasetConfig) -> None:
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise NegRefineError(
            f"datasets.{ds.name}.root = {ds.root!r} is not an existing folder; set it (or "
            f"images.data_root for a preset) to the folder that holds the dataset's images."
        )


def _format(ds: DatasetConfig) -> Format:
    """The dataset's format from the table (a job file's format is checked on loading already)."""
    if ds.format not in FORMATS:
        raise NegRefineError(
            f"datasets.{ds.name}.format = {ds.format!r} is unknown; use one of {', '.join(FORMATS)}."
        )
    return FORMATS[ds.format]


def check_dataset_paths(ds: DatasetConfig) -> None:
    """The checks listing makes before reading anything: the root is an existing folder, and the
    image list (required by the formats that read one, such as "imagelist") is an existing file. The
    preflight runs them for every dataset before any stage starts."""
    fs, base = open_root(ds.root)
    _require_dir(fs, base, ds)
    fmt = _format(ds)
    if fmt.needs_list and not ds.image_list:
        raise NegRefineError(
            f"dataset '{ds.name}' has format '{ds.format}' but no image_list; set datasets.{ds.name}."
            f"image_list to its list file (e.g. {fmt.list_example})."
        )
    if ds.image_list:
        require_list_file(ds.image_list, f"datasets.{ds.name}.image_list")


def sample_indices(n: int, limit: int, seed: int, name: str) -> np.ndarray:
    """Sorted indices of a seeded sample of `limit` of `n` rows (all rows when limit is 0 or >= n).

    The generator is seeded by (run.seed, a stable hash of the dataset name), so each dataset gets its
    own sample and adding a dataset changes no other dataset's sample.
    """
    if limit <= 0 or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, int(stable_hash(name)[:15], 16)])
    return np.sort(rng.choice(n, size=limit, replace=False))


def sample_per_class(labels: list[int], per_class: int, seed: int, name: str) -> np.ndarray:
    """Sorted indices of a seeded sample of up to `per_class` rows of each label (all rows of a label
    with fewer; everything when per_class is 0), e.g. InterNeg's 16 prototype images per class. Each
    label draws from its own generator, seeded by (run.seed, the dataset name's hash, the label)."""
    if per_class <= 0:
        return np.arange(len(labels))
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    keep: list[int] = []
    for label, rows in by_label.items():
        if len(rows) <= per_class:
            keep += rows
            continue
        rng = np.random.default_rng([seed, int(stable_hash(name)[:15], 16), label & (2**63 - 1)])
        keep += [rows[j] for j in rng.choice(len(rows), size=per_class, replace=False)]
    return np.sort(np.array(keep, dtype=np.int64))


Symlinks = Literal["follow", "within-root"]


def list_dataset(ds: DatasetConfig, seed: int = 0, *, symlinks: Symlinks = "follow") -> Listing:
    """List one dataset (any format) into LISTING_SCHEMA rows, then apply its seeded `per_class` and
    `limit` samples.

    Bad input is refused with a NegRefineError naming the file (and line) and the fix: a file or
    folder name that is not UTF-8 (Arrow cannot hold it, so it is not a recorded failure), a list that
    is not UTF-8, a folder as list, a bad line, a path listed with two labels, an empty class folder.
    What is known bad per file is a row with a status instead: "missing" (a broken link, a listed path
    that does not exist) and, with symlinks = "within-root", "outside-root" (a link that resolves
    outside the real root, never read; "follow" reads it, as torchvision does). Links exist only
    under local roots.
    """
    fs, base = open_root(ds.root)
    check_dataset_paths(ds)
    source = Source(ds.name, fs, base, ds.image_list, confinement(fs, base, symlinks))
    rows, duplicates = _format(ds).read(source)
    if ds.per_class:
        rows = [rows[i] for i in sample_per_class([r[1] for r in rows], ds.per_class, seed, ds.name)]
    keep = sample_indices(len(rows), ds.limit, seed, ds.name)
    kept = [rows[i] for i in keep]
    n = len(kept)
    label = [OOD_LABEL if ds.role == "ood" else r[1] for r in kept]
    table = pa.table(
        [
            pa.array([ds.name] * n, pa.string()),
            pa.array([ds.role] * n, pa.string()),
            pa.array([r[0] for r in kept], pa.string()),
            pa.array(label, pa.int64()),
            pa.array([r[2] for r in kept], pa.int64()),
            pa.array([r[3] for r in kept], pa.int64()),
            pa.array([r[4] for r in kept], pa.string()),
        ],
        schema=LISTING_SCHEMA,
    )
    listing = Listing(ds, ds.root if "://" in ds.root else base, table, len(rows), duplicates)
    if message := listing.expected_mismatch():
        log.warning(message)
    return listing


def list_datasets(
    datasets: Sequence[DatasetConfig], seed: int = 0, *, symlinks: Symlinks = "follow"
) -> list[Listing]:
    return [list_dataset(ds, seed, symlinks=symlinks) for ds in datasets]
