"""The papers' benchmark datasets as data (methods.md 1.6, 3.5, 5.7, 7): each preset's datasets, their
roots and image lists relative to `images.data_root`, and the image counts the papers report. Plain
data that imports nothing of the package, so the config checks `images.preset` against it; turning
a preset into `[[datasets]]` entries is data/presets.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PresetEntry:
    """A preset dataset: its root and image list relative to `images.data_root`, its expected count."""

    name: str
    role: str
    format: str
    root: str
    expected: int
    image_list: str = ""


_IMAGENET_VAL = PresetEntry("imagenet", "id", "imagenet-val", "ImageNet/val", 50_000)
_OPENOOD_LISTS = "benchmark_imglist/imagenet"
_OPENOOD_ID = PresetEntry(
    "imagenet", "id", "imagelist", "images_largescale", 45_000, f"{_OPENOOD_LISTS}/test_imagenet.txt"
)


def _openood(name: str, folder: str, expected: int) -> PresetEntry:
    return PresetEntry(name, "ood", "imagelist", folder, expected, f"{_OPENOOD_LISTS}/test_{name}.txt")


# Counts from methods.md 7. Layouts: NegRefine's data/ folder (ImageFolder roots, torchvision's
# ImageNet val in class folders), NegLabel/CSP/DNM's flat OOD folders read recursively, and OpenOOD
# v1.5's data/ folder (images_largescale/, images_classic/, benchmark_imglist/imagenet/).
PRESETS: dict[str, tuple[PresetEntry, ...]] = {
    "imagenet_negrefine": (
        _IMAGENET_VAL,
        PresetEntry("inaturalist", "ood", "imagefolder", "iNaturalist", 10_000),
        PresetEntry("openimage_o", "ood", "imagefolder", "openimage_o", 17_632),
        PresetEntry("clean", "ood", "imagefolder", "NINCO_popular_datasets_subsamples", 2_715),
        PresetEntry("ninco", "ood", "imagefolder", "NINCO_OOD_classes", 5_878),  # ImageFolder drops 1 .gif
    ),
    "imagenet_four": (
        _IMAGENET_VAL,
        PresetEntry("inaturalist", "ood", "files", "iNaturalist", 10_000),
        PresetEntry("sun", "ood", "files", "SUN", 10_000),
        PresetEntry("places", "ood", "files", "Places", 10_000),
        PresetEntry("textures", "ood", "files", "dtd/images", 5_640),
    ),
    "near": (
        _OPENOOD_ID,
        _openood("ssb_hard", "images_largescale", 49_000),
        _openood("ninco", "images_largescale", 5_879),
    ),
    "far": (
        _OPENOOD_ID,
        _openood("inaturalist", "images_largescale", 10_000),
        _openood("textures", "images_classic", 5_160),
        _openood("openimage_o", "images_largescale", 15_869),
    ),
}
