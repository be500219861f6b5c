"""images.decode = "gpu": JPEGs decoded and cut into uint8 crops on the model's device (no Ray here).

The decode task only reads each file and peeks at its header (`encode_rows`): a plain 8-bit RGB or
greyscale JPEG ending in its EOI marker travels on as its bytes (status PENDING); any other file goes
through the PIL path in the task and travels as its crops or its failure. The actor's
`decode_payloads` decodes the pending JPEGs in one batched torchvision.io.decode_jpeg call (nvJPEG on
CUDA, libjpeg-turbo on the CPU), cuts every CropSpec from that one decode on the device, and re-runs
a JPEG the decoder refuses through the PIL path, so it gets the status PIL gives. The resize is
Pillow's rebuilt from torch's antialiased interpolate: one side at a time in the order Pillow takes,
each pass rounded to 8 bits as Pillow stores it; on the CPU the crops are Pillow's but for 1 grey
level on 0.01-0.04% of values at 500x375 (up to ~0.7% in small, upscaled images). Not bit-identical:
a named deviation, and images.decode stays "pil" by default.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image

from negrefine_ray.clip.preprocess import (
    OK,
    CropSpec,
    DecodeOptions,
    augment_box,
    decode_crops,
    listed_failure,
    read_listed,
)
from negrefine_ray.errors import NegRefineError

ENCODED = "encoded"  # batch column: a pending JPEG's bytes, or a PIL-decoded row's crops (spec order)
PENDING = "jpeg"  # status of a row whose JPEG bytes await the actor's decoder; the actor resolves it
INTERPOLATIONS = ("bilinear", "bicubic")  # the filters torch's antialiased interpolate shares with Pillow
_CHUNK_VALUES = 1 << 26  # float32 values resized at once (256 MB): large images go a few at a time


def check_device_specs(specs: Iterable[CropSpec]) -> None:
    """Refuse a CropSpec whose interpolation torch cannot reproduce (Pillow's lanczos, box, ...)."""
    for spec in specs:
        if spec.interpolation not in INTERPOLATIONS:
            raise NegRefineError(
                f"images.decode = 'gpu' resizes with torch, which has no '{spec.interpolation}' filter "
                f"like Pillow's (it has {', '.join(INTERPOLATIONS)}); set images.decode = 'pil'."
            )


def for_device(data: bytes, options: DecodeOptions) -> bool:
    """Whether the device decoder takes this file: an 8-bit JPEG in RGB or greyscale (decoded as RGB,
    expanded as convert("RGB") does; CMYK goes to Pillow, whose conversion is the reference), ending
    in its EOI marker (a truncated file gets Pillow's verdict), within options.max_pixels and, under
    exif "transpose", without an EXIF rotation (Pillow applies it). Only the header is parsed."""
    if not (data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return False
            if img.width * img.height > options.max_pixels:
                return False
            return options.exif == "ignore" or img.getexif().get(ExifTags.Base.Orientation, 1) == 1
    except Exception:  # whatever Pillow cannot open goes to the PIL path, which records its kind
        return False


def encode_row(
    data: bytes, specs: Sequence[CropSpec], options: DecodeOptions, key: str = ""
) -> tuple[bytes, str, str]:
    """(payload, status, detail) of one file's bytes: (the bytes, PENDING, "") for the device decoder,
    else decode_crops' result with its crops concatenated in `specs` order (b"" for a failure)."""
    if for_device(data, options):
        return data, PENDING, ""
    crops, status, detail = decode_crops(data, specs, options, key)
    return b"".join(c.tobytes() for c in crops or ()), status, detail


def read_encoded(
    root: str, path: str, specs: Sequence[CropSpec], options: DecodeOptions
) -> tuple[bytes, str, str]:
    """`encode_row` of one listed file, or (b"", "missing" or "unreadable", detail)."""
    data, status, detail = read_listed(root, path)
    return (b"", status, detail) if data is None else encode_row(data, specs, options, path)


def encode_rows(
    rows: dict[str, np.ndarray], specs: Mapping[str, CropSpec], options: DecodeOptions
) -> dict[str, Any]:
    """Ray task of images.decode "gpu" (decode_rows hands over to it): columns row, root, path (and
    optionally the listing's status) -> row, status, detail, path and `encoded` (N,) bytes
    (`encode_row`). Rows the listing failed, and unreadable files, are passed on unread."""
    n = len(rows["path"])
    listed = rows["status"] if "status" in rows else np.full(n, "")
    payloads = np.empty(n, dtype=object)  # object, not numpy bytes: those drop trailing NULs
    statuses, details = [], []
    for i, (root, path, known) in enumerate(zip(rows["root"], rows["path"], listed, strict=True)):
        if known:
            payload, (status, detail) = b"", listed_failure(str(known))
        else:
            payload, status, detail = read_encoded(str(root), str(path), tuple(specs.values()), options)
        payloads[i] = payload
        statuses.append(status)
        details.append(detail)
    return {
        "row": rows["row"],
        "status": np.array(statuses, dtype=object).astype(str),
        "detail": np.array(details, dtype=object).astype(str),
        "path": np.asarray(rows["path"]),
        ENCODED: payloads,
    }


def decode_jpegs(datas: Sequence[bytes], device: str | torch.device) -> list[torch.Tensor | None]:
    """One (3, H, W) uint8 RGB tensor on `device` per JPEG (greyscale expanded, as convert("RGB")
    does), None where the decoder refuses it. One batched call (nvJPEG batches on CUDA); when that
    fails, each JPEG alone, to find the refused ones."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; bytes are read-only buffers
        warnings.simplefilter("ignore")
        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def _pass(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """One antialiased pass to (h, w), rounded half up and clipped to 8 bits as Pillow stores it."""
    x = torch.nn.functional.interpolate(x, size=size, mode=interpolation, antialias=True, align_corners=False)
    return x.add_(0.5).floor_().clamp_(0, 255)


def _resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """(N, C, H, W) float of 8-bit values -> (N, C, h, w): Pillow's antialiased resample, one pass per
    side that changes, each stored as 8 bits. Pillow 13 resamples vertically first when the height
    shrinks and 2 (W - w) < H - h, else horizontally first (measured against its output: 397 random
    sizes, bilinear and bicubic, all within 1 grey level in that order and ~0.2 mean off in the other)."""
    h, w = size
    height, width = x.shape[-2:]
    if h < height and 2 * (width - w) < height - h:
        x = _pass(x, (h, width), interpolation)
        return _pass(x, (h, w), interpolation) if w != width else x
    x = _pass(x, (height, w), interpolation) if w != width else x
    return _pass(x, (h, w), interpolation) if h != height else x


def _crop(x: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """x[..., top:top+h, left:left+w], zeros outside the image, as Pillow's crop."""
    height, width = x.shape[-2:]
    if top >= 0 and left >= 0 and top + h <= height and left + w <= width:
        return x[..., top : top + h, left : left + w]
    out = x.new_zeros((*x.shape[:-2], h, w))
    t0, l0, t1, l1 = max(top, 0), max(left, 0), min(top + h, height), min(left + w, width)
    if t1 > t0 and l1 > l0:
        out[..., t0 - top : t1 - top, l0 - left : l1 - left] = x[..., t0:t1, l0:l1]
    return out


def _centre(x: torch.Tensor, spec: CropSpec) -> torch.Tensor:
    """resize_crop's Resize + CenterCrop of (N, 3, H, W) float images of one size."""
    w, h = spec.resized_size(x.shape[-1], x.shape[-2])
    x = _resize(x, (h, w), spec.interpolation)
    if spec.crop is None:
        return x
    ch, cw = spec.crop
    return _crop(x, round((h - ch) / 2.0), round((w - cw) / 2.0), ch, cw)


def _augmented(x: torch.Tensor, spec: CropSpec, key: str) -> torch.Tensor:
    """random_resized_crop of one (3, H, W) float image -> (1, 3, h, w), the same draws per `key`."""
    assert spec.crop is not None
    left, top, w, h, flip = augment_box(x.shape[-1], x.shape[-2], spec, key)
    out = _resize(_crop(x[None], top, left, h, w), spec.crop, spec.interpolation)
    return out.flip(-1) if flip else out


def device_crops(images: Sequence[torch.Tensor], spec: CropSpec, keys: Sequence[str]) -> torch.Tensor:
    """(N, H, W, 3) uint8 crops of `spec` from (3, H, W) uint8 images on one device, as resize_crop
    cuts them from PIL images (`keys`, the files' paths, seed an augmenting spec's draws). Images of
    one size are resized together."""
    h, w = spec.out_size
    out = torch.empty((len(images), 3, h, w), dtype=torch.uint8, device=images[0].device)
    if spec.augment_seed is not None:
        for i, (img, key) in enumerate(zip(images, keys, strict=True)):
            out[i] = _augmented(img.float(), spec, key)[0]
        return out.permute(0, 2, 3, 1)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    for shape, members in groups.items():
        step = max(1, _CHUNK_VALUES // int(np.prod(shape)))
        for at in range(0, len(members), step):
            idx = members[at : at + step]
            x = torch.stack([images[i] for i in idx]).float()
            out[torch.as_tensor(idx, device=out.device)] = _centre(x, spec).to(torch.uint8)
    return out.permute(0, 2, 3, 1)


def _unpack(payload: bytes, specs: Sequence[CropSpec]) -> list[np.ndarray]:
    """The crops `encode_row` concatenated, one (H, W, 3) uint8 array per spec."""
    flat, out, at = np.frombuffer(payload, dtype=np.uint8), [], 0
    for spec in specs:
        size = spec.out_size[0] * spec.out_size[1] * 3
        out.append(flat[at : at + size].reshape(*spec.out_size, 3))
        at += size
    return out


def decode_payloads(
    batch: Mapping[str, Any],
    specs: Mapping[str, CropSpec],
    options: DecodeOptions,
    *,
    device: str | torch.device,
) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """Batch columns status, detail, path, encoded (`encode_rows`) -> per variant of `specs` its
    (N, H, W, 3) uint8 crops on `device` (zeros unless the status is "ok"), and the N statuses and
    details with every PENDING row resolved: "ok", or, where the decoder refuses the JPEG, what the
    PIL path makes of it (its crops, or its failure kind)."""
    status = np.asarray(batch["status"]).astype(object)
    detail = np.asarray(batch["detail"]).astype(object)
    payloads, keys, order = batch[ENCODED], batch["path"], tuple(specs.values())
    crops = {
        v: torch.zeros((len(status), *s.out_size, 3), dtype=torch.uint8, device=device)
        for v, s in specs.items()
    }
    host: dict[int, list[np.ndarray]] = {
        int(i): _unpack(payloads[i], order) for i in np.flatnonzero(status == OK)
    }
    pending = np.flatnonzero(status == PENDING)
    images = decode_jpegs([bytes(payloads[i]) for i in pending], device)
    done = [(int(i), img) for i, img in zip(pending, images, strict=True) if img is not None]
    for i, img in zip(pending, images, strict=True):
        if img is None:  # refused (corrupt, or a JPEG flavour the decoder lacks): Pillow decides
            got, status[i], detail[i] = decode_crops(bytes(payloads[i]), order, options, str(keys[i]))
            if got is not None:
                host[int(i)] = got
    if done:
        rows = torch.as_tensor([i for i, _ in done], device=device)
        for variant, spec in specs.items():
            crops[variant][rows] = device_crops(
                [img for _, img in done], spec, [str(keys[i]) for i, _ in done]
            )
        status[[i for i, _ in done]] = OK
    if host:
        rows = torch.as_tensor(list(host), device=device)
        for j, variant in enumerate(specs):
            stacked = torch.from_numpy(np.stack([c[j] for c in host.values()]))
            crops[variant][rows] = stacked.to(device)
    return crops, status.astype(str), detail.astype(str)


def decode_files(
    datas: Sequence[bytes],
    specs: Mapping[str, CropSpec],
    options: DecodeOptions,
    *,
    device: str | torch.device,
    keys: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """The whole images.decode "gpu" path over files' bytes, the task's part and the actor's in one
    call: per variant (N, H, W, 3) uint8 crops on `device`, N statuses and details (tests, benchmarks).
    `keys` (the files' paths; default "0", "1", ...) seed augmenting specs as decode_crops' `key`."""
    keys = list(keys) or [str(i) for i in range(len(datas))]
    rows = [encode_row(d, tuple(specs.values()), options, k) for d, k in zip(datas, keys, strict=True)]
    payloads = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        payloads[i] = row[0]
    batch = {
        "status": np.array([r[1] for r in rows], dtype=object),
        "detail": np.array([r[2] for r in rows], dtype=object),
        "path": np.array(keys, dtype=object),
        ENCODED: payloads,
    }
    return decode_payloads(batch, specs, options, device=device)
