"""Image-list files as text: OpenOOD's `<relative path> <label>` lines (split at the first space, as
its ImglistDataset does) and the ImageNet devkit's ground truth (one ILSVRC2012_ID per line). Pure
functions over bytes and str; every bad line is refused naming the file, the line and the fix.
"""

from __future__ import annotations

import logging
import posixpath
import re

from negrefine_ray.core.lines import NotUtf8, text_lines, utf8_text
from negrefine_ray.errors import NegRefineError

log = logging.getLogger(__name__)

# Plain ASCII integers only: Python's int() also takes `1_000`, `+5` and non-ASCII digits such as
# '٣', which are typos or encoding accidents in a label column rather than labels.
_INTEGER = re.compile(r"-?[0-9]+")
_INT64 = (-(2**63), 2**63 - 1)
_BLANKS = " \t"

Entry = tuple[str, int, int]  # (normalised relative path, label, 1-based line number)


def decode_list(data: bytes, source: str) -> str:
    """UTF-8 text of a list file (a leading byte-order mark dropped), or an error naming the line."""
    try:
        return utf8_text(data)
    except NotUtf8 as exc:
        raise NegRefineError(
            f"{source} {exc}; save the list as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) with file names "
            f"that are UTF-8 too."
        ) from exc


def parse_integer(token: str, where: str, what: str) -> int:
    """An int64 written as ASCII `-?[0-9]+` (surrounding spaces and tabs allowed), else an error."""
    value = token.strip(_BLANKS)
    if not _INTEGER.fullmatch(value):
        raise NegRefineError(
            f"{where}: {what} {value!r} is not an integer written -?[0-9]+ (ASCII digits, no '+', '_' "
            f"or exponent); fix the line."
        )
    number = int(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise NegRefineError(f"{where}: {what} {number} does not fit in 64 bits; fix the line.")
    return number


def safe_relative(path: str, where: str) -> str:
    """`path` normalised, refusing absolute paths and paths that climb out of the root."""
    norm = posixpath.normpath(path)
    if not path or path.startswith("/") or "://" in path or "\\" in path or norm.split("/")[0] == "..":
        raise NegRefineError(
            f"{where}: path {path!r} escapes the dataset root (absolute, '..' or a URI); image lists "
            f"must give paths relative to the root. Fix the list or the dataset's root."
        )
    return norm


def parse_image_list(text: str, source: str) -> list[Entry]:
    """(path, label, line) of each non-blank `<relative path> <label>` line, split at the first space.

    Labels are ASCII `-?[0-9]+` within int64 (use -1 for OOD images); paths are relative, without
    NUL bytes (no file name holds one), and normalised (`./a.jpg` is `a.jpg`).
    """
    entries = []
    for number, line in enumerate(text_lines(text), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        path, space, label = line.partition(" ")
        if not path or not space:
            raise NegRefineError(
                f"{where}: {line!r} is not '<relative path> <integer label>' (use -1 for OOD images)."
            )
        if "\x00" in line:
            raise NegRefineError(f"{where}: {line!r} holds a NUL byte, which no file name can; fix the line.")
        entries.append((safe_relative(path, where), parse_integer(label, where, "label"), number))
    return entries


def unique_entries(entries: list[Entry], source: str) -> tuple[list[tuple[str, int]], int]:
    """(path, label) of each path's first line, and the number of repeated lines left out (each image
    is scored once). A path listed with two different labels is refused, naming both lines."""
    first: dict[str, tuple[int, int]] = {}
    repeats: list[tuple[int, int]] = []
    for path, label, line in entries:
        if path not in first:
            first[path] = (label, line)
            continue
        label0, line0 = first[path]
        if label != label0:
            raise NegRefineError(
                f"{source} lines {line0} and {line}: {path!r} is listed with labels {label0} and {label}; "
                f"keep one of the two lines."
            )
        repeats.append((line, line0))
    if repeats:
        line, line0 = repeats[0]
        log.warning(
            "%s has %d duplicate line(s) naming a path listed before (e.g. line %d repeats line %d); "
            "each image is scored once.",
            source,
            len(repeats),
            line,
            line0,
        )
    return [(path, label) for path, (label, _) in first.items()], len(repeats)


def parse_ground_truth(text: str, source: str) -> list[int]:
    """The ILSVRC2012_IDs of the devkit's validation ground truth, in file order (one per line)."""
    ids: list[int] = []
    for number, line in enumerate(text_lines(text), start=1):
        ids.extend(parse_integer(token, f"{source} line {number}", "ILSVRC2012_ID") for token in line.split())
    return ids
