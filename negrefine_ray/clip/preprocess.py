"""Image reading, decoding and CLIP preprocessing to uint8 crops, every failure recorded (no Ray/GPU).

Follows the reference loaders (torchvision's pil_loader: `Image.open(f).convert("RGB")`) and the
references' transforms (core.methods.PREPROCESSING: the model's own open_clip eval transform, or
torchvision's Resize + CenterCrop with another interpolation or resize size), stopping before
ToTensor: crops are (H, W, 3) uint8 and `normalise` finishes the transform on the accelerator, so
`normalise(crop)` equals the reference transform's output (ToTensor divides the same uint8 by 255).
An image is decoded once and cut into one crop per preprocessing ("variant") asked for.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from negrefine_ray.clip.model import register_bundled_configs, resolve_weights
from negrefine_ray.config import ImagesConfig, ModelConfig
from negrefine_ray.core.methods import PREPROCESSING
from negrefine_ray.data.datasets import read_file
from negrefine_ray.errors import NegRefineError

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Status of each image; every value but "ok" is a failure kind counted in the stage stats.
OK = "ok"
FAILURE_KINDS = ("missing", "unreadable", "empty", "not-an-image", "too-large", "corrupt", "outside-root")
# Detail of the failures a listing records (its status column) and decoding passes on without a read.
LISTED_DETAILS = {
    "missing": "file not found",
    "outside-root": "symbolic link resolves outside the dataset root (images.symlinks = 'within-root')",
}
# Pillow refuses images above twice MAX_IMAGE_PIXELS (and only warns between 1x and 2x), so the
# default limit keeps every image the reference loaders would decode.
DEFAULT_MAX_PIXELS = 2 * int(Image.MAX_IMAGE_PIXELS or 89_478_485)
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class CropSpec:
    """The geometric part of an open_clip eval transform plus its normalisation constants.

    `resize` is (short side,) for open_clip's resize_mode "shortest" (torchvision Resize(int)) or
    (H, W) for "squash"; `crop` is (H, W) of the centre crop, or None when there is none.
    """

    resize: tuple[int, ...]
    crop: tuple[int, int] | None
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment_seed: int | None = None  # set: RandomResizedCrop(crop) + flip, drawn per image (training)

    @property
    def out_size(self) -> tuple[int, int]:
        """(H, W) of the crops."""
        return self.crop if self.crop is not None else (self.resize[0], self.resize[1])

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) after the resize, computed as torchvision's _compute_resized_output_size does."""
        if len(self.resize) == 2:
            return self.resize[1], self.resize[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize[0], int(self.resize[0] * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def describe(self) -> dict[str, Any]:
        """The spec as JSON (it keys the image cache; a test transform leaves out augment_seed, so
        entries written before augmentation existed stay valid)."""
        out = asdict(self)
        if out["augment_seed"] is None:
            del out["augment_seed"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropSpec:
        """Inverse of `describe` (lists, as JSON gives them, become tuples)."""
        crop, seed = data["crop"], data.get("augment_seed")
        return cls(
            resize=tuple(int(v) for v in data["resize"]),
            crop=None if crop is None else (int(crop[0]), int(crop[1])),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            augment_seed=None if seed is None else int(seed),
        )


def crop_spec(preprocess: Any) -> CropSpec:
    """Read a CropSpec from an open_clip eval transform (a torchvision Compose).

    Supports the transforms open_clip builds for resize_mode "shortest" with a square target
    (Resize(int) + CenterCrop) and "squash" (Resize((H, W))); anything else is refused by name.
    """
    from torchvision import transforms as T

    resize: tuple[int, ...] | None = None
    crop = None
    interpolation = ""
    mean = std = None
    for step in getattr(preprocess, "transforms", [preprocess]):
        name = type(step).__name__
        if isinstance(step, T.Resize) and resize is None and step.max_size is None:
            resize = (step.size,) if isinstance(step.size, int) else tuple(step.size)
            interpolation = step.interpolation.value
        elif isinstance(step, T.CenterCrop) and resize is not None and crop is None:
            crop = (int(step.size[0]), int(step.size[1]))
        elif isinstance(step, T.Normalize):
            mean, std = tuple(float(m) for m in step.mean), tuple(float(s) for s in step.std)
        elif name not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor"):
            raise NegRefineError(
                f"open_clip preprocessing step {step!r} is not supported by the uint8 crop path, which "
                f"handles Resize + CenterCrop (resize_mode 'shortest') and Resize((H, W)) ('squash')."
            )
    if resize is None or mean is None or std is None or len(mean) != 3 or interpolation not in _PIL_FILTERS:
        raise NegRefineError(f"{preprocess!r} lacks a supported Resize or a 3-channel Normalize.")
    if crop is not None and len(resize) == 1 and min(crop) > resize[0]:
        raise NegRefineError(f"centre crop {crop} exceeds the resize {resize}; padding is unsupported.")
    return CropSpec(resize, crop, interpolation, mean, std)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DecodeOptions:
    """How bytes become an RGB image. The defaults reproduce the reference loaders, except
    `high_bit_depth` (see `to_rgb`).

    decode: "pil" (full-resolution decode), "pil-draft" (JPEG DCT-domain downscaling by 1/2, 1/4 or
        1/8 when the image is at least 2x the resize target in both sides; faster, not faithful) or
        "gpu" (plain JPEGs decoded and cut on the model's device, clip/device_decode.py; other files,
        and `decode_crops` itself, take the "pil" path).
    exif: "ignore" (the references do not apply EXIF orientation) or "transpose".
    alpha: "drop" (plain convert("RGB"): colour under transparent pixels is kept) or "white"
        (composite on a white background).
    high_bit_depth: "scale" (16-bit greyscale mapped to 8 bits, v / 257) or "clip" (Pillow's plain
        convert, which saturates everything above 255 to white).
    max_pixels: images with more pixels are "too-large" (decompression-bomb guard).
    """

    decode: Literal["pil", "pil-draft", "gpu"] = "pil"
    exif: Literal["ignore", "transpose"] = "ignore"
    alpha: Literal["drop", "white"] = "drop"
    high_bit_depth: Literal["scale", "clip"] = "scale"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb(img: Image.Image, options: DecodeOptions) -> Image.Image:
    """An RGB image, converted as the reference loaders do (`convert("RGB")`) except where `options`
    say otherwise: CMYK and YCbCr use Pillow's plain formulas (no ICC profile), greyscale and palette
    images are expanded, alpha is dropped or composited on white, and 16-bit greyscale ("I;16*",
    or "I" holding values above 255) is scaled to 8 bits instead of clipped."""
    if options.high_bit_depth == "scale" and (img.mode.startswith("I;16") or img.mode == "I"):
        values = np.asarray(img).astype(np.float64)
        if img.mode != "I" or values.max(initial=0) > 255:
            values = values / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if options.alpha == "white" and _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def augment_box(width: int, height: int, spec: CropSpec, key: str) -> tuple[int, int, int, int, bool]:
    """(left, top, w, h, flip) of `random_resized_crop` for a width x height image: drawn by numpy's
    PCG64 seeded with (spec.augment_seed, a stable hash of `key`, the file's path), the same every run.
    The search follows torchvision's get_params (10 tries, then the central crop of clamped aspect
    ratio); flip is the draw of the horizontal flip with probability 0.5."""
    assert spec.crop is not None and spec.augment_seed is not None
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
    rng = np.random.default_rng([spec.augment_seed, digest])
    area, log_ratio = width * height, (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            break
    else:  # torchvision's fallback: the central crop, its aspect ratio clamped to the range
        w, h = width, height
        if width / height < 3 / 4:
            h = round(width / (3 / 4))
        elif width / height > 4 / 3:
            w = round(height * 4 / 3)
        top, left = (height - h) // 2, (width - w) // 2
    return left, top, w, h, bool(rng.random() < 0.5)


def random_resized_crop(img: Image.Image, spec: CropSpec, key: str) -> np.ndarray:
    """(H, W, 3) uint8: torchvision's RandomResizedCrop(spec.crop, scale (0.08, 1), ratio (3/4, 4/3))
    with spec.interpolation, then a horizontal flip with probability 0.5, drawn per file
    (`augment_box`); crop then resize, as torchvision's resized_crop does on PIL images."""
    assert spec.crop is not None
    left, top, w, h, flip = augment_box(*img.size, spec, key)
    ch, cw = spec.crop
    out = img.crop((left, top, left + w, top + h)).resize((cw, ch), _PIL_FILTERS[spec.interpolation])
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def resize_crop(img: Image.Image, spec: CropSpec, key: str = "") -> np.ndarray:
    """(H, W, 3) uint8: torchvision Resize (PIL resample, antialiased) then CenterCrop of an RGB image;
    with spec.augment_seed, `random_resized_crop` drawn for `key` (the file's path)."""
    if spec.augment_seed is not None:
        return random_resized_crop(img, spec, key)
    size = spec.resized_size(*img.size)
    if size != img.size:
        img = img.resize(size, _PIL_FILTERS[spec.interpolation])
    if spec.crop is not None:
        ch, cw = spec.crop
        top = round((img.height - ch) / 2.0)
        left = round((img.width - cw) / 2.0)
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.uint8)


def _apply_draft(img: ImageFile.ImageFile, specs: Sequence[CropSpec]) -> None:
    """JPEG draft mode: libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below any resize target."""
    if img.format != "JPEG":
        return
    width = height = 0
    for spec in specs:
        w, h = spec.resized_size(*img.size)
        if len(spec.resize) == 2:  # squash: keep both sides covered
            w = h = max(w, h)
        width, height = max(width, w), max(height, h)
    img.draft(img.mode, (width, height))


def decode_crop(data: bytes, spec: CropSpec, options: DecodeOptions) -> tuple[np.ndarray | None, str, str]:
    """Decode one file's bytes into a (H, W, 3) uint8 crop: `decode_crops` with one spec."""
    crops, status, detail = decode_crops(data, (spec,), options)
    return (None if crops is None else crops[0]), status, detail


def decode_crops(
    data: bytes, specs: Sequence[CropSpec], options: DecodeOptions, key: str = ""
) -> tuple[list[np.ndarray] | None, str, str]:
    """Decode one file's bytes once into one (H, W, 3) uint8 crop per spec.

    Returns (crops or None, status, detail): status "ok" or a failure kind ("empty", "not-an-image",
    "too-large", "corrupt"); detail is the error text for failures and "" otherwise. Animated images
    give their first frame.
    """
    if not data:
        return None, "empty", "zero-byte file"
    try:
        with warnings.catch_warnings():
            # Pillow warns on large images, odd EXIF and palette transparency; outcomes are statuses.
            warnings.simplefilter("ignore")
            img: Image.Image = Image.open(io.BytesIO(data))
            if img.width * img.height > options.max_pixels:
                return None, "too-large", f"{img.width}x{img.height} exceeds {options.max_pixels:,} pixels"
            if options.decode == "pil-draft" and isinstance(img, ImageFile.ImageFile):
                _apply_draft(img, specs)
            img.load()
            if options.exif == "transpose":
                img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img, options)
            return [resize_crop(rgb, spec, key) for spec in specs], OK, ""
    except UnidentifiedImageError:
        # Pillow's message names the BytesIO object by memory address; artifacts must not vary by run.
        return None, "not-an-image", "cannot identify image file: no image format matches its bytes"
    except Image.DecompressionBombError as exc:
        return None, "too-large", _stable(str(exc))
    except Exception as exc:  # Pillow's decoders raise many types on malformed data; each is recorded
        return None, "corrupt", _stable(f"{type(exc).__name__}: {exc}")


def _stable(detail: str) -> str:
    """An error text without object addresses (`<... at 0x7f...>`), so failure records are
    byte-identical across runs."""
    return _ADDRESS.sub("", detail)


def decode_batch(
    datas: Sequence[bytes | None], spec: CropSpec, options: DecodeOptions
) -> tuple[np.ndarray, list[str], list[str]]:
    """(N, H, W, 3) uint8 crops (zeros for failures), N statuses and N details.

    A None entry is a file that could not be read; its status must be set by the reader, so it gets
    "missing" here only as a fallback.
    """
    h, w = spec.out_size
    crops = np.zeros((len(datas), h, w, 3), dtype=np.uint8)
    statuses, details = [], []
    for i, data in enumerate(datas):
        if data is None:
            statuses.append("missing")
            details.append("file not found")
            continue
        crop, status, detail = decode_crop(data, spec, options)
        if crop is not None:
            crops[i] = crop
        statuses.append(status)
        details.append(detail)
    return crops, statuses, details


def crop_spec_for_model(cfg: ModelConfig) -> CropSpec:
    """The CropSpec of the eval transform open_clip gives `cfg`, built without loading weights:
    defaults, then the pretrained tag's preprocess settings, then the tower's image size (as
    open_clip.create_model_and_transforms assembles it)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    register_bundled_configs()
    weights = resolve_weights(cfg)
    pp = asdict(PreprocessCfg())
    if weights.kind == "tag":
        pp = merge_preprocess_dict(pp, open_clip.get_pretrained_cfg(cfg.arch, weights.value))
    model_cfg = open_clip.get_model_config(cfg.arch) or {}
    size = model_cfg.get("vision_cfg", {}).get("image_size")
    if size is not None:
        pp["size"] = (size, size) if isinstance(size, int) else tuple(size)
    return crop_spec(image_transform_v2(PreprocessCfg(**pp), is_train=False))


def variant_specs(model_spec: CropSpec, variants: Sequence[str], seed: int = 0) -> dict[str, CropSpec]:
    """The CropSpec of each PREPROCESSING variant for a model whose own eval transform is
    `model_spec`: "clip" is `model_spec` itself; the others resize the short side of the image to
    round(S * resize_ratio) with their interpolation, then centre-crop S x S, S the model's (square)
    input size, and normalise with the model's mean and std."""
    out = {}
    for name in variants:
        variant = PREPROCESSING.get(name)
        if variant is None:
            raise NegRefineError(f"unknown image preprocessing '{name}'; known: {', '.join(PREPROCESSING)}.")
        if variant.interpolation is None:
            out[name] = model_spec
            continue
        h, w = model_spec.out_size
        if h != w:
            raise NegRefineError(
                f"image preprocessing '{name}' centre-crops a square, but the model's input is {h}x{w}; "
                "set images.preprocess = 'shared' to use the model's own transform for every method."
            )
        resize = (round(h * variant.resize_ratio),)
        augment = seed if variant.augment else None  # the augmentation's draws: run.seed and the path
        out[name] = CropSpec(resize, (h, w), variant.interpolation, model_spec.mean, model_spec.std, augment)
    return out


def decode_options(images: ImagesConfig) -> DecodeOptions:
    """DecodeOptions from the [images] section."""
    return DecodeOptions(
        decode=images.decode,
        exif=images.exif,
        alpha=images.alpha,
        high_bit_depth=images.high_bit_depth,
        max_pixels=images.max_pixels or DEFAULT_MAX_PIXELS,
    )


def read_listed(root: str, path: str) -> tuple[bytes | None, str, str]:
    """(bytes, "ok", "") of one listed file, or (None, "missing" or "unreadable", detail)."""
    try:
        return read_file(root, path), OK, ""
    except FileNotFoundError:
        return None, "missing", "file not found"
    except (OSError, ValueError) as exc:  # ValueError: pyarrow's ArrowInvalid, e.g. a NUL in the path
        return None, "unreadable", f"{type(exc).__name__}: {exc}"


def listed_failure(status: str) -> tuple[str, str]:
    """(status, detail) of a row whose listing recorded a failure kind: it is passed on unread."""
    return status, LISTED_DETAILS.get(status, "found while listing")


def read_and_decode(
    root: str, path: str, specs: Sequence[CropSpec], options: DecodeOptions
) -> tuple[list[np.ndarray] | None, str, str]:
    """(crops or None, status, detail) of one listed file: "missing"/"unreadable" or decode_crops'."""
    data, status, detail = read_listed(root, path)
    if data is None:
        return None, status, detail
    return decode_crops(data, specs, options, path)


def pixels_column(variant: str) -> str:
    """The batch column holding a variant's (N, H, W, 3) uint8 crops."""
    return f"pixels@{variant}"


def normalise(crops: torch.Tensor, spec: CropSpec) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, exactly ToTensor (x / 255) then Normalize."""
    mean = torch.as_tensor(spec.mean, dtype=torch.float32, device=crops.device).view(-1, 1, 1)
    std = torch.as_tensor(spec.std, dtype=torch.float32, device=crops.device).view(-1, 1, 1)
    x = crops.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    return x.sub_(mean).div_(std)
