"""ID label sets: ImageNet-1K and its 10/20/100 subsets, and label files."""

from __future__ import annotations

from pathlib import Path

import pytest

from negrefine_ray.core.labels import load_id_labels
from negrefine_ray.errors import NegRefineError


def test_imagenet1k_is_the_references_list() -> None:
    names = load_id_labels("imagenet1k")
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet paper"
    assert "kite (bird of prey)" in names
    assert names.count("missile") == 2 and names.count("sunglasses") == 2  # methods.md 0.4


def test_subsets_match_negrefines_class_lists() -> None:
    assert load_id_labels("imagenet10") == [
        "brambling", "American bullfrog", "Greater Swiss Mountain Dog", "Siamese cat",
        "common sorrel horse", "impala (antelope)", "container ship", "garbage truck", "sports car",
        "military aircraft",
    ]  # fmt: skip
    twenty = load_id_labels("imagenet20")
    assert len(twenty) == 20 and twenty[:3] == ["tank", "snowmobile", "Nile crocodile"]
    hundred = load_id_labels("imagenet100")
    assert len(set(hundred)) == 100
    assert (hundred[0], hundred[-1]) == ("white stork", "baseball player")


def test_label_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\n\n  dog  \nbird\n")
    assert load_id_labels(str(path)) == ["cat", "dog", "bird"]
    with pytest.raises(NegRefineError, match="does not exist"):
        load_id_labels(str(tmp_path / "missing.txt"))
    with pytest.raises(NegRefineError, match="Did you mean 'imagenet1k'"):
        load_id_labels("imagenet1kk")


def test_a_label_file_splits_at_newlines_only(tmp_path: Path) -> None:
    """U+2028, U+0085 and the other characters str.splitlines breaks at stay inside a label (issue 21,
    item 14: 20 lines gave 22 labels); \\r\\n and \\r end lines as \\n does."""
    names = [f"label {i}" for i in range(20)]
    names[3], names[11], names[15] = "line\u2028separator", "next\x85line", "form\x0cfeed"
    path = tmp_path / "labels.txt"
    path.write_bytes(("\n".join(names[:10]) + "\r\n" + "\r".join(names[10:]) + "\n").encode())
    assert load_id_labels(str(path)) == names
