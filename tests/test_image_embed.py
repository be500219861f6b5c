"""The embed-images stage: embeddings equal open_clip's transform + encode_image on the same files,
bad files keep their status, the cache makes a second run do no embedding work, and an actor that
dies mid-stage loses and duplicates nothing. Ray tests share one session and few executions."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from negrefine_ray.clip.image import (
    ImageEmbedder,
    LocalSpec,
    embed_files_local,
    embed_rows_ray,
    image_pool_spec,
)
from negrefine_ray.clip.image_cache import EmbedResult, ImageEmbeddingCache
from negrefine_ray.clip.model import create_clip
from negrefine_ray.clip.preprocess import DecodeOptions, crop_spec, crop_spec_for_model, variant_specs
from negrefine_ray.config import ImagesConfig, JobConfig, ModelConfig, build_config
from negrefine_ray.core.glmcm import encode_with_local, lmcm
from negrefine_ray.core.methods import TEST_PREPROCESSING
from negrefine_ray.distributed.pools import plan_pool
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.atomic import embedding_matrix
from negrefine_ray.runfolder.folder import StageContext
from negrefine_ray.stages import embed_images as image_embed
from negrefine_ray.stages.embed_images import run_embed_images

MODEL: dict[str, Any] = {"arch": "nr-tiny-vit", "pretrained": "none", "init_seed": 3}
TINY = ModelConfig(**MODEL)
RNG = np.random.default_rng(1)


def save(path: Path, img: Image.Image, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)


def noise(w: int, h: int, mode: str = "RGB") -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def make_data(root: Path) -> dict[str, Any]:
    """An ID class folder, an OOD image list (with bad entries) and an OOD `files` folder."""
    for i, cls in enumerate(["cat", "dog"]):
        for j in range(3):
            save(root / "id" / cls / f"{j}.jpg", noise(40 + 10 * j, 30 + 7 * i))
    ood = root / "ood"
    save(ood / "cmyk.jpg", noise(50, 40, "CMYK"))
    save(ood / "grey.png", noise(30, 60, "L"), "PNG")
    save(ood / "rgba.png", noise(45, 45, "RGBA"), "PNG")
    save(ood / "pal.png", noise(33, 44).convert("P"), "PNG")
    (ood / "empty.jpg").write_bytes(b"")
    (ood / "text.jpg").write_text("not a jpeg")
    good = io.BytesIO()
    noise(60, 50).save(good, "JPEG")
    (ood / "cut.jpg").write_bytes(good.getvalue()[:300])
    names = ["cmyk.jpg", "grey.png", "rgba.png", "pal.png", "empty.jpg", "text.jpg", "cut.jpg", "gone.jpg"]
    (root / "ood.txt").write_text("".join(f"{n} -1\n" for n in names))
    for j in range(4):
        save(root / "extra" / f"sub{j % 2}" / f"{j}.png", noise(20 + j, 25), "PNG")
    odd = {"name": "odd", "role": "ood", "root": str(ood), "format": "imagelist"}
    return {
        "datasets": [
            {"name": "id", "role": "id", "root": str(root / "id"), "format": "imagefolder", "expected": 6},
            {**odd, "image_list": str(root / "ood.txt")},
            {"name": "extra", "role": "ood", "root": str(root / "extra"), "format": "files", "expected": 5},
        ],
        "bad": {
            "empty.jpg": "empty",
            "text.jpg": "not-an-image",
            "cut.jpg": "corrupt",
            "gone.jpg": "missing",
        },
    }


def job(tmp: Path, datasets: list[dict[str, Any]], **images: Any) -> JobConfig:
    return build_config(
        {
            "run": {"name": "t", "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache")},
            "model": {**MODEL, "precision": "fp16", "device": "auto"},
            "images": {"batch_size": 4, "max_failed_fraction": 0.6, **images},
            "datasets": datasets,
        }
    )


def reference_transform(variant: str) -> Any:
    """The references' transforms built with torchvision itself (methods.md 1.6, 3.5, 5.7): the
    model's open_clip transform ("clip"), Resize(S) + CenterCrop(S) with torchvision's default
    bilinear interpolation ("torchvision"), bicubic Resize(256) + CenterCrop(224) scaled to S ("openood")."""
    from torchvision import transforms as T

    _, preprocess, _ = create_clip(TINY)
    if variant == "clip":
        return preprocess
    size = crop_spec(preprocess).out_size[0]
    resize = (
        T.Resize(size)
        if variant == "torchvision"
        else T.Resize(round(size * 256 / 224), T.InterpolationMode.BICUBIC)
    )
    normalize = next(t for t in preprocess.transforms if isinstance(t, T.Normalize))
    return T.Compose([resize, T.CenterCrop(size), T.ToTensor(), normalize])


def direct_embeddings(files: list[Path], variant: str = "clip") -> np.ndarray:
    """What the reference pipeline does: its transform on convert("RGB"), encode_image, L2."""
    model, _, _ = create_clip(TINY)
    transform = reference_transform(variant)
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        feats = model.encode_image(x)  # type: ignore[operator]
    return torch.nn.functional.normalize(feats, dim=-1).numpy()  # type: ignore[no-any-return]


def test_the_actor_adds_the_local_score_from_the_same_forward_pass(tmp_path: Path) -> None:
    """A variant with a LocalSpec also returns GL-MCM's L-MCM per image (the pseudo-variant
    local-mcm:<variant>, shape (N, 1)), equal to core.glmcm on the reference pipeline's crops, beside
    an unchanged global embedding; unreadable rows get zeros."""
    files = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, f in enumerate(files):
        save(f, noise(40 + 7 * i, 60))
    text = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    specs = variant_specs(crop_spec_for_model(TINY), ["torchvision"])
    embedder = ImageEmbedder(TINY, specs, local={"torchvision": LocalSpec(text, 1.0)})
    pairs = [(str(tmp_path), f.name) for f in files] + [(str(tmp_path), "gone.jpg")]
    results = embed_files_local(pairs, embedder, DecodeOptions(), workers=0, batch_size=2)
    assert list(results) == ["torchvision", "local-mcm:torchvision"]
    np.testing.assert_allclose(
        results["torchvision"].embedding[:3], direct_embeddings(files, "torchvision"), atol=1e-5
    )
    model, _, _ = create_clip(TINY)
    transform = reference_transform("torchvision")
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        want = lmcm(encode_with_local(model, x)[1], torch.from_numpy(text)).numpy()
    local = results["local-mcm:torchvision"]
    assert local.embedding.shape == (4, 1) and local.status.tolist() == ["ok"] * 3 + ["missing"]
    np.testing.assert_allclose(local.embedding[:3, 0], want, atol=1e-5)
    assert local.embedding[3, 0] == 0.0 and np.ptp(local.embedding[:3, 0]) > 0


def test_crop_spec_without_weights_equals_the_models_transform() -> None:
    _, preprocess, _ = create_clip(TINY)
    assert crop_spec_for_model(TINY) == crop_spec(preprocess)


def plan_actors(images: ImagesConfig, model: ModelConfig, cluster_gpus: float) -> Any:
    return plan_pool(image_pool_spec(images, model), cluster_gpus)


def test_plan_actors() -> None:
    cpu = plan_actors(ImagesConfig(), ModelConfig(device="auto"), 0)
    assert (cpu.device, cpu.pool.actors, cpu.pool.actor_gpus) == ("cpu", 1, 0.0)
    assert (cpu.pool.actor_cpus, cpu.pool.task_cpus) == (0.5, 1.0)  # unequal: decode stays unfused
    quarter = plan_actors(ImagesConfig(gpus_per_actor=0.25), ModelConfig(), 2)
    assert (quarter.device, quarter.pool.actors, quarter.describe()) == ("cuda", 8, "8 actors x 0.25 GPU")
    assert plan_actors(ImagesConfig(), ModelConfig(device="cpu"), 8).device == "cpu"
    with pytest.raises(StageError, match=r"has 0 GPUs"):
        plan_actors(ImagesConfig(), ModelConfig(device="cuda"), 0)


def test_cache_round_trip_keeps_failed_rows_null(tmp_path: Path) -> None:
    cache = ImageEmbeddingCache(tmp_path)
    emb = RNG.normal(size=(3, 4)).astype(np.float32)
    emb[1] = 0
    result = EmbedResult(np.array(["ok", "corrupt", "ok"]), np.array(["", "bad", ""]), emb)
    rows = pa.table({"path": ["a", "b", "c"], "size": [1, 2, 3], "mtime_ns": [4, 5, 6]})
    cache.put("b", "k", rows, result)
    back = cache.get("b", "k", ["a", "b", "c"])
    assert back is not None and back.status.tolist() == ["ok", "corrupt", "ok"]
    np.testing.assert_array_equal(back.embedding, emb)
    assert pq.read_table(cache.path("b", "k")).column("embedding").null_count == 1
    assert cache.get("b", "k", ["a", "b"]) is None and cache.get("b", "other", ["a"]) is None


def test_dataloader_path_equals_direct_open_clip(tmp_path: Path) -> None:
    files = [tmp_path / f"{i}.jpg" for i in range(5)]
    for i, f in enumerate(files):
        save(f, noise(30 + 9 * i, 70 - 5 * i))
    embedder = ImageEmbedder(TINY, variant_specs(crop_spec_for_model(TINY), list(TEST_PREPROCESSING)))
    pairs = [(str(tmp_path), f.name) for f in files] + [(str(tmp_path), "gone.jpg")]
    for workers in (0, 2):
        results = embed_files_local(pairs, embedder, DecodeOptions(), workers=workers, batch_size=2)
        assert list(results) == list(TEST_PREPROCESSING)
        for variant, out in results.items():
            assert out.status.tolist() == ["ok"] * 5 + ["missing"]
            np.testing.assert_allclose(out.embedding[:5], direct_embeddings(files, variant), atol=1e-5)
            assert not out.embedding[5].any()


def stage(config: JobConfig, tmp: Path) -> Any:
    out = tmp / f"stage-{len(list(tmp.glob('stage-*')))}"
    out.mkdir()
    ctx = StageContext(config, "embed-images", out, config.run_dir)
    return run_embed_images(ctx), out


@pytest.mark.ray
def test_stage_embeds_every_format_equal_to_open_clip_then_reuses_cache(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_data(tmp_path / "data")
    config = job(tmp_path, data["datasets"])
    output, out = stage(config, tmp_path)
    table = pq.read_table(out / "images.parquet")
    variants = ["clip", "torchvision"]  # the default methods' references (images.preprocess "per-method")
    assert table.column_names == [
        "dataset",
        "role",
        "path",
        "label",
        "status",
        *(f"embedding@{v}" for v in variants),
    ]
    assert table.column("dataset").to_pylist() == ["id"] * 6 + ["odd"] * 8 + ["extra"] * 4
    assert table.column("label").to_pylist()[:6] == [0, 0, 0, 1, 1, 1]
    status = dict(zip(table.column("path").to_pylist(), table.column("status").to_pylist(), strict=True))
    assert {p: status[p] for p in data["bad"]} == data["bad"]
    ok = np.array(table.column("status").to_pylist()) == "ok"
    roots = {d["name"]: Path(d["root"]) for d in data["datasets"]}
    names, paths = table.column("dataset").to_pylist(), table.column("path").to_pylist()
    files = [roots[d] / p for d, p, k in zip(names, paths, ok, strict=True) if k]
    for variant in variants:
        assert ok.sum() == 14 and table.column(f"embedding@{variant}").null_count == 4
        got = embedding_matrix(table.column(f"embedding@{variant}"), nulls_as_zero=True)[ok]
        np.testing.assert_allclose(got, direct_embeddings(files, variant), atol=1e-5)
    stats = output.stats
    assert stats["variants"] == variants and set(stats["preprocess"]) == set(variants)
    assert stats["embedded"] == 18 and stats["failures"] == {
        "missing": 1, "empty": 1, "not-an-image": 1, "corrupt": 1,
    }  # fmt: skip
    assert stats["actors"] == "1 actor x CPU" and stats["precision"] == "fp32"
    assert len(stats["expected_mismatches"]) == 1 and "'extra'" in stats["expected_mismatches"][0]
    assert pq.read_table(out / "failures.parquet").num_rows == 4
    assert output.summary.startswith("18 images in ") and "4 unreadable" in output.summary

    def no_embedding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second run must not embed anything")

    monkeypatch.setattr(image_embed, "embed_rows_ray", no_embedding)
    again, out2 = stage(config, tmp_path)
    assert again.stats["embedded"] == 0 and again.stats["from_cache"] == 18
    assert pq.read_table(out2 / "images.parquet").equals(table)
    shared, out3 = stage(job(tmp_path, data["datasets"], preprocess="shared"), tmp_path)  # a subset: cached
    assert shared.stats["variants"] == ["clip"] and shared.stats["embedded"] == 0
    assert pq.read_table(out3 / "images.parquet").equals(table.drop_columns(["embedding@torchvision"]))
    with pytest.raises(StageError, match=r"dataset 'odd': 4 of 8 images .*images\.max_failed_fraction"):
        stage(job(tmp_path, data["datasets"], max_failed_fraction=0.2), tmp_path)  # from the cache
    with pytest.raises(StageError, match=r"'odd': 1 of 8 listed files do not exist"):
        stage(job(tmp_path, data["datasets"], max_failed_fraction=0.1), tmp_path)  # before any work


@pytest.mark.ray
def test_actor_killed_mid_stage_loses_and_duplicates_nothing(ray_session: None, tmp_path: Path) -> None:
    import pyarrow as pa

    marker = tmp_path / "crashed"

    class CrashOnce(ImageEmbedder):
        """Kills its own process on its first batch, once across restarts (Ray restarts the actor
        and retries the task: Ray Data 2.60 sets max_restarts=-1, max_task_retries=-1 for pools)."""

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if not marker.exists():
                marker.write_text("x")
                os._exit(1)
            return super().__call__(batch)

    for i in range(24):
        save(tmp_path / "img" / f"{i:02d}.png", noise(20 + i, 30), "PNG")
    paths = sorted(p.name for p in (tmp_path / "img").iterdir())
    work = pa.table({"row": np.arange(24), "root": [str(tmp_path / "img")] * 24, "path": paths})
    model = ModelConfig(**MODEL, device="cpu", precision="fp32")
    plan = plan_actors(ImagesConfig(), model, 0)
    specs = {"clip": crop_spec_for_model(model)}
    out = embed_rows_ray(
        work, model, plan, batch_size=4, options=DecodeOptions(), specs=specs, embedder_cls=CrashOnce
    )["clip"]
    assert marker.exists() and out.status.tolist() == ["ok"] * 24
    np.testing.assert_allclose(
        out.embedding, direct_embeddings([tmp_path / "img" / p for p in paths]), atol=1e-5
    )
