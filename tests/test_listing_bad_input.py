"""Listings of bad input (issue 9): file names that are not UTF-8, NUL bytes, broken lists and labels,
duplicate lines, broken links, empty or hidden class folders and links out of the root each give a
clear NegRefineError or a recorded row status, never a raw traceback or a failed Ray stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from negrefine_ray.clip.decode_task import decode_rows
from negrefine_ray.clip.image_cache import EmbedResult
from negrefine_ray.clip.preprocess import (
    FAILURE_KINDS,
    DecodeOptions,
    crop_spec_for_model,
    read_and_decode,
)
from negrefine_ray.config import DatasetConfig, ModelConfig, build_config
from negrefine_ray.data.datasets import list_dataset, parse_image_list
from negrefine_ray.data.file_walk import MISSING
from negrefine_ray.errors import NegRefineError, StageError
from negrefine_ray.runfolder.folder import StageContext
from negrefine_ray.stages.embed_images import _dataset_stats, check_listing, run_embed_images

MODEL: dict[str, Any] = {"arch": "nr-tiny-vit", "pretrained": "none", "init_seed": 3}


def touch_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (len(path.name) * 7 % 256, 10, 20)).save(path, "JPEG")


def ds(root: Path | str, fmt: str, **kw: Any) -> DatasetConfig:
    return DatasetConfig(
        name=kw.pop("name", "d"), role=kw.pop("role", "id"), root=str(root), format=fmt, **kw
    )


def table(listing: Any, *columns: str) -> list[tuple[Any, ...]]:
    t = listing.table
    return list(zip(*(t.column(c).to_pylist() for c in columns), strict=True))


def imagelist(tmp: Path, text: str | bytes, **kw: Any) -> Any:
    lst = tmp / "list.txt"
    lst.write_bytes(text if isinstance(text, bytes) else text.encode())
    (tmp / "data").mkdir(exist_ok=True)
    return list_dataset(ds(tmp / "data", "imagelist", image_list=str(lst), **kw))


# 1. File names that are not UTF-8


@pytest.mark.parametrize("fmt", ["imagefolder", "files"])
def test_non_utf8_file_name_is_refused_naming_folder_bytes_and_fix(tmp_path: Path, fmt: str) -> None:
    touch_image(tmp_path / "cat/ok.jpg")
    os.close(os.open(os.fsencode(tmp_path / "cat") + b"/bad\xff.jpg", os.O_CREAT | os.O_WRONLY))
    with pytest.raises(NegRefineError) as err:
        list_dataset(ds(tmp_path, fmt))
    message = str(err.value)
    assert f"{tmp_path}/cat" in message and r"b'bad\xff.jpg'" in message
    assert "not valid UTF-8" in message and "rename" in message


def test_non_utf8_folder_and_unlisted_non_utf8_file(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(folder)
    Image.new("RGB", (4, 4)).save(os.fsdecode(folder + b"/x.jpg"), "JPEG")
    with pytest.raises(NegRefineError, match=r"b'caf\\xe9'"):
        list_dataset(ds(tmp_path, "imagefolder"))
    # An image list names its files: a stray undecodable name beside them is no error.
    touch_image(tmp_path / "data/a.jpg")
    os.close(os.open(os.fsencode(tmp_path) + b"/data/b\xff.jpg", os.O_CREAT | os.O_WRONLY))
    assert table(imagelist(tmp_path, "a.jpg 0\n"), "path", "status") == [("a.jpg", "")]


# 2. NUL bytes in an image list


def test_nul_byte_in_list_is_refused_with_line_and_never_aborts_a_read(tmp_path: Path) -> None:
    with pytest.raises(NegRefineError, match=r"list\.txt line 2: .*NUL"):
        parse_image_list("ok.jpg 1\na\x00b.jpg -1\n", "list.txt")
    spec = crop_spec_for_model(ModelConfig(**MODEL))
    crops, status, detail = read_and_decode(str(tmp_path), "a\x00b.jpg", (spec,), DecodeOptions())
    assert crops is None and status == "unreadable" and "NUL" in detail


# 3. Undecodable lists, a folder as list, labels outside int64


def test_list_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(NegRefineError, match=r"list\.txt line 2: .*b'\\xe9'.*UTF-8"):
        imagelist(tmp_path, b"ok.jpg 1\ncaf\xe9.jpg -1\n")


def test_an_empty_list_says_the_list_is_empty(tmp_path: Path) -> None:
    """Issue 21, item 18: not "lists no images under ROOT", which sends the user to the wrong place."""
    listing = imagelist(tmp_path, "\n  \n")
    with pytest.raises(StageError, match=r"its image list .*list\.txt has no entries \(the file is empty"):
        check_listing(listing, 0.1)
    (tmp_path / "folder").mkdir()
    with pytest.raises(StageError, match="lists no images under"):
        check_listing(list_dataset(ds(tmp_path / "folder", "files")), 0.1)


def test_list_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(NegRefineError, match=r"datasets\.d\.image_list .* is a folder"):
        list_dataset(ds(tmp_path / "data", "imagelist", image_list=str(tmp_path)))


@pytest.mark.parametrize("label", [str(10**23), str(-(2**63) - 1), str(2**63), "1e23"])
def test_label_outside_int64_is_refused_with_line(tmp_path: Path, label: str) -> None:
    with pytest.raises(NegRefineError, match=r"list\.txt line 2: .*label"):
        imagelist(tmp_path, f"a.jpg 1\nb.jpg {label}\n")


def test_bad_imagenet_ground_truth_names_line(tmp_path: Path) -> None:
    from scipy.io import savemat

    (tmp_path / "val").mkdir()
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
    savemat(
        tmp_path / "meta.mat", {"synsets": np.array([(1, "n01440764", 0), (2, "n01443537", 0)], dtype=fields)}
    )
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\nx7\n")
    with pytest.raises(NegRefineError, match=r"ground_truth\.txt line 2: .*'x7'"):
        list_dataset(ds(tmp_path / "val", "imagenet-val", image_list=str(gt)))


# 4. Labels: ASCII -?[0-9]+ only


@pytest.mark.parametrize("label", ["1_000", "+5", "\u0663", "5.0", "0x10", "", "5 6", "٣٣"])
def test_label_must_be_ascii_digits(label: str) -> None:
    with pytest.raises(NegRefineError, match=r"list\.txt line 1: .*-\?\[0-9\]\+"):
        parse_image_list(f"a.jpg {label}\n", "list.txt")


def test_accepted_labels() -> None:
    text = "a.jpg 5\nb.jpg -1\nc.jpg  7\nd.jpg 007\r\ne.jpg 3\t\n"
    assert [(p, v) for p, v, _ in parse_image_list(text, "x")] == [
        ("a.jpg", 5), ("b.jpg", -1), ("c.jpg", 7), ("d.jpg", 7), ("e.jpg", 3)
    ]  # fmt: skip


# 5. Duplicate lines


def test_duplicate_lines_are_scored_once_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listing = imagelist(tmp_path, "a.jpg 1\nb.jpg 2\n./a.jpg 1\na.jpg 1\nc.jpg 0\n", expected=3)
    assert table(listing, "path", "label") == [("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 0)]
    assert listing.duplicates == 2 and listing.total == 3 and listing.expected_mismatch() is None
    assert "2 duplicate" in caplog.text and "line 3 repeats line 1" in caplog.text
    result = EmbedResult(np.array(["ok"] * 3), np.array([""] * 3), np.zeros((3, 2), np.float32))
    assert _dataset_stats(listing, result, "k", False)["duplicates"] == 2


def test_same_path_with_two_labels_is_refused_naming_both_lines(tmp_path: Path) -> None:
    with pytest.raises(NegRefineError, match=r"list\.txt lines 1 and 3: 'a\.jpg' .* labels 1 and 3"):
        imagelist(tmp_path, "a.jpg 1\nb.jpg 2\na.jpg 3\n")


# 6. Broken symbolic links


@pytest.mark.parametrize("fmt", ["imagefolder", "files"])
def test_broken_link_is_a_missing_row(tmp_path: Path, fmt: str) -> None:
    from torchvision.datasets import ImageFolder

    touch_image(tmp_path / "cat/a.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "cat/b.jpg")
    listing = list_dataset(ds(tmp_path, fmt))
    assert table(listing, "path", "size", "status")[1] == ("cat/b.jpg", MISSING, "missing")
    assert listing.missing == 1
    if fmt == "imagefolder":  # torchvision lists the dangling link too (its loader then fails on it)
        assert [(os.path.relpath(p, tmp_path), k) for p, k in ImageFolder(str(tmp_path)).samples] == table(
            listing, "path", "label"
        )


# 7. Empty and hidden class folders (torchvision's find_classes / make_dataset rule)


@pytest.mark.parametrize("empty", [["dog"], [".ipynb_checkpoints"], ["dog", ".ipynb_checkpoints"]])
def test_class_folder_without_images_is_refused_like_torchvision(tmp_path: Path, empty: list[str]) -> None:
    from torchvision.datasets import ImageFolder

    touch_image(tmp_path / "cat/a.jpg")
    for name in empty:
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("no image")
    with pytest.raises(FileNotFoundError, match="Found no valid file for the classes"):
        ImageFolder(str(tmp_path))
    with pytest.raises(NegRefineError) as err:
        list_dataset(ds(tmp_path, "imagefolder"))
    message = str(err.value)
    assert ", ".join(f"'{n}'" for n in sorted(empty)) in message and "remove" in message


def test_hidden_class_folder_with_images_is_a_class_like_torchvision(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    for rel in ("cat/a.jpg", ".hidden/b.jpg", "dog/.c.jpg", "dog/d.jpg"):
        touch_image(tmp_path / rel)
    listing = list_dataset(ds(tmp_path, "imagefolder"))
    expected = [(os.path.relpath(p, tmp_path), k) for p, k in ImageFolder(str(tmp_path)).samples]
    assert table(listing, "path", "label") == expected and expected[0] == (".hidden/b.jpg", 0)


# 8. Links out of the root: images.symlinks


def linked_tree(tmp: Path) -> Path:
    """root/cat/{a.jpg, in.jpg -> a.jpg, out.jpg -> outside}, root/ext -> an outside folder."""
    root, outside = tmp / "root", tmp / "outside"
    touch_image(root / "cat/a.jpg")
    touch_image(outside / "o.jpg")
    touch_image(outside / "sub/p.jpg")
    os.symlink("a.jpg", root / "cat/in.jpg")
    os.symlink(outside / "o.jpg", root / "cat/out.jpg")
    os.symlink(outside, root / "ext")
    return root


def test_within_root_records_links_out_of_the_root_without_reading(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root = linked_tree(tmp_path)
    follow = list_dataset(ds(root, "imagefolder"))
    within = list_dataset(ds(root, "imagefolder"), symlinks="within-root")
    expected = [(os.path.relpath(p, root), k) for p, k in ImageFolder(str(root)).samples]
    assert table(follow, "path", "label") == table(within, "path", "label") == expected
    assert set(follow.table.column("status").to_pylist()) == {""}
    assert dict(table(within, "path", "status")) == {
        "cat/a.jpg": "", "cat/in.jpg": "", "cat/out.jpg": "outside-root",
        "ext/o.jpg": "outside-root", "ext/sub/p.jpg": "outside-root",
    }  # fmt: skip
    assert within.fingerprint() != follow.fingerprint() and "outside-root" in FAILURE_KINDS
    # A root that is itself a link, and an image list through a linked folder.
    os.symlink(root, tmp_path / "alias")
    via_alias = list_dataset(ds(tmp_path / "alias/cat", "files"), symlinks="within-root")
    assert table(via_alias, "path", "status") == [("a.jpg", ""), ("in.jpg", ""), ("out.jpg", "outside-root")]
    lst = tmp_path / "l.txt"
    lst.write_text("cat/a.jpg 0\next/o.jpg 1\n")
    listed = list_dataset(ds(root, "imagelist", image_list=str(lst)), symlinks="within-root")
    assert table(listed, "status") == [("",), ("outside-root",)]


def test_decode_rows_does_not_read_rows_failed_at_listing(tmp_path: Path) -> None:
    touch_image(tmp_path / "a.jpg")
    spec = crop_spec_for_model(ModelConfig(**MODEL))
    rows = {
        "row": np.arange(3),
        "root": np.array([str(tmp_path)] * 3),
        "path": np.array(["a.jpg", "a.jpg", "gone.jpg"]),
        "status": np.array(["", "outside-root", "missing"]),
    }
    out = decode_rows(rows, {"clip": spec}, DecodeOptions())
    assert out["status"].tolist() == ["ok", "outside-root", "missing"]
    assert out["detail"][2] == "file not found" and not out["pixels@clip"][1].any()
    assert out["pixels@clip"][0].any()


@pytest.mark.ray
def test_stage_records_broken_and_outside_links_in_failures(ray_session: None, tmp_path: Path) -> None:
    root = linked_tree(tmp_path)
    os.symlink(tmp_path / "nowhere.jpg", root / "cat/broken.jpg")
    config = build_config(
        {
            "run": {"name": "t", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")},
            "model": {**MODEL, "device": "cpu"},
            "images": {"batch_size": 4, "max_failed_fraction": 0.9, "symlinks": "within-root"},
            "datasets": [{"name": "d", "role": "id", "root": str(root), "format": "imagefolder"}],
        }
    )
    out = tmp_path / "stage"
    out.mkdir()
    output = run_embed_images(StageContext(config, "embed-images", out, config.run_dir))
    failures = pq.read_table(out / "failures.parquet")
    paths, statuses = failures.column("path").to_pylist(), failures.column("status").to_pylist()
    assert dict(zip(paths, statuses, strict=True)) == {
        "cat/broken.jpg": "missing", "cat/out.jpg": "outside-root",
        "ext/o.jpg": "outside-root", "ext/sub/p.jpg": "outside-root",
    }  # fmt: skip
    assert output.stats["failures"] == {"missing": 1, "outside-root": 3}
    assert output.stats["datasets"]["d"]["duplicates"] == 0
