"""The report's thumbnails: each image shown is read through the datasets' storage layer
(data.datasets.read_file: local folders and object stores alike), made once into a small JPEG (its
longer side `px`) in the cache (run.cache_dir/thumbnails/, keyed by the file's root, path, size and
modification time and `px`), and copied into report/thumbnails/. An image that is missing or
unreadable now gets the placeholder thumbnail and is counted.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from PIL import Image, ImageDraw

from negrefine_ray.data.datasets import file_stat, read_file
from negrefine_ray.runfolder.storage import Location, write_bytes_atomic

FOLDER = "thumbnails"
PLACEHOLDER = f"{FOLDER}/unreadable.jpg"
QUALITY = 85


def _key(root: str, path: str, px: int) -> str | None:
    """The cache key of `path` under `root` as it is now, or None if it is not a file."""
    stat = file_stat(root, path)
    if stat is None:
        return None
    return hashlib.sha256(json.dumps([root, path, *stat, px]).encode()).hexdigest()[:24]


def make_thumbnail(data: bytes, px: int) -> bytes:
    """A JPEG of the image `data` (any format Pillow reads, as RGB) with its longer side `px`."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    rgb.thumbnail((px, px), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def placeholder(px: int) -> bytes:
    """A grey JPEG with a cross: what an image that cannot be read now is shown as."""
    img = Image.new("RGB", (px, px), (200, 200, 200))
    draw = ImageDraw.Draw(img)
    draw.line((0, 0, px, px), fill=(120, 120, 120), width=3)
    draw.line((0, px, px, 0), fill=(120, 120, 120), width=3)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def thumbnails(
    images: Iterable[tuple[str, str]], roots: Mapping[str, str], out_dir: Path, cache: Location, px: int
) -> tuple[dict[tuple[str, str], str], dict[str, int]]:
    """report/thumbnails/ for `images` ((dataset, path under its root)): each image's thumbnail file
    relative to `out_dir`, and the counts made, from_cache and unreadable (placeholder shown)."""
    folder = out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (cache / FOLDER).mkdir(parents=True, exist_ok=True)
    counts = {"made": 0, "from_cache": 0, "unreadable": 0}
    out: dict[tuple[str, str], str] = {}
    for dataset, path in dict.fromkeys(images):
        root = roots.get(dataset)
        key = _key(root, path, px) if root is not None else None
        data = None
        if key is not None:
            cached = cache / FOLDER / f"{key}.jpg"
            if cached.is_file():
                data = cached.read_bytes()
                counts["from_cache"] += 1
            else:
                try:
                    data = make_thumbnail(read_file(root or "", path), px)
                except (OSError, ValueError, Image.DecompressionBombError):
                    data = None  # Pillow's UnidentifiedImageError is an OSError
                else:
                    write_bytes_atomic(cached, data)
                    counts["made"] += 1
        if data is None:
            counts["unreadable"] += 1
            out[dataset, path] = PLACEHOLDER
            continue
        (folder / f"{key}.jpg").write_bytes(data)
        out[dataset, path] = f"{FOLDER}/{key}.jpg"
    if counts["unreadable"]:
        (out_dir / PLACEHOLDER).write_bytes(placeholder(px))
    return out, counts
