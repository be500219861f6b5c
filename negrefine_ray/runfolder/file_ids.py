"""The content of files and folders that settings name, as part of a stage's hash.

A setting that may name a local file or folder (a label file, a checkpoint, a judge's log or local
model folder, a word-list folder) declares it in its field's metadata (config.sections `_FILE`).
`stage_key` then adds the content identity of every such path found among a stage's settings, so
editing the file reruns exactly the stages whose settings name it. Values that are not local paths
(an open_clip tag, a built-in label set, a hub id, an object-store URI) stay plain settings. A hub
id such as "org/model" is hashed only where a local folder of that name exists, as transformers
would then load that folder.

A file's sha256 is computed once per (path, size, mtime, inode) in a process, as make decides what
is stale: a rewrite that keeps the size, the mtime to the nanosecond and the inode goes unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from negrefine_ray.runfolder.atomic import file_sha256, stable_hash

_MEMO: dict[tuple[str, int, int, int], str] = {}


def file_id(path: Path) -> str:
    """sha256 of a file's bytes, memoised by (path, size, mtime, inode)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _MEMO:
        _MEMO[key] = file_sha256(path)
    return _MEMO[key]


def content_id(path: Path) -> str:
    """A file's "sha256:<hex>", or a folder's "tree:<hex>" over its files' relative paths and
    sha256 (sorted, symlinks followed, so the order never depends on the file system)."""
    if path.is_file():
        return f"sha256:{file_id(path)}"
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    return "tree:" + stable_hash([(rel, file_id(p)) for rel, p in files])


def local_path(value: str) -> Path | None:
    """`value` as an existing local file or folder, or None: a value must look like a path (hold a
    "/", start with "~" or have a suffix), so a name, a tag or a hub id never means a folder of the
    same name in the working directory; a URI or an empty value is None too."""
    if not value or "://" in value or not ("/" in value or value.startswith("~") or Path(value).suffix):
        return None
    path = Path(value).expanduser()
    return path if path.exists() else None


def named_file_ids(settings: Mapping[str, Any], named: Iterable[str]) -> dict[str, str]:
    """The content identity of each value of `named` (the config's file-naming settings) that occurs
    in `settings` and is a local path, keyed by that value."""
    wanted = {v for v in named if v}
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            if node in wanted:
                found.add(node)
        elif isinstance(node, Mapping):
            for item in node.values():
                walk(item)
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)

    walk(settings)
    out = {}
    for value in sorted(found):
        path = local_path(value)
        if path is not None:
            out[value] = content_id(path.resolve())
    return out
