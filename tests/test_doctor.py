"""`negrefine-ray doctor` names each problem and its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from negrefine_ray.config import build_config
from negrefine_ray.doctor import check_clip, check_llm_backends, check_wordnet


def test_clip_checks_name_the_fix(tmp_path: Path) -> None:
    random = check_clip(build_config({"model": {"arch": "nr-tiny-vit", "pretrained": "none"}}))
    assert random.ok and "meaningless" in random.detail
    missing = check_clip(build_config({"model": {"pretrained": str(tmp_path / "nope.pt")}}))
    assert not missing.ok and "no such file" in missing.detail and missing.fix
    offline = check_clip(build_config({}))  # ViT-B-16/openai is not in this machine's cache
    assert offline.optional and ("cache" in offline.detail)


def test_wordnet_check_reports_the_fix_when_nothing_is_there(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NEGREFINE_WORDNET_DICT", str(tmp_path / "no-dict"))
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "no-nltk"))
    check = check_wordnet(build_config({"run": {"cache_dir": str(tmp_path / "cache")}}))
    if check.ok:
        pytest.skip("nltk found a WordNet corpus of its own elsewhere on this machine")
    assert "apt-get install wordnet-base" in check.fix and "nltk.downloader" in check.fix
    assert check_wordnet(build_config({"corpus": {"source": str(tmp_path)}})).ok


def test_llm_backends_are_optional() -> None:
    checks = list(check_llm_backends(build_config({})))
    assert [c.name for c in checks] == ["transformers judge", "vllm judge"]
    assert all(c.optional for c in checks)
