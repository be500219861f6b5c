"""In-distribution label sets: ImageNet-1K's class names (open_clip's list, identical to the one
NegLabel, CSP, NegRefine, DNM and InterNeg use; methods.md 0.4) or any label file (one name a line)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from negrefine_ray.core.lines import text_lines
from negrefine_ray.errors import NegRefineError, unknown_name


def _imagenet1k() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


# ImageNet-10/20/100 as NegRefine's class lists (the MCM subsets), in their order, written as indices
# into the 1,000-name list so the names cannot drift from it.
# fmt: off
IMAGENET_SUBSETS: dict[str, tuple[int, ...]] = {
    "imagenet10": (
        10, 30, 238, 284, 339, 352, 510, 569, 817, 895
    ),
    "imagenet20": (
        847, 802, 49, 665, 472, 26, 820, 657, 279, 812, 28, 780, 294, 269, 417, 466, 327, 340, 27, 46
    ),
    "imagenet100": (
        127, 227, 9, 577, 842, 493, 521, 264, 913, 894, 6, 113, 918, 434, 537, 258, 845, 626, 710, 639,
        976, 715, 568, 705, 370, 109, 928, 936, 754, 571, 296, 775, 314, 528, 609, 871, 684, 107, 48,
        175, 162, 642, 854, 442, 17, 527, 799, 87, 718, 567, 101, 516, 28, 719, 519, 780, 491, 20, 146,
        996, 289, 740, 547, 698, 290, 285, 95, 331, 375, 764, 786, 564, 566, 98, 237, 197, 267, 700,
        900, 44, 454, 618, 365, 689, 189, 580, 751, 368, 513, 142, 864, 478, 557, 219, 77, 448, 836,
        381, 736, 981
    ),
}
# fmt: on


def _subset(name: str) -> Callable[[], list[str]]:
    return lambda: [_imagenet1k()[i] for i in IMAGENET_SUBSETS[name]]


NAMED_LABEL_SETS: dict[str, Callable[[], list[str]]] = {
    "imagenet1k": _imagenet1k,
    **{name: _subset(name) for name in IMAGENET_SUBSETS},
}


def read_label_file(path: Path) -> list[str]:
    """One label per line; surrounding whitespace stripped, blank lines skipped, order kept."""
    if not path.is_file():
        raise NegRefineError(
            f"Label file {path} does not exist; set labels.id_labels to a label file or one of "
            f"{', '.join(NAMED_LABEL_SETS)}."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise NegRefineError(
            f"Label file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8, one class name "
            f"per line."
        ) from exc
    labels = [line.strip() for line in text_lines(text) if line.strip()]
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
