"""images.decode = "gpu" (clip/device_decode.py). On the CPU, torchvision's decoder plus the device
resize and crop give PIL's crops to within one grey level and PIL's embeddings to cosine 0.9999; a
file the device path does not take, or refuses, gets PIL's crops or PIL's failure kind; the decode
tasks pass JPEG bytes on untouched. The `gpu` tests repeat the parity checks with nvJPEG on CUDA and
are skipped without it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from negrefine_ray.clip import device_decode
from negrefine_ray.clip.decode_task import decode_rows
from negrefine_ray.clip.device_decode import (
    ENCODED,
    PENDING,
    check_device_specs,
    decode_files,
    decode_jpegs,
    device_crops,
    encode_row,
)
from negrefine_ray.clip.image import ImageEmbedder, embed_files_local
from negrefine_ray.clip.image_cache import image_cache_base
from negrefine_ray.clip.preprocess import (
    CropSpec,
    DecodeOptions,
    crop_spec_for_model,
    decode_crops,
    resize_crop,
    variant_specs,
)
from negrefine_ray.config import ModelConfig, build_config
from negrefine_ray.core.methods import PREPROCESSING
from negrefine_ray.errors import ConfigError, NegRefineError, StageError
from negrefine_ray.runfolder.atomic import embedding_matrix
from negrefine_ray.runfolder.folder import StageContext
from negrefine_ray.stages.embed_images import embed_images_settings, run_embed_images

MODEL: dict[str, Any] = {"arch": "nr-tiny-vit", "pretrained": "none", "init_seed": 3}
TINY = ModelConfig(**MODEL)
GPU, PIL = DecodeOptions(decode="gpu"), DecodeOptions()
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def photo(seed: int, w: int, h: int, mode: str = "RGB") -> Image.Image:
    """Multi-scale noise (smooth colour fields plus grain): JPEGs with the spectrum of photos."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 128.0)
    for scale, weight in ((32, 1.0), (8, 0.6), (2, 0.4), (1, 0.3)):
        grid = rng.normal(128, 40, (max(1, h // scale), max(1, w // scale), 3)).clip(0, 255)
        field = Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        img += (np.asarray(field, dtype=np.float64) - 128) * weight
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)).convert(mode)


def encode(img: Image.Image, fmt: str = "JPEG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}) | kw)
    return buf.getvalue()


def photos() -> dict[str, bytes]:
    """JPEGs the device decoder takes: ImageNet's shapes (two of one size, resized together), an odd
    size, a small one every variant upscales, greyscale, progressive."""
    return {
        "landscape-a": encode(photo(1, 500, 375)),
        "landscape-b": encode(photo(2, 500, 375)),
        "portrait": encode(photo(3, 375, 500)),
        "odd": encode(photo(4, 257, 193)),
        "small": encode(photo(5, 60, 45)),
        "grey": encode(photo(6, 160, 120, "L")),
        "progressive": encode(photo(7, 200, 150), progressive=True),
    }


@pytest.fixture(scope="module")
def specs() -> dict[str, CropSpec]:
    """Every preprocessing variant (clip, torchvision, openood, augment) of the tiny model."""
    return variant_specs(crop_spec_for_model(TINY), list(PREPROCESSING), seed=5)


def pil_crops(data: bytes, specs: dict[str, CropSpec], key: str, options: DecodeOptions = PIL) -> Any:
    return decode_crops(data, tuple(specs.values()), options, key)


def errors(got: torch.Tensor, want: np.ndarray) -> tuple[float, int]:
    diff = np.abs(got.cpu().numpy().astype(np.int16) - want.astype(np.int16))
    return float(diff.mean()), int(diff.max())


def check_parity(specs: dict[str, CropSpec], device: str, mean_bound: float, max_bound: int) -> None:
    files = photos()
    keys = [f"{name}.jpg" for name in files]
    assert [encode_row(d, tuple(specs.values()), GPU)[1] for d in files.values()] == [PENDING] * len(files)
    crops, status, detail = decode_files(list(files.values()), specs, GPU, device=device, keys=keys)
    assert status.tolist() == ["ok"] * len(files) and detail.tolist() == [""] * len(files)
    for i, (data, key) in enumerate(zip(files.values(), keys, strict=True)):
        want, _, _ = pil_crops(data, specs, key)
        for j, variant in enumerate(specs):
            assert crops[variant].device.type == device and crops[variant].dtype == torch.uint8
            mean, worst = errors(crops[variant][i], want[j])
            assert mean < mean_bound and worst <= max_bound, (key, variant, mean, worst)


def test_device_crops_are_pils_within_one_grey_level_on_cpu(specs: dict[str, CropSpec]) -> None:
    # measured: mean 0.00004-0.008, max 1 (Pillow's fixed-point weights against torch's float ones)
    check_parity(specs, "cpu", mean_bound=0.02, max_bound=1)


def test_resize_follows_pillows_pass_order_up_and_down() -> None:
    """Pillow resamples one side, stores 8 bits, then the other; which side first decides ~0.2 grey
    levels on average, so random sizes, up and down, pin the order device_decode follows."""
    rng = np.random.default_rng(3)
    for t in range(40):
        (sw, sh), (w, h) = rng.integers(8, 160, 2), rng.integers(8, 160, 2)
        img = photo(t, int(sw), int(sh))
        interpolation = ("bilinear", "bicubic")[t % 2]
        squash = CropSpec((int(h), int(w)), None, interpolation, (0.5,) * 3, (0.5,) * 3)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        got = device_crops([x], squash, [""])[0]
        mean, worst = errors(got, resize_crop(img, squash))
        assert worst <= 1 and mean < 0.02, (sw, sh, w, h, interpolation, mean)


def batches(tmp_path: Path, files: dict[str, bytes], specs: dict[str, CropSpec]) -> tuple[Any, Any]:
    """The decode task's batch of the files under each option: (pil, gpu)."""
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    n = len(files)
    rows = {"row": np.arange(n), "root": np.array([str(tmp_path)] * n), "path": np.array(list(files))}
    return decode_rows(rows, specs, PIL), decode_rows(rows, specs, GPU)


def test_embeddings_through_the_actor_match_pils(
    tmp_path: Path, specs: dict[str, CropSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    test = {v: specs[v] for v in ("clip", "torchvision")}  # the default methods' two preprocessings
    files = {f"{k}.jpg": v for k, v in photos().items()} | {
        "bad.jpg": b"",
        "p.png": encode(photo(8, 40, 50), "PNG"),
    }
    pil_batch, gpu_batch = batches(tmp_path, files, test)
    assert all(c.startswith("pixels@") is False for c in gpu_batch)  # the task made no crops
    ref = ImageEmbedder(TINY, test)(pil_batch)
    decoded: list[int] = []

    def counted(datas: list[bytes], device: str) -> Any:
        decoded.append(len(datas))
        return decode_jpegs(datas, device)

    monkeypatch.setattr(device_decode, "decode_jpegs", counted)
    got = ImageEmbedder(TINY, test, options=GPU)(gpu_batch)
    assert decoded == [7]  # one batched decode of the 7 JPEGs feeds both preprocessings
    assert got["status"].tolist() == ref["status"].tolist() == ["ok"] * 7 + ["empty", "ok"]
    assert got["detail"][7] == "zero-byte file" and ENCODED not in got and "path" not in got
    for variant in test:
        a, b = ref[f"embedding@{variant}"], got[f"embedding@{variant}"]
        cos = np.sum(a * b, axis=1)[[*range(7), 8]]
        assert cos.min() >= 0.9999, (variant, cos)
        assert not b[7].any() and np.allclose(np.linalg.norm(b[[*range(7), 8]], axis=1), 1, atol=1e-5)


def bad_huffman_table() -> bytes:
    """A JPEG whose header opens and ends in EOI (so it goes to the device) but cannot be decoded."""
    data = bytearray(encode(photo(9, 60, 50)))
    data[data.index(b"\xff\xc4") + 8] = 0xFF
    return bytes(data)


def test_fallbacks_get_pils_crops_and_failure_kinds(specs: dict[str, CropSpec]) -> None:
    good = encode(photo(10, 60, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {  # name: (bytes, options, goes to the device decoder)
        "png": (encode(photo(11, 45, 30), "PNG"), GPU, False),
        "cmyk-jpeg": (encode(photo(12, 64, 48, "CMYK")), GPU, False),
        "webp": (encode(photo(13, 50, 40), "WEBP"), GPU, False),
        "empty": (b"", GPU, False),
        "text": (b"not a jpeg at all", GPU, False),
        "truncated-jpeg": (good[: len(good) // 2], GPU, False),
        "bad-huffman-jpeg": (bad_huffman_table(), GPU, True),
        "too-large": (good, DecodeOptions(decode="gpu", max_pixels=100), False),
        "exif-transpose": (
            encode(photo(14, 80, 40), exif=exif),
            DecodeOptions(decode="gpu", exif="transpose"),
            False,
        ),
    }
    got_status = {}
    for name, (data, options, device) in cases.items():
        assert (encode_row(data, tuple(specs.values()), options)[1] == PENDING) is device, name
        crops, status, detail = decode_files([data], specs, options, device="cpu", keys=[name])
        want, want_status, want_detail = pil_crops(
            data, specs, name, DecodeOptions(**{**options.describe(), "decode": "pil"})
        )
        assert (status[0], detail[0]) == (want_status, want_detail), name
        got_status[name] = status[0]
        for j, variant in enumerate(specs):
            expected = np.zeros_like(crops[variant][0].numpy()) if want is None else want[j]
            np.testing.assert_array_equal(crops[variant][0].numpy(), expected, err_msg=name)
    assert got_status == {
        "png": "ok", "cmyk-jpeg": "ok", "webp": "ok", "empty": "empty", "text": "not-an-image",
        "truncated-jpeg": "corrupt", "bad-huffman-jpeg": "corrupt", "too-large": "too-large",
        "exif-transpose": "ok",
    }  # fmt: skip


def test_damaged_jpegs_get_pils_verdict(specs: dict[str, CropSpec]) -> None:
    rng, good = np.random.default_rng(0), encode(photo(15, 96, 72))
    damaged = []
    for _ in range(24):
        data = bytearray(good)
        for at in rng.integers(2, len(good) - 2, rng.integers(1, 12)):
            data[at] = rng.integers(0, 256)
        damaged.append(bytes(data))
    crops, status, _ = decode_files(damaged, {"clip": specs["clip"]}, GPU, device="cpu")
    want = [pil_crops(d, {"clip": specs["clip"]}, "") for d in damaged]
    assert status.tolist() == [w[1] for w in want] and {"ok", "corrupt"} <= set(status)  # both exercised
    for got, (crop, _, _) in zip(crops["clip"], want, strict=True):
        assert errors(got, crop[0])[1] <= 1 if crop is not None else not got.any()


def test_decode_task_passes_jpeg_bytes_on_untouched(tmp_path: Path, specs: dict[str, CropSpec]) -> None:
    jpeg, png = encode(photo(16, 70, 50)), encode(photo(17, 30, 40), "PNG")
    (tmp_path / "a.jpg").write_bytes(jpeg)
    (tmp_path / "b.png").write_bytes(png)
    rows = {
        "row": np.arange(4),
        "root": np.array([str(tmp_path)] * 4),
        "path": np.array(["a.jpg", "b.png", "a.jpg", "gone.jpg"]),
        "status": np.array(["", "", "outside-root", ""]),
    }
    out = decode_rows(rows, specs, GPU)
    assert sorted(out) == ["detail", ENCODED, "path", "row", "status"]
    assert out["status"].tolist() == [PENDING, "ok", "outside-root", "missing"]
    assert out[ENCODED].dtype == object and out[ENCODED][0] == jpeg  # the file's bytes, as read
    want, _, _ = pil_crops(png, specs, "b.png")
    assert out[ENCODED][1] == b"".join(c.tobytes() for c in want)  # PIL's crops, in spec order
    assert out[ENCODED][2] == b"" == out[ENCODED][3] and out["detail"][3] == "file not found"


def test_exif_orientation_is_ignored_on_the_device_or_applied_by_pil(specs: dict[str, CropSpec]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80x40, displayed 40x80
    data = encode(photo(18, 80, 40), exif=exif)
    clip = {"clip": specs["clip"]}
    ignored, status, _ = decode_files([data], clip, GPU, device="cpu")
    want, _, _ = pil_crops(data, clip, "")
    assert status[0] == "ok" and errors(ignored["clip"][0], want[0])[1] <= 1
    turned, _, _ = decode_files([data], clip, DecodeOptions(decode="gpu", exif="transpose"), device="cpu")
    want_turned, _, _ = pil_crops(data, clip, "", DecodeOptions(exif="transpose"))
    np.testing.assert_array_equal(turned["clip"][0].numpy(), want_turned[0])
    assert not np.array_equal(want_turned[0], want[0])


def test_config_accepts_gpu_refuses_other_names_and_filters_and_keys_the_cache(tmp_path: Path) -> None:
    config = build_config({"images": {"decode": "gpu"}, "model": MODEL})
    assert config.images.decode == "gpu" and embed_images_settings(config)["decode"]["decode"] == "gpu"
    with pytest.raises(
        ConfigError, match=r"images\.decode = 'nvjpeg' is not one of 'pil', 'pil-draft', 'gpu'"
    ):
        build_config({"images": {"decode": "nvjpeg"}})
    spec = crop_spec_for_model(TINY)
    lanczos = CropSpec(spec.resize, spec.crop, "lanczos", spec.mean, spec.std)
    with pytest.raises(NegRefineError, match=r"no 'lanczos' filter .* set images\.decode = 'pil'"):
        check_device_specs([spec, lanczos])
    with pytest.raises(NegRefineError, match=r"'lanczos'"):
        ImageEmbedder(TINY, {"clip": lanczos}, options=GPU)
    bases = {
        d: image_cache_base(
            "w", "a", "fp32", {"crop": spec.describe(), "decode": DecodeOptions(decode=d).describe()}, "/r"
        )
        for d in ("pil", "gpu")
    }
    assert bases["pil"] != bases["gpu"]


def test_dataloader_driver_lets_the_embedder_decode(tmp_path: Path, specs: dict[str, CropSpec]) -> None:
    test = {"clip": specs["clip"]}
    files = {
        "a.jpg": photos()["portrait"],
        "b.png": encode(photo(19, 40, 30), "PNG"),
        "c.jpg": b"\xff\xd8\xff",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    pairs = [(str(tmp_path), n) for n in [*files, "gone.jpg"]]
    ref = embed_files_local(pairs, ImageEmbedder(TINY, test), PIL, workers=0, batch_size=3)["clip"]
    embedder = ImageEmbedder(TINY, test, options=GPU)
    got = embed_files_local(pairs, embedder, GPU, workers=0, batch_size=3)["clip"]
    assert got.status.tolist() == ref.status.tolist() == ["ok", "ok", "not-an-image", "missing"]
    assert np.sum(got.embedding[:2] * ref.embedding[:2], axis=1).min() >= 0.9999
    with pytest.raises(StageError, match=r"got decode 'pil' but the embedder was built with 'gpu'"):
        embed_files_local(pairs, embedder, PIL, workers=0)


@pytest.mark.ray
def test_stage_with_gpu_decode_on_cpu_actors(ray_session: None, tmp_path: Path) -> None:
    root = tmp_path / "data"
    files = {f"{k}.jpg": v for k, v in photos().items() if k in ("landscape-a", "portrait", "grey", "small")}
    files |= {
        "p.png": encode(photo(20, 50, 40), "PNG"),
        "empty.jpg": b"",
        "cut.jpg": files["small.jpg"][:200],
    }
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    config = build_config(
        {
            "run": {"name": "t", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")},
            "model": {**MODEL, "device": "cpu"},
            "images": {"batch_size": 3, "max_failed_fraction": 0.5, "decode": "gpu"},
            "datasets": [{"name": "d", "role": "ood", "root": str(root), "format": "files"}],
        }
    )
    out = tmp_path / "stage"
    out.mkdir()
    output = run_embed_images(StageContext(config, "embed-images", out, config.run_dir))
    table = pq.read_table(out / "images.parquet")
    status = dict(zip(table.column("path").to_pylist(), table.column("status").to_pylist(), strict=True))
    assert status == {n: {"empty.jpg": "empty", "cut.jpg": "corrupt"}.get(n, "ok") for n in files}
    assert output.stats["decode"] == "JPEGs decoded by torchvision (libjpeg-turbo) in the CPU actors"
    assert "decoded by torchvision" in output.summary and "2 unreadable" in output.summary
    paths = table.column("path").to_pylist()
    pairs = [(str(root), p) for p in paths]
    for variant in ("clip", "torchvision"):
        spec = variant_specs(crop_spec_for_model(TINY), [variant])
        ref = embed_files_local(pairs, ImageEmbedder(TINY, spec), PIL, workers=0, batch_size=8)[variant]
        got = embedding_matrix(table.column(f"embedding@{variant}"), nulls_as_zero=True)
        ok = ref.status == "ok"
        assert ref.status.tolist() == [status[p] for p in paths]
        assert np.sum(got[ok] * ref.embedding[ok], axis=1).min() >= 0.9999


@pytest.mark.gpu
@needs_cuda
def test_cuda_crops_match_pil(specs: dict[str, CropSpec]) -> None:
    # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's, so the pixel bound is looser than on
    # the CPU (not yet measured on a GPU: jobs/bench/bench_gpu_decode.py reports the figures)
    check_parity(specs, "cuda", mean_bound=2.0, max_bound=64)


@pytest.mark.gpu
@needs_cuda
def test_cuda_embeddings_and_failure_kinds_match_pil(tmp_path: Path, specs: dict[str, CropSpec]) -> None:
    test = {v: specs[v] for v in ("clip", "torchvision")}
    damaged = {"bad-huffman.jpg": bad_huffman_table(), "empty.jpg": b"", "cut.jpg": photos()["odd"][:500]}
    files = {f"{k}.jpg": v for k, v in photos().items()} | damaged
    pil_batch, gpu_batch = batches(tmp_path, files, test)
    ref = ImageEmbedder(TINY, test, device="cpu")(pil_batch)
    got = ImageEmbedder(TINY, test, device="cuda", options=GPU)(gpu_batch)
    assert got["status"].tolist() == ref["status"].tolist() == ["ok"] * 7 + ["corrupt", "empty", "corrupt"]
    for variant in test:
        cos = np.sum(ref[f"embedding@{variant}"][:7] * got[f"embedding@{variant}"][:7], axis=1)
        assert cos.mean() >= 0.9999 and cos.min() >= 0.999, (variant, cos)
