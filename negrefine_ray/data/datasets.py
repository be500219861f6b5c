"""Dataset listings: every image of a dataset as (dataset, role, path, label, size, mtime_ns, status)
rows in a fixed order; a root is a local path or a URI (s3://, gs://, hdfs://) read through pyarrow.fs.

Follows torchvision's ImageFolder (classes = every sub-folder, sorted; files sorted by folder then
name, IMG_EXTENSIONS; a class without files refused), OpenOOD's image lists (image_lists.py) and the
ImageNet devkit (methods.md 1.6, 3.5, 5.7, 7). The papers' benchmark sets are data in data/presets.py.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from negrefine_ray.config import DatasetConfig
from negrefine_ray.data.file_walk import LISTED_MISSING, class_folders, confinement, files_under, stat_listed
from negrefine_ray.data.image_lists import decode_list, parse_ground_truth, parse_image_list, unique_entries
from negrefine_ray.errors import NegRefineError
from negrefine_ray.runfolder.atomic import stable_hash

log = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS (ImageFolder ignores everything else, e.g. NINCO's .gif).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# `files` takes every image file, GIF included (OpenOOD's NINCO list has one).
FILES_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")
IMAGENET_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
IMAGENET_META = "meta.mat"
OOD_LABEL = -1
Row = tuple[str, int, int, int, str]  # (path, label, size, mtime_ns, status)

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


def open_root(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) of a local path (`~` expanded, made absolute) or a filesystem URI."""
    if "://" in root:
        try:
            fs, base = pafs.FileSystem.from_uri(root)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise NegRefineError(
                f"Cannot open {root!r} ({exc}); use a local path or a URI pyarrow supports (s3://, gs://)."
            ) from exc
        return fs, base.rstrip("/")
    return pafs.LocalFileSystem(), posixpath.abspath(posixpath.expanduser(root))


def read_file(root: str, path: str) -> bytes:
    """Bytes of `path` under `root`; raises FileNotFoundError when it does not exist."""
    fs, base = _cached_root(root)
    with fs.open_input_stream(posixpath.join(base, path)) as fh:
        return fh.read()  # type: ignore[no-any-return]


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


def _require_list_file(location: str, what: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a list file that exists and is a file, else a NegRefineError naming `what`."""
    fs, path = open_root(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise NegRefineError(f"{what} {location!r} does not exist; set it to an existing file.")
    if kind != pafs.FileType.File:
        raise NegRefineError(f"{what} {location!r} is a folder, not a list file; set it to the list file.")
    return fs, path


def check_dataset_paths(ds: DatasetConfig) -> None:
    """The checks listing makes before reading anything: the root is an existing folder, and the
    image list (required by format "imagelist") is an existing file. The preflight runs them for
    every dataset before any stage starts."""
    fs, base = open_root(ds.root)
    _require_dir(fs, base, ds)
    if ds.format == "imagelist" and not ds.image_list:
        raise NegRefineError(
            f"dataset '{ds.name}' has format 'imagelist' but no image_list; set datasets.{ds.name}."
            f"image_list to its list file (e.g. benchmark_imglist/imagenet/test_ninco.txt)."
        )
    if ds.image_list:
        _require_list_file(ds.image_list, f"datasets.{ds.name}.image_list")


def _list_imagefolder(fs: pafs.FileSystem, base: str, within: str | None) -> list[Row]:
    """(path, label, size, mtime, status) in ImageFolder order; label = index of the sorted class
    folder. As torchvision's make_dataset, a class folder without an image file is refused: a stray
    folder (.ipynb_checkpoints, an emptied class) would otherwise take an index and shift the rest."""
    rows: list[Row] = []
    empty: list[str] = []
    for label, cls in enumerate(class_folders(fs, base)):
        found = files_under(fs, base, cls, extensions=IMG_EXTENSIONS, within=within)
        rows.extend((path, label, size, mtime, status) for path, size, mtime, status in found)
        if not found:
            empty.append(cls)
    if empty:
        raise NegRefineError(
            f"{base}: class folder(s) {', '.join(map(repr, empty))} hold no image file "
            f"({', '.join(IMG_EXTENSIONS)}), which torchvision's ImageFolder refuses; remove the folder(s) "
            f"(hidden ones such as .ipynb_checkpoints count as classes too) or add their images."
        )
    return rows


def _list_files(fs: pafs.FileSystem, base: str, within: str | None) -> list[Row]:
    found = files_under(fs, base, "", extensions=FILES_EXTENSIONS, within=within)
    return [(path, OOD_LABEL, size, mtime, status) for path, size, mtime, status in found]


def _read_list(location: str, what: str) -> str:
    """UTF-8 text of a list file given by local path or URI."""
    fs, path = _require_list_file(location, what)
    with fs.open_input_stream(path) as fh:
        return decode_list(fh.read(), location)


def _list_imagelist(
    fs: pafs.FileSystem, base: str, ds: DatasetConfig, within: str | None
) -> tuple[list[Row], int]:
    """Rows of the image list's unique paths, in first-line order, and the number of repeated lines."""
    text = _read_list(ds.image_list, f"datasets.{ds.name}.image_list")
    entries, duplicates = unique_entries(parse_image_list(text, ds.image_list), ds.image_list)
    stats = stat_listed(fs, base, [p for p, _ in entries], within)
    return [(p, label, *st) for (p, label), st in zip(entries, stats, strict=True)], duplicates


def imagenet_id_to_index(meta_mat: bytes) -> dict[int, int]:
    """ILSVRC2012_ID (1-based, devkit order) -> class index (position of the WNID in sorted order),
    from the devkit's data/meta.mat: the 1,000 synsets with num_children == 0, as torchvision reads it."""
    from scipy.io import loadmat

    synsets = loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    order = {wnid: i for i, wnid in enumerate(sorted(str(s["WNID"]) for s in leaves))}
    return {int(s["ILSVRC2012_ID"]): order[str(s["WNID"])] for s in leaves}


def _list_imagenet_val(fs: pafs.FileSystem, base: str, ds: DatasetConfig, within: str | None) -> list[Row]:
    """Class-folder layout (no image_list: val/<wnid>/*.JPEG, as ImageFolder) or the raw flat layout
    (image_list = the devkit's ILSVRC2012_validation_ground_truth.txt with meta.mat beside it)."""
    if not ds.image_list:
        return _list_imagefolder(fs, base, within)
    gt_location = ds.image_list
    meta_location = posixpath.join(posixpath.dirname(gt_location), IMAGENET_META)
    meta_fs, meta_path = open_root(meta_location)
    try:
        with meta_fs.open_input_stream(meta_path) as fh:
            id_to_index = imagenet_id_to_index(fh.read())
    except FileNotFoundError as exc:
        raise NegRefineError(
            f"dataset '{ds.name}': the devkit's {IMAGENET_META} is not beside {gt_location} (looked for "
            f"{meta_location}); keep the devkit's data/ folder intact or use the class-folder layout."
        ) from exc
    ids = parse_ground_truth(_read_list(gt_location, f"datasets.{ds.name}.image_list"), gt_location)
    unknown = sorted(set(ids) - set(id_to_index))
    if unknown:
        raise NegRefineError(
            f"{gt_location} has ILSVRC2012 ids {unknown[:5]} that {meta_location} does not define; "
            f"use the ground truth and meta.mat of the same ILSVRC2012 devkit."
        )
    paths = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(ids) + 1)]
    stats = stat_listed(fs, base, paths, within)
    return [(p, id_to_index[i], *st) for p, i, st in zip(paths, ids, stats, strict=True)]


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
    within, duplicates = confinement(fs, base, symlinks), 0
    if ds.format == "imagefolder":
        rows = _list_imagefolder(fs, base, within)
    elif ds.format == "imagelist":
        rows, duplicates = _list_imagelist(fs, base, ds, within)
    elif ds.format == "imagenet-val":
        rows = _list_imagenet_val(fs, base, ds, within)
    elif ds.format == "files":
        rows = _list_files(fs, base, within)
    else:
        raise NegRefineError(
            f"datasets.{ds.name}.format = {ds.format!r} is unknown; use imagefolder, imagelist, "
            f"imagenet-val or files."
        )
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
