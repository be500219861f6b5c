"""Decoding and preprocessing: every bad-input kind gets its status, every odd mode converts, and the
uint8 crops reproduce open_clip's own transform (reference loader: Image.open(f).convert("RGB"))."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from negrefine_ray.clip.model import create_clip
from negrefine_ray.clip.preprocess import (
    CropSpec,
    DecodeOptions,
    _apply_draft,
    crop_spec,
    decode_batch,
    decode_crop,
    decode_crops,
    normalise,
    random_resized_crop,
    to_rgb,
    variant_specs,
)
from negrefine_ray.config import ModelConfig
from negrefine_ray.core.methods import PREPROCESSING, TEST_PREPROCESSING
from negrefine_ray.errors import NegRefineError

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def preprocess() -> Callable[[Image.Image], torch.Tensor]:
    _, transform, _ = create_clip(ModelConfig(arch="nr-tiny-vit", pretrained="none"))
    return transform  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def spec(preprocess: Callable[[Image.Image], torch.Tensor]) -> CropSpec:
    return crop_spec(preprocess)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def textured(w: int, h: int, mode: str = "RGB") -> Image.Image:
    """Smooth gradients plus noise, so resampling differences would show."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    img = np.clip(base + RNG.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img).convert(mode)


def reference(data: bytes, preprocess: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    return preprocess(Image.open(io.BytesIO(data)).convert("RGB"))


def ours(data: bytes, spec: CropSpec, options: DecodeOptions | None = None) -> torch.Tensor:
    crop, status, detail = decode_crop(data, spec, options or DecodeOptions())
    assert status == "ok", detail
    assert crop is not None and crop.dtype == np.uint8 and crop.shape == (*spec.out_size, 3)
    return normalise(torch.from_numpy(crop.copy())[None], spec)[0]


def gif_animated() -> bytes:
    frames = [Image.new("P", (40, 30), i) for i in range(3)]
    for f in frames:
        f.putpalette(list(RNG.integers(0, 256, 768)))
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encode(textured(80, 40), "JPEG", quality=95, exif=exif)


def odd_modes() -> dict[str, bytes]:
    palette = textured(70, 50).convert("P", palette=Image.Palette.ADAPTIVE)
    rgba = textured(60, 90, "RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((60, 90)))
    return {
        "rgb-jpeg": encode(textured(500, 375), "JPEG", quality=90),
        "portrait-png": encode(textured(225, 301), "PNG"),
        "cmyk-jpeg": encode(textured(64, 48, "CMYK"), "JPEG", quality=90),
        "grey-png": encode(textured(50, 70, "L"), "PNG"),
        "palette-png": encode(palette, "PNG"),
        "rgba-png": encode(rgba, "PNG"),
        "gif": gif_animated(),
        "exif-jpeg": exif_rotated(),
        "webp": encode(textured(90, 60), "WEBP", quality=90),
        "bmp-small": encode(textured(30, 20), "BMP"),
    }


@pytest.mark.parametrize("name", list(odd_modes()))
def test_crops_equal_open_clip_transform_on_reference_loader(
    name: str, spec: CropSpec, preprocess: Callable[[Image.Image], torch.Tensor]
) -> None:
    data = odd_modes()[name]
    expected, got = reference(data, preprocess), ours(data, spec)
    # ToTensor divides the same uint8 values by 255, so the outputs agree to float rounding (here: 0).
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_failure_kinds_are_recorded(spec: CropSpec) -> None:
    jpeg = encode(textured(90, 60), "JPEG", quality=90)
    cases = {
        "empty": b"",
        "not-an-image": b"this is a text file named photo.jpg\n",
        "corrupt": jpeg[: len(jpeg) // 2],  # truncated JPEG
        "too-large": encode(textured(100, 100), "PNG"),
    }
    options = DecodeOptions(max_pixels=100 * 99)
    for kind, data in cases.items():
        crop, status, detail = decode_crop(data, spec, options)
        assert (crop, status) == (None, kind), detail
        assert detail
    crops, statuses, _ = decode_batch([jpeg, None, b""], spec, DecodeOptions())
    assert statuses == ["ok", "missing", "empty"]
    assert crops.shape == (3, *spec.out_size, 3) and not crops[1:].any()


def test_pillow_decompression_bomb_error_is_too_large(
    spec: CropSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above twice this
    _, status, _ = decode_crop(encode(textured(100, 100), "PNG"), spec, DecodeOptions())
    assert status == "too-large"


def test_alpha_drop_is_plain_convert_and_white_composites() -> None:
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_rgb(img, DecodeOptions()))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(to_rgb(img, DecodeOptions(alpha="white")))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("LA", (2, 2), (0, 128))
    assert np.asarray(to_rgb(half, DecodeOptions(alpha="white")))[0, 0].tolist() == [127, 127, 127]


def test_sixteen_bit_grey_is_scaled_or_clipped_as_asked(spec: CropSpec) -> None:
    values = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16).repeat(4, 0)
    img = Image.open(io.BytesIO(encode(Image.fromarray(values), "PNG")))
    assert img.mode.startswith("I;16")
    assert np.asarray(to_rgb(img, DecodeOptions()))[0, :, 0].tolist() == [0, 100, 255, 4]
    assert np.asarray(to_rgb(img, DecodeOptions(high_bit_depth="clip")))[0, :, 0].tolist() == [
        0,
        255,
        255,
        255,
    ]
    _, status, _ = decode_crop(encode(Image.fromarray(values), "PNG"), spec, DecodeOptions())
    assert status == "ok"


def test_exif_orientation_ignored_by_default_applied_on_request(spec: CropSpec) -> None:
    data = exif_rotated()  # stored 80x40 (landscape), displayed 40x80
    square = CropSpec(resize=(40, 40), crop=None, interpolation="bicubic", mean=spec.mean, std=spec.std)
    stored, _, _ = decode_crop(data, square, DecodeOptions())
    turned, _, _ = decode_crop(data, square, DecodeOptions(exif="transpose"))
    plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((40, 40), Image.Resampling.BICUBIC))
    assert stored is not None and turned is not None
    np.testing.assert_array_equal(stored, plain)
    np.testing.assert_array_equal(turned, np.rot90(plain, k=-1))


def test_draft_only_when_twice_the_target_and_close(spec: CropSpec) -> None:
    small = encode(textured(400, 300), "JPEG", quality=90)  # short side 300 < 2 x 224: no draft
    big = encode(textured(1200, 900), "JPEG", quality=90)
    draft = DecodeOptions(decode="pil-draft")
    for data, same in ((small, True), (big, False)):
        full, _, _ = decode_crop(data, spec, DecodeOptions())
        fast, status, _ = decode_crop(data, spec, draft)
        assert status == "ok" and full is not None and fast is not None
        diff = np.abs(full.astype(int) - fast.astype(int)).mean()
        assert (diff == 0) == same
        assert diff < 5  # the same picture, resampled differently (noise is the worst case: ~2.5)
    png = encode(textured(1200, 900), "PNG")  # not a JPEG: draft does nothing
    np.testing.assert_array_equal(
        decode_crop(png, spec, draft)[0], decode_crop(png, spec, DecodeOptions())[0]
    )


def test_crop_spec_reads_transforms_and_refuses_others(spec: CropSpec) -> None:
    from open_clip import image_transform
    from torchvision import transforms as T

    assert spec.resize == (224,) and spec.crop == (224, 224) and spec.interpolation == "bicubic"
    squash = crop_spec(image_transform(64, is_train=False, resize_mode="squash"))
    assert squash.resize == (64, 64) and squash.crop is None and squash.out_size == (64, 64)
    openood = crop_spec(
        T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    )
    assert openood.resize == (256,) and openood.interpolation == "bilinear"
    assert CropSpec.from_dict(spec.describe()) == spec
    with pytest.raises(NegRefineError, match="not supported"):
        crop_spec(image_transform(64, is_train=False, resize_mode="longest"))


# --- one crop per reference preprocessing (issue 11 item 1) ---------------------------------------


def reference_geometry(variant: str, spec: CropSpec) -> Callable[[Image.Image], Image.Image]:
    """The references' Resize + CenterCrop built with torchvision itself, on PIL images as their
    loaders give them: NegLabel/CSP/DNM `Resize(224)` (torchvision's default, bilinear) and
    `CenterCrop(224)` (methods.md 1.6, 2.6, 4.4); InterNeg/OpenOOD `Resize(256, bicubic)`,
    `CenterCrop(224)` (5.7); "clip": the model's own open_clip transform. Sizes scale with the model."""
    from torchvision import transforms as T

    size = spec.out_size[0]
    if variant == "clip":
        resize = T.Resize(spec.resize[0], T.InterpolationMode.BICUBIC)
    elif variant == "torchvision":
        resize = T.Resize(size)
    else:
        resize = T.Resize(round(size * 256 / 224), T.InterpolationMode.BICUBIC)
    return T.Compose([resize, T.CenterCrop(size)])


@pytest.mark.parametrize("variant", list(TEST_PREPROCESSING))
@pytest.mark.parametrize("name", list(odd_modes()))
def test_each_variant_is_bit_exact_with_its_reference_transform(
    name: str, variant: str, spec: CropSpec, preprocess: Callable[[Image.Image], torch.Tensor]
) -> None:
    """uint8 crops equal to the bit, and after ToTensor + Normalize equal to the float."""
    from torchvision import transforms as T

    data = odd_modes()[name]
    normalize = next(t for t in preprocess.transforms if isinstance(t, T.Normalize))  # type: ignore[attr-defined]
    for model_spec in (spec, dataclasses.replace(spec, resize=(224,), crop=(224, 224))):  # tiny, ViT-B/16
        specs = variant_specs(model_spec, list(PREPROCESSING))
        crops, status, detail = decode_crops(data, list(specs.values()), DecodeOptions())
        assert status == "ok" and crops is not None, detail
        crop = crops[list(specs).index(variant)]
        pil = reference_geometry(variant, model_spec)(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(crop, np.asarray(pil))
        expected = normalize(T.ToTensor()(pil))
        torch.testing.assert_close(
            normalise(torch.from_numpy(crop.copy())[None], specs[variant])[0], expected, rtol=0, atol=1e-6
        )


def test_variant_specs_scale_with_the_model_and_refuse_unknown_names(spec: CropSpec) -> None:
    specs = variant_specs(spec, ["clip", "torchvision", "openood"])
    size = spec.out_size[0]
    assert specs["clip"] == spec
    assert (specs["torchvision"].resize, specs["torchvision"].interpolation) == ((size,), "bilinear")
    assert (specs["openood"].resize, specs["openood"].interpolation) == (
        (round(size * 256 / 224),),
        "bicubic",
    )
    assert variant_specs(dataclasses.replace(spec, resize=(224,), crop=(224, 224)), ["openood"])[
        "openood"
    ].resize == (256,)
    with pytest.raises(NegRefineError, match="unknown image preprocessing 'bilinear'"):
        variant_specs(spec, ["bilinear"])
    with pytest.raises(NegRefineError, match=r"images\.preprocess = 'shared'"):
        variant_specs(dataclasses.replace(spec, resize=(32, 48), crop=None), ["torchvision"])


def test_one_decode_gives_every_variant_and_draft_covers_the_largest(spec: CropSpec) -> None:
    """decode_crops decodes once and cuts each spec's crop, equal to decoding once per spec; with
    pil-draft the DCT scaling stays at or above the largest resize target (openood's)."""
    specs = list(variant_specs(spec, list(PREPROCESSING)).values())
    data = encode(textured(1600, 1200), "JPEG", quality=90)
    for options in (DecodeOptions(), DecodeOptions(decode="pil-draft")):
        together, status, _ = decode_crops(data, specs, options)
        assert status == "ok" and together is not None
        for crop, one in zip(together, specs, strict=True):
            alone, _, _ = decode_crop(data, one, DecodeOptions())
            if options.decode == "pil":
                np.testing.assert_array_equal(crop, alone)
            else:  # draft: close to the full decode, not equal
                assert crop.shape == alone.shape
    img = Image.open(io.BytesIO(data))
    _apply_draft(img, specs)  # type: ignore[arg-type]
    largest = max(s.resized_size(1600, 1200)[1] for s in specs)
    assert img.size[1] >= largest and img.size[1] < 2 * largest


def test_augmented_crops_are_seeded_per_file_and_follow_torchvision(spec: CropSpec) -> None:
    """InterNeg's prototype augmentation: RandomResizedCrop + flip drawn from (run seed, path), so a
    rerun gives the same crops; each crop is torchvision's resized_crop of the drawn box."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    aug = variant_specs(spec, ["augment"], seed=3)["augment"]
    assert aug.augment_seed == 3 and "augment_seed" in aug.describe()
    assert "augment_seed" not in spec.describe()  # test transforms keep their old cache keys
    img = textured(320, 200)
    crops = {key: random_resized_crop(img, aug, key) for key in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")}
    assert all(c.shape == (*aug.out_size, 3) for c in crops.values())
    np.testing.assert_array_equal(crops["a.jpg"], random_resized_crop(img, aug, "a.jpg"))
    assert len({c.tobytes() for c in crops.values()}) == 4  # each file its own box
    other = dataclasses.replace(aug, augment_seed=4)
    assert not np.array_equal(crops["a.jpg"], random_resized_crop(img, other, "a.jpg"))
    # The box and flip replayed from the same generator, cut by torchvision itself.
    import hashlib
    import math

    rng = np.random.default_rng([3, int(hashlib.sha256(b"a.jpg").hexdigest()[:15], 16)])
    while True:
        target = 320 * 200 * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= 320 and 0 < h <= 200:
            top, left = int(rng.integers(0, 200 - h + 1)), int(rng.integers(0, 320 - w + 1))
            break
    box = F.resized_crop(img, top, left, h, w, list(aug.out_size), InterpolationMode.BICUBIC)
    expected = np.asarray(F.hflip(box) if rng.random() < 0.5 else box)
    np.testing.assert_array_equal(crops["a.jpg"], expected)
