"""Listings: ImageFolder's order and labels (checked against torchvision itself), image lists with
escapes refused and missing files recorded, the ImageNet devkit, `files`, seeded limits, presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from negrefine_ray.config import DatasetConfig, build_config
from negrefine_ray.data.benchmarks import PRESETS
from negrefine_ray.data.datasets import list_dataset, sample_indices, sample_per_class
from negrefine_ray.data.file_walk import MISSING
from negrefine_ray.data.image_lists import parse_image_list
from negrefine_ray.data.presets import resolve_datasets
from negrefine_ray.errors import NegRefineError


def touch_image(path: Path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (len(path.name) * 7 % 256, 10, 20)).save(path, fmt)


def make_folder(root: Path) -> Path:
    """Class folders with nested sub-folders, upper-case and non-image extensions, names whose
    sort order differs between 'a-b' and 'a/b'."""
    for rel in [
        "zebra/z1.jpg",
        "apple/b.JPEG",
        "apple/a.png",
        "apple/sub/c.jpg",
        "apple-pie/x.webp",
        "Banana/y.jpg",
        "apple/notes.txt",
        "apple/anim.gif",
    ]:
        p = root / rel
        if p.suffix in (".txt",):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("not an image")
        else:
            touch_image(p, {"png": "PNG", "webp": "WEBP", "gif": "GIF"}.get(p.suffix[1:].lower(), "JPEG"))
    return root


def ds(name: str, root: Path | str, fmt: str, **kw: object) -> DatasetConfig:
    return DatasetConfig(name=name, role=kw.pop("role", "id"), root=str(root), format=fmt, **kw)  # type: ignore[arg-type]


def rows(listing: object) -> list[tuple[str, int]]:
    t = listing.table  # type: ignore[attr-defined]
    return list(zip(t.column("path").to_pylist(), t.column("label").to_pylist(), strict=True))


def test_imagefolder_matches_torchvision_order_and_labels(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root = make_folder(tmp_path / "data")
    listing = list_dataset(ds("folder", root, "imagefolder"))
    expected = [(str(Path(p).relative_to(root)), label) for p, label in ImageFolder(str(root)).samples]
    assert rows(listing) == expected
    assert "apple/anim.gif" not in dict(expected)  # ImageFolder ignores GIFs (NINCO: 5,879 -> 5,878)
    assert listing.table.column("size").to_pylist() == [(root / p).stat().st_size for p, _ in expected]


def test_ood_labels_are_minus_one_and_files_takes_every_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    folder = list_dataset(ds("folder", root, "imagefolder", role="ood"))
    assert set(folder.table.column("label").to_pylist()) == {-1}
    files = list_dataset(ds("files", root, "files", role="ood"))
    paths = files.table.column("path").to_pylist()
    assert paths == sorted(paths, key=lambda p: (str(Path(p).parent), Path(p).name))
    assert "apple/anim.gif" in paths and "apple/notes.txt" not in paths and len(paths) == 7


def test_root_as_file_uri(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    by_uri = list_dataset(ds("folder", f"file://{root}", "imagefolder"))
    assert rows(by_uri) == rows(list_dataset(ds("folder", root, "imagefolder")))


def test_missing_root_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(NegRefineError, match=r"datasets.gone.root"):
        list_dataset(ds("gone", tmp_path / "nope", "imagefolder"))


def test_imagelist_split_at_first_space_and_missing_recorded(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch_image(root / "ninco/a.jpg")
    touch_image(root / "ninco/b c.jpg")
    lst = tmp_path / "test_ninco.txt"
    touch_image(root / "ninco/c.jpg")
    lst.write_text("ninco/a.jpg -1\n\nninco/gone.jpg -1\r\nninco/c.jpg 3\n")
    listing = list_dataset(ds("ninco", root, "imagelist", image_list=str(lst)))
    assert rows(listing) == [("ninco/a.jpg", -1), ("ninco/gone.jpg", -1), ("ninco/c.jpg", 3)]
    assert listing.table.column("size").to_pylist()[1] == MISSING and listing.missing == 1
    with pytest.raises(NegRefineError, match="line 1"):  # split at the FIRST space: label "c.jpg 5"
        parse_image_list("ninco/b c.jpg 5", "x")


@pytest.mark.parametrize("bad", ["../secret.jpg", "a/../../x.jpg", "/etc/passwd", "s3://b/k.jpg"])
def test_imagelist_escape_is_refused(bad: str) -> None:
    with pytest.raises(NegRefineError, match="escapes the dataset root"):
        parse_image_list(f"ok.jpg 1\n{bad} -1\n", "list.txt")


def test_imagelist_without_list_or_with_bad_label(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(NegRefineError, match="image_list"):
        list_dataset(ds("x", tmp_path / "d", "imagelist"))
    with pytest.raises(NegRefineError, match=r"list\.txt line 1: label 'cat' is not an integer"):
        parse_image_list("a.jpg cat\n", "list.txt")


def write_devkit(folder: Path, wnids_by_id: dict[int, str]) -> None:
    """A devkit data/ folder: meta.mat (leaves + one internal synset) and the ground truth."""
    from scipy.io import savemat

    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array(
        [(i, w, w, 0) for i, w in wnids_by_id.items()] + [(1001, "n00001740", "entity", 2)], dtype=fields
    )
    folder.mkdir(parents=True)
    savemat(folder / "meta.mat", {"synsets": synsets})


def test_imagenet_val_flat_layout_with_devkit(tmp_path: Path) -> None:
    # ILSVRC2012_ID order is not WNID order: id 1 = n02119789 (kit fox) is class 2 of 3 sorted WNIDs.
    write_devkit(tmp_path / "devkit/data", {1: "n02119789", 2: "n01440764", 3: "n09999999"})
    gt = tmp_path / "devkit/data/ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n2\n3\n1\n")
    val = tmp_path / "val"
    for i in (1, 2, 4):
        touch_image(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    listing = list_dataset(ds("imagenet", val, "imagenet-val", image_list=str(gt), expected=4))
    assert rows(listing) == [
        ("ILSVRC2012_val_00000001.JPEG", 1),
        ("ILSVRC2012_val_00000002.JPEG", 0),
        ("ILSVRC2012_val_00000003.JPEG", 2),
        ("ILSVRC2012_val_00000004.JPEG", 1),
    ]
    assert listing.missing == 1 and listing.expected_mismatch() is None


def test_imagenet_val_without_meta_or_with_unknown_ids(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    gt = tmp_path / "gt/ILSVRC2012_validation_ground_truth.txt"
    gt.parent.mkdir()
    gt.write_text("1\n")
    with pytest.raises(NegRefineError, match=r"meta\.mat"):
        list_dataset(ds("imagenet", tmp_path / "val", "imagenet-val", image_list=str(gt)))
    write_devkit(tmp_path / "kit", {1: "n01440764"})
    (tmp_path / "kit/gt.txt").write_text("1\n7\n")
    with pytest.raises(NegRefineError, match=r"ids \[7\]"):
        list_dataset(
            ds("imagenet", tmp_path / "val", "imagenet-val", image_list=str(tmp_path / "kit/gt.txt"))
        )


def test_imagenet_val_class_folder_layout(tmp_path: Path) -> None:
    for wnid in ("n02119789", "n01440764"):
        touch_image(tmp_path / "val" / wnid / "ILSVRC2012_val_00000001.JPEG")
    listing = list_dataset(ds("imagenet", tmp_path / "val", "imagenet-val"))
    assert [label for _, label in rows(listing)] == [0, 1]
    assert rows(listing)[0][0].startswith("n01440764/")


def test_limit_is_a_seeded_sorted_sample_per_dataset(tmp_path: Path) -> None:
    a = sample_indices(1000, 10, 0, "inaturalist")
    assert np.array_equal(a, sample_indices(1000, 10, 0, "inaturalist")) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, sample_indices(1000, 10, 1, "inaturalist"))
    assert not np.array_equal(a, sample_indices(1000, 10, 0, "sun"))
    assert np.array_equal(sample_indices(5, 10, 0, "x"), np.arange(5))
    root = make_folder(tmp_path / "data")
    full = rows(list_dataset(ds("f", root, "files")))
    part = list_dataset(ds("f", root, "files", limit=3, expected=7))
    assert part.total == 7 and rows(part) == [full[i] for i in sample_indices(7, 3, 0, "f")]
    assert part.expected_mismatch() is None


def test_expected_count_mismatch_is_reported_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_folder(tmp_path / "data")
    listing = list_dataset(ds("f", root, "files", expected=5_640))
    message = listing.expected_mismatch()
    assert message is not None and "7 images" in message and "5,640" in message
    assert message in caplog.text


def test_presets_carry_the_papers_counts() -> None:
    counts = {name: {e.name: e.expected for e in entries} for name, entries in PRESETS.items()}
    assert counts["imagenet_negrefine"] == {
        "imagenet": 50_000, "inaturalist": 10_000, "openimage_o": 17_632, "clean": 2_715, "ninco": 5_878,
    }  # fmt: skip
    assert counts["imagenet_four"] == {
        "imagenet": 50_000, "inaturalist": 10_000, "sun": 10_000, "places": 10_000, "textures": 5_640,
    }  # fmt: skip
    assert counts["near"] == {"imagenet": 45_000, "ssb_hard": 49_000, "ninco": 5_879}
    assert counts["far"] == {
        "imagenet": 45_000,
        "inaturalist": 10_000,
        "textures": 5_160,
        "openimage_o": 15_869,
    }


def test_preset_expansion_and_override_by_name() -> None:
    cfg = build_config(
        {
            "images": {"preset": "far", "data_root": "s3://bucket/openood"},
            "datasets": [
                {"name": "imagenet", "role": "id", "root": "/data/val", "format": "imagenet-val"},
                {"name": "extra", "role": "ood", "root": "/data/extra", "format": "files"},
            ],
        }
    )
    resolved = resolve_datasets(cfg)
    assert [d.name for d in resolved] == ["imagenet", "inaturalist", "textures", "openimage_o", "extra"]
    assert resolved[0].root == "/data/val" and resolved[0].format == "imagenet-val"
    assert resolved[2].root == "s3://bucket/openood/images_classic"
    assert resolved[2].image_list == "s3://bucket/openood/benchmark_imglist/imagenet/test_textures.txt"


def test_preset_errors() -> None:
    with pytest.raises(NegRefineError, match=r"needs images\.data_root"):
        resolve_datasets(build_config({"images": {"preset": "near"}}))
    with pytest.raises(NegRefineError, match="Did you mean 'imagenet_four'"):
        resolve_datasets(build_config({"images": {"preset": "imagenet_fuor", "data_root": "/d"}}))


def test_per_class_sample_keeps_at_most_k_of_each_label_seeded() -> None:
    """datasets.per_class (InterNeg's 16 prototype images per class): up to k rows of each label, all
    rows of a smaller class, the same rows for the same seed, other rows for another seed."""
    labels = [0] * 10 + [1] * 3 + [2] * 7
    keep = sample_per_class(labels, 4, seed=0, name="train")
    assert keep.tolist() == sorted(keep.tolist())
    counts = np.bincount(np.array(labels)[keep], minlength=3)
    assert counts.tolist() == [4, 3, 4]
    assert np.array_equal(keep, sample_per_class(labels, 4, seed=0, name="train"))
    others = [sample_per_class(labels, 4, seed=s, name="train") for s in range(1, 6)]
    assert any(not np.array_equal(keep, o) for o in others)
    assert sample_per_class(labels, 0, seed=0, name="train").tolist() == list(range(20))
