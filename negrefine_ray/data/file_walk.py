"""Finding and stat-ing a dataset's files: a local root through os.scandir (symbolic links followed
as torchvision's `os.walk(followlinks=True)`, broken links kept, links out of the root flagged on
request), a URI root (s3://, gs://, hdfs://) through pyarrow.fs, which has no links. Output rows
are (relative POSIX path, size, mtime_ns, status), status "" for a file to read. Also opening a
root, and reading an image-list file, given by local path or URI.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.fs as pafs

from negrefine_ray.data.image_lists import decode_list
from negrefine_ray.errors import NegRefineError

MISSING = -1  # size and mtime_ns of a listed file that does not exist or is not read
LISTED_MISSING = "missing"  # a broken link, or a listed path that does not exist
OUTSIDE_ROOT = "outside-root"  # resolves outside the dataset root under images.symlinks = "within-root"
SYMLINK_POLICIES = ("follow", "within-root")

Stat = tuple[int, int, str]  # (size, mtime_ns, status)
Found = tuple[str, int, int, str]  # (relative path, size, mtime_ns, status)


def confinement(fs: pafs.FileSystem, base: str, symlinks: str) -> str | None:
    """The real path that files must resolve into, or None when links are followed anywhere."""
    if symlinks not in SYMLINK_POLICIES:
        raise NegRefineError(f"images.symlinks = {symlinks!r} is unknown; use 'follow' or 'within-root'.")
    return os.path.realpath(base) if symlinks == "within-root" and _is_local(fs) else None


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _check_utf8(base: str, rel: str) -> str:
    """`rel` when it is valid UTF-8 (Arrow strings must be); else an error naming the first bad part."""
    parts = rel.split("/")
    for i, part in enumerate(parts):
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            folder = os.fsencode(posixpath.join(base, *parts[:i])).decode("utf-8", "backslashreplace")
            raise NegRefineError(
                f"{folder}: the name {os.fsencode(part)!r} is not valid UTF-8, so the listing (Arrow "
                f"strings) cannot hold it; rename it to UTF-8 (e.g. `convmv -f latin1 -t utf-8 -r "
                f"--notest {folder}`) or move it out of the dataset."
            ) from None
    return rel


def _scan(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        raise NegRefineError(f"cannot list folder {folder} ({exc.strerror}); fix its permissions.") from exc


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links, as os.walk(followlinks=True) and find_classes do
    except OSError:  # a link loop: treated as a file, which then fails to stat
        return False


def _inside(real: str, within: str | None) -> bool:
    return within is None or real == within or real.startswith(within.rstrip("/") + "/")


def _entry_stat(entry: os.DirEntry[str], real_folder: str, within: str | None) -> Stat | None:
    """(size, mtime, status) of a directory entry; None when it exists but is not a regular file.
    `real_folder` is the resolved folder holding it, so only links need resolving."""
    try:
        st = entry.stat()
    except OSError:  # a broken (or looping) symbolic link
        return MISSING, MISSING, LISTED_MISSING
    real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_folder, entry.name)
    if not _inside(real, within):
        return MISSING, MISSING, OUTSIDE_ROOT
    return (st.st_size, st.st_mtime_ns, "") if stat.S_ISREG(st.st_mode) else None


def class_folders(fs: pafs.FileSystem, base: str) -> list[str]:
    """Sorted names of the sub-folders of `base`, hidden ones included (torchvision's find_classes)."""
    if _is_local(fs):
        names = [e.name for e in _scan(base) if _is_dir(e)]
    else:
        names = [
            i.base_name for i in _infos(fs, pafs.FileSelector(base)) if i.type == pafs.FileType.Directory
        ]
    return sorted(_check_utf8(base, name) for name in names)


def files_under(
    fs: pafs.FileSystem, base: str, folder: str, *, extensions: tuple[str, ...], within: str | None = None
) -> list[Found]:
    """Files with one of `extensions` under `base`/`folder`, recursively, in sorted(os.walk()) order
    (by folder path, then name); broken links and links out of `within` get their status."""
    top = posixpath.join(base, folder) if folder else base
    if not _is_local(fs):
        infos = _infos(fs, pafs.FileSelector(top, recursive=True))
        files = [
            i for i in infos if i.type == pafs.FileType.File and i.base_name.lower().endswith(extensions)
        ]
        files.sort(key=lambda i: (posixpath.dirname(i.path), i.base_name))
        return [(posixpath.relpath(i.path, base), *_info_stat(i)) for i in files]
    found: list[tuple[str, str, Found]] = []
    real_top = os.path.realpath(top)
    stack: list[tuple[str, str, tuple[str, ...]]] = [(top, real_top, (real_top,))]
    while stack:
        path, real, ancestors = stack.pop()
        for entry in _scan(path):
            if _is_dir(entry):
                sub = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
                if sub in ancestors:
                    raise NegRefineError(
                        f"{entry.path} links to its own ancestor {sub}, a loop the listing would never "
                        f"leave; remove the link."
                    )
                stack.append((entry.path, sub, (*ancestors, sub)))
            elif entry.name.lower().endswith(extensions):
                st = _entry_stat(entry, real, within)
                if st is not None:
                    rel = _check_utf8(base, os.path.relpath(entry.path, base))
                    found.append((path, entry.name, (rel, st[0], st[1], st[2])))
    found.sort(key=lambda f: (f[0], f[1]))
    return [f[2] for f in found]


def stat_listed(
    fs: pafs.FileSystem, base: str, paths: Sequence[str], within: str | None = None
) -> list[Stat]:
    """(size, mtime, status) of each listed relative path: one listing per parent folder (a few calls,
    even on S3) rather than one stat per file. Other names in those folders are never looked at."""
    wanted = set(paths)
    found: dict[str, Stat] = {}
    for folder in sorted({posixpath.dirname(p) for p in paths}):
        top = posixpath.join(base, folder)
        if _is_local(fs):
            if not os.path.isdir(top):
                continue
            real = os.path.realpath(top)
            for entry in _scan(top):
                rel = posixpath.join(folder, entry.name)
                if rel in wanted and (st := _entry_stat(entry, real, within)) is not None:
                    found[rel] = st
        else:
            for info in _infos(fs, pafs.FileSelector(top, allow_not_found=True)):
                if info.type == pafs.FileType.File:
                    found[posixpath.relpath(info.path, base)] = _info_stat(info)
    return [found.get(p, (MISSING, MISSING, LISTED_MISSING)) for p in paths]


def _infos(fs: pafs.FileSystem, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(selector)
    for info in infos:
        try:
            info.path  # noqa: B018 - pyarrow decodes the name here, and fails on one that is not UTF-8
        except UnicodeDecodeError as exc:
            raise NegRefineError(
                f"{selector.base_dir}: the name {exc.object!r} is not valid UTF-8, so the listing (Arrow "
                f"strings) cannot hold it; rename it to UTF-8."
            ) from exc
    return infos  # type: ignore[no-any-return]


def _info_stat(info: pafs.FileInfo) -> Stat:
    return int(info.size), MISSING if info.mtime_ns is None else int(info.mtime_ns), ""


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


def require_list_file(location: str, what: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a list file that exists and is a file, else a NegRefineError naming `what`."""
    fs, path = open_root(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise NegRefineError(f"{what} {location!r} does not exist; set it to an existing file.")
    if kind != pafs.FileType.File:
        raise NegRefineError(f"{what} {location!r} is a folder, not a list file; set it to the list file.")
    return fs, path


def read_list_file(location: str, what: str) -> str:
    """UTF-8 text of a list file given by local path or URI."""
    fs, path = require_list_file(location, what)
    with fs.open_input_stream(path) as fh:
        return decode_list(fh.read(), location)
