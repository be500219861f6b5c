"""The dataset formats: one table, `FORMATS`, from each format's name to the function that lists its
images and a line saying what it reads. The config takes `datasets.format`'s choices from it and the
listing dispatches through it, so adding a format is one reader and one entry. It imports nothing of
the config, which sits above it.

Follows torchvision's ImageFolder (classes = every sub-folder, sorted; files sorted by folder then
name, IMG_EXTENSIONS; a class without files refused), OpenOOD's image lists (image_lists.py) and the
ImageNet devkit (methods.md 1.6, 3.5, 5.7, 7).
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from negrefine_ray.data.file_walk import class_folders, files_under, open_root, read_list_file, stat_listed
from negrefine_ray.data.image_lists import parse_ground_truth, parse_image_list, unique_entries
from negrefine_ray.errors import NegRefineError

# torchvision.datasets.folder.IMG_EXTENSIONS (ImageFolder ignores everything else, e.g. NINCO's .gif).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# `files` takes every image file, GIF included (OpenOOD's NINCO list has one).
FILES_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")
IMAGENET_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
IMAGENET_META = "meta.mat"
OOD_LABEL = -1
Row = tuple[str, int, int, int, str]  # (path, label, size, mtime_ns, status)


@dataclass(frozen=True)
class Source:
    """What a reader lists: the dataset's name (for messages), its filesystem and base path, its list
    file ("" none), and the real path its files must resolve into (None: links followed anywhere)."""

    name: str
    fs: pafs.FileSystem
    base: str
    image_list: str
    within: str | None

    @property
    def list_key(self) -> str:
        return f"datasets.{self.name}.image_list"


# A reader's rows, and the number of image-list lines it left out as repeats of an earlier path.
Reader = Callable[[Source], tuple[list[Row], int]]


def _imagefolder_rows(src: Source) -> list[Row]:
    """(path, label, size, mtime, status) in ImageFolder order; label = index of the sorted class
    folder. As torchvision's make_dataset, a class folder without an image file is refused: a stray
    folder (.ipynb_checkpoints, an emptied class) would otherwise take an index and shift the rest."""
    rows: list[Row] = []
    empty: list[str] = []
    for label, cls in enumerate(class_folders(src.fs, src.base)):
        found = files_under(src.fs, src.base, cls, extensions=IMG_EXTENSIONS, within=src.within)
        rows.extend((path, label, size, mtime, status) for path, size, mtime, status in found)
        if not found:
            empty.append(cls)
    if empty:
        raise NegRefineError(
            f"{src.base}: class folder(s) {', '.join(map(repr, empty))} hold no image file "
            f"({', '.join(IMG_EXTENSIONS)}), which torchvision's ImageFolder refuses; remove the folder(s) "
            f"(hidden ones such as .ipynb_checkpoints count as classes too) or add their images."
        )
    return rows


def _read_imagefolder(src: Source) -> tuple[list[Row], int]:
    return _imagefolder_rows(src), 0


def _read_files(src: Source) -> tuple[list[Row], int]:
    found = files_under(src.fs, src.base, "", extensions=FILES_EXTENSIONS, within=src.within)
    return [(path, OOD_LABEL, size, mtime, status) for path, size, mtime, status in found], 0


def _read_imagelist(src: Source) -> tuple[list[Row], int]:
    """Rows of the image list's unique paths, in first-line order, and the number of repeated lines."""
    text = read_list_file(src.image_list, src.list_key)
    entries, duplicates = unique_entries(parse_image_list(text, src.image_list), src.image_list)
    stats = stat_listed(src.fs, src.base, [p for p, _ in entries], src.within)
    return [(p, label, *st) for (p, label), st in zip(entries, stats, strict=True)], duplicates


def imagenet_id_to_index(meta_mat: bytes) -> dict[int, int]:
    """ILSVRC2012_ID (1-based, devkit order) -> class index (position of the WNID in sorted order),
    from the devkit's data/meta.mat: the 1,000 synsets with num_children == 0, as torchvision reads it."""
    from scipy.io import loadmat

    synsets = loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    order = {wnid: i for i, wnid in enumerate(sorted(str(s["WNID"]) for s in leaves))}
    return {int(s["ILSVRC2012_ID"]): order[str(s["WNID"])] for s in leaves}


def _read_imagenet_val(src: Source) -> tuple[list[Row], int]:
    """Class-folder layout (no image_list: val/<wnid>/*.JPEG, as ImageFolder) or the raw flat layout
    (image_list = the devkit's ILSVRC2012_validation_ground_truth.txt with meta.mat beside it)."""
    if not src.image_list:
        return _imagefolder_rows(src), 0
    gt_location = src.image_list
    meta_location = posixpath.join(posixpath.dirname(gt_location), IMAGENET_META)
    meta_fs, meta_path = open_root(meta_location)
    try:
        with meta_fs.open_input_stream(meta_path) as fh:
            id_to_index = imagenet_id_to_index(fh.read())
    except FileNotFoundError as exc:
        raise NegRefineError(
            f"dataset '{src.name}': the devkit's {IMAGENET_META} is not beside {gt_location} (looked for "
            f"{meta_location}); keep the devkit's data/ folder intact or use the class-folder layout."
        ) from exc
    ids = parse_ground_truth(read_list_file(gt_location, src.list_key), gt_location)
    unknown = sorted(set(ids) - set(id_to_index))
    if unknown:
        raise NegRefineError(
            f"{gt_location} has ILSVRC2012 ids {unknown[:5]} that {meta_location} does not define; "
            f"use the ground truth and meta.mat of the same ILSVRC2012 devkit."
        )
    paths = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(ids) + 1)]
    stats = stat_listed(src.fs, src.base, paths, src.within)
    return [(p, id_to_index[i], *st) for p, i, st in zip(paths, ids, stats, strict=True)], 0


@dataclass(frozen=True)
class Format:
    """A dataset format: its reader, what it reads, and whether `image_list` must be set (with an
    example of one for the message that asks for it)."""

    read: Reader
    description: str
    list_example: str = ""  # set: the format needs an image_list, e.g. this one

    @property
    def needs_list(self) -> bool:
        return bool(self.list_example)


FORMATS: dict[str, Format] = {
    "imagefolder": Format(
        _read_imagefolder, "one sub-folder per class, as torchvision's ImageFolder (label: sorted index)"
    ),
    "imagelist": Format(
        _read_imagelist,
        "OpenOOD's image list: `<path> <label>` lines, paths relative to the root",
        list_example="benchmark_imglist/imagenet/test_ninco.txt",
    ),
    "imagenet-val": Format(
        _read_imagenet_val,
        "ImageNet val: class folders, or the flat devkit layout with image_list = its ground truth",
    ),
    "files": Format(_read_files, "every image file under the root, recursively (GIF included), unlabelled"),
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
