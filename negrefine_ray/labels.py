"""In-distribution label sets: ImageNet-1K's class names (open_clip's list, identical to the one
NegLabel, CSP, NegRefine, DNM and InterNeg use; methods.md 0.4) or any label file (one name a line)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from negrefine_ray.errors import NegRefineError, unknown_name


def _imagenet1k() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


NAMED_LABEL_SETS: dict[str, Callable[[], list[str]]] = {"imagenet1k": _imagenet1k}


def read_label_file(path: Path) -> list[str]:
    """One label per line; surrounding whitespace stripped, blank lines skipped, order kept."""
    if not path.is_file():
        raise NegRefineError(
            f"Label file {path} does not exist; set labels.id_labels to a label file or one of "
            f"{', '.join(NAMED_LABEL_SETS)}."
        )
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not labels:
        raise NegRefineError(f"Label file {path} has no labels; write one class name per line.")
    return labels


def load_id_labels(spec: str) -> list[str]:
    """Resolve `labels.id_labels`: a named set or a path to a label file."""
    if spec in NAMED_LABEL_SETS:
        return NAMED_LABEL_SETS[spec]()
    path = Path(spec).expanduser()
    if path.suffix or "/" in spec:
        return read_label_file(path)
    raise unknown_name("ID label set (labels.id_labels)", spec, NAMED_LABEL_SETS)
