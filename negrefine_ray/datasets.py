"""Dataset listings: every image of a dataset as (dataset, role, path, label, size, mtime_ns) rows in a
fixed order, read through pyarrow.fs so a root is a local path or a URI (s3://, gs://, hdfs://).

Follows torchvision's ImageFolder (classes sorted, files sorted by folder then name, IMG_EXTENSIONS),
OpenOOD's image lists (`<path> <label>`, split at the first space) and the ImageNet devkit
(methods.md 1.6, 3.5, 5.7, 7). The papers' benchmark sets are data in presets.py.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from negrefine_ray.artifacts import stable_hash
from negrefine_ray.config import DatasetConfig
from negrefine_ray.errors import NegRefineError

log = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS (ImageFolder ignores everything else, e.g. NINCO's .gif).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# `files` takes every image file, GIF included (OpenOOD's NINCO list has one).
FILES_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")
IMAGENET_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
IMAGENET_META = "meta.mat"
OOD_LABEL = -1
MISSING = -1  # size and mtime_ns of a listed file that does not exist

LISTING_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("role", pa.string()),
        ("path", pa.string()),  # POSIX path relative to the dataset root
        ("label", pa.int64()),  # class index for ID datasets, -1 for OOD
        ("size", pa.int64()),  # bytes, -1 when missing
        ("mtime_ns", pa.int64()),  # -1 when missing or unknown
    ]
)


@dataclass(frozen=True)
class Listing:
    """One dataset's rows (LISTING_SCHEMA), its resolved root, and the count before `limit`."""

    config: DatasetConfig
    root: str
    table: pa.Table
    total: int

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def missing(self) -> int:
        return int(np.count_nonzero(self.table.column("size").to_numpy() == MISSING))

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
        """Content identity of the listing: paths, sizes and mtimes in order (not the root or labels)."""
        t = self.table
        return stable_hash(
            [t.column("path").to_pylist(), t.column("size").to_pylist(), t.column("mtime_ns").to_pylist()]
        )


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


def safe_relative(path: str, where: str) -> str:
    """`path` normalised, refusing absolute paths and paths that climb out of the root."""
    norm = posixpath.normpath(path)
    if not path or path.startswith("/") or "://" in path or "\\" in path or norm.split("/")[0] == "..":
        raise NegRefineError(
            f"{where}: path {path!r} escapes the dataset root (absolute, '..' or a URI); image lists "
            f"must give paths relative to the root. Fix the list or the dataset's root."
        )
    return norm


def _require_dir(fs: pafs.FileSystem, base: str, ds: DatasetConfig) -> None:
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise NegRefineError(
            f"dataset '{ds.name}' root {ds.root!r} is not an existing folder; set datasets.{ds.name}.root "
            f"(or images.data_root for a preset) to the folder that holds its images."
        )


def _files_under(fs: pafs.FileSystem, base: str, extensions: tuple[str, ...]) -> list[pafs.FileInfo]:
    """Image files under `base`, recursively, in sorted(os.walk()) order: by folder path, then name."""
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(extensions)]
    return sorted(files, key=lambda i: (posixpath.dirname(i.path), i.base_name))


def _rel(base: str, path: str) -> str:
    return posixpath.relpath(path, base)


def _stat(info: pafs.FileInfo) -> tuple[int, int]:
    return int(info.size), MISSING if info.mtime_ns is None else int(info.mtime_ns)


def _list_imagefolder(fs: pafs.FileSystem, base: str) -> list[tuple[str, int, int, int]]:
    """(path, label, size, mtime) in ImageFolder order; label = index of the sorted class folder."""
    top = fs.get_file_info(pafs.FileSelector(base))
    classes = sorted(i.base_name for i in top if i.type == pafs.FileType.Directory)
    rows = []
    for label, cls in enumerate(classes):
        for info in _files_under(fs, posixpath.join(base, cls), IMG_EXTENSIONS):
            rows.append((_rel(base, info.path), label, *_stat(info)))
    return rows


def _list_files(fs: pafs.FileSystem, base: str) -> list[tuple[str, int, int, int]]:
    return [(_rel(base, i.path), OOD_LABEL, *_stat(i)) for i in _files_under(fs, base, FILES_EXTENSIONS)]


def _stat_listed(fs: pafs.FileSystem, base: str, paths: Sequence[str]) -> list[tuple[int, int]]:
    """(size, mtime) of each listed path, MISSING for absent ones: one listing per parent folder
    (a few calls, even on S3) rather than one stat per file."""
    found: dict[str, tuple[int, int]] = {}
    for folder in sorted({posixpath.dirname(p) for p in paths}):
        selector = pafs.FileSelector(posixpath.join(base, folder), allow_not_found=True)
        for info in fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                found[_rel(base, info.path)] = _stat(info)
    return [found.get(p, (MISSING, MISSING)) for p in paths]


def _read_text(location: str, what: str) -> str:
    fs, path = open_root(location)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read().decode("utf-8")  # type: ignore[no-any-return]
    except FileNotFoundError as exc:
        raise NegRefineError(f"{what} {location!r} does not exist; set it to an existing file.") from exc


def parse_image_list(text: str, source: str) -> list[tuple[str, int]]:
    """OpenOOD list lines `<relative path> <label>`, split at the first space; blank lines skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        path, _, label = line.rstrip("\r\n").partition(" ")
        where = f"{source} line {number}"
        try:
            value = int(label.strip())
        except ValueError as exc:
            raise NegRefineError(
                f"{where}: {line!r} is not '<relative path> <integer label>' (use -1 for OOD images)."
            ) from exc
        entries.append((safe_relative(path, where), value))
    return entries


def _list_imagelist(fs: pafs.FileSystem, base: str, ds: DatasetConfig) -> list[tuple[str, int, int, int]]:
    if not ds.image_list:
        raise NegRefineError(
            f"dataset '{ds.name}' has format 'imagelist' but no image_list; set datasets.{ds.name}."
            f"image_list to its list file (e.g. benchmark_imglist/imagenet/test_ninco.txt)."
        )
    entries = parse_image_list(_read_text(ds.image_list, f"datasets.{ds.name}.image_list"), ds.image_list)
    stats = _stat_listed(fs, base, [p for p, _ in entries])
    return [(p, label, *st) for (p, label), st in zip(entries, stats, strict=True)]


def imagenet_id_to_index(meta_mat: bytes) -> dict[int, int]:
    """ILSVRC2012_ID (1-based, devkit order) -> class index (position of the WNID in sorted order),
    from the devkit's data/meta.mat: the 1,000 synsets with num_children == 0, as torchvision reads it."""
    from scipy.io import loadmat

    synsets = loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    order = {wnid: i for i, wnid in enumerate(sorted(str(s["WNID"]) for s in leaves))}
    return {int(s["ILSVRC2012_ID"]): order[str(s["WNID"])] for s in leaves}


def _list_imagenet_val(fs: pafs.FileSystem, base: str, ds: DatasetConfig) -> list[tuple[str, int, int, int]]:
    """Class-folder layout (no image_list: val/<wnid>/*.JPEG, as ImageFolder) or the raw flat layout
    (image_list = the devkit's ILSVRC2012_validation_ground_truth.txt with meta.mat beside it)."""
    if not ds.image_list:
        return _list_imagefolder(fs, base)
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
    ids = [int(x) for x in _read_text(gt_location, f"datasets.{ds.name}.image_list").split()]
    unknown = sorted(set(ids) - set(id_to_index))
    if unknown:
        raise NegRefineError(
            f"{gt_location} has ILSVRC2012 ids {unknown[:5]} that {meta_location} does not define; "
            f"use the ground truth and meta.mat of the same ILSVRC2012 devkit."
        )
    paths = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(ids) + 1)]
    stats = _stat_listed(fs, base, paths)
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


def list_dataset(ds: DatasetConfig, seed: int = 0) -> Listing:
    """List one dataset (any format) into LISTING_SCHEMA rows, then apply its seeded `limit` sample."""
    fs, base = open_root(ds.root)
    _require_dir(fs, base, ds)
    if ds.format == "imagefolder":
        rows = _list_imagefolder(fs, base)
    elif ds.format == "imagelist":
        rows = _list_imagelist(fs, base, ds)
    elif ds.format == "imagenet-val":
        rows = _list_imagenet_val(fs, base, ds)
    elif ds.format == "files":
        rows = _list_files(fs, base)
    else:
        raise NegRefineError(
            f"datasets.{ds.name}.format = {ds.format!r} is unknown; use imagefolder, imagelist, "
            f"imagenet-val or files."
        )
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
        ],
        schema=LISTING_SCHEMA,
    )
    listing = Listing(ds, ds.root if "://" in ds.root else base, table, len(rows))
    if message := listing.expected_mismatch():
        log.warning(message)
    return listing


def list_datasets(datasets: Sequence[DatasetConfig], seed: int = 0) -> list[Listing]:
    return [list_dataset(ds, seed) for ds in datasets]
