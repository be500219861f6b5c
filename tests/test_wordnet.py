"""WordNet provisioning: the nltk copy built from the system dict folder, its reuse, concurrent builds,
the bounded download attempt and the error that names both fixes. No test touches the network."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nltk
import pytest

from negrefine_ray.data import wordnet as wordnet_module
from negrefine_ray.data.wordnet import LEXNAMES, WordNet, build_nltk_copy, load_wordnet, wordnet_status
from negrefine_ray.errors import NegRefineError

pytest_plugins = ("conftest_wordnet",)
BOTH_FIXES = ("python -m nltk.downloader wordnet", "apt-get install wordnet-base wordnet-sense-index")


def test_copy_built_from_the_system_dict_reads_like_nltks(
    wordnet: WordNet, wordnet_dict: Path, wordnet_cache: Path
) -> None:
    assert "WordNet 3.0" in wordnet.source and str(wordnet_dict) in wordnet.source
    wn = wordnet.reader
    assert len(set(wn.all_lemma_names("n"))) == 117_798  # environment.md: nltk's own count
    assert len(set(wn.all_lemma_names("a"))) == 21_479
    costa_rica = wn.synset("costa_rica.n.01")
    assert costa_rica.lexname() == "noun.location"
    assert [s.name() for s in costa_rica.instance_hypernyms()] == ["central_american_country.n.01"]
    copy = wordnet_cache / "nltk_data" / "corpora" / "wordnet"
    assert not any(p.is_symlink() for p in copy.iterdir())  # nltk refuses links leaving the folder
    assert not list(copy.parent.glob(".wordnet-build-*"))


def test_lexnames_file_matches_the_data_files(wordnet_cache: Path) -> None:
    """The generated lexnames numbering agrees with the lex_filenum field of every synset line."""
    copy = wordnet_cache / "nltk_data" / "corpora" / "wordnet"
    lines = (copy / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    assert lines[3] == "03\tnoun.Tops\t1" and lines[28] == "28\tnoun.time\t1"
    for pos, prefix in (("noun", "noun."), ("verb", "verb."), ("adj", "adj."), ("adv", "adv.")):
        with open(copy / f"data.{pos}", encoding="utf-8") as data:
            numbers = {int(line.split()[1]) for line in data if not line.startswith("  ")}
        assert {LEXNAMES[n] for n in numbers} == {name for name in LEXNAMES if name.startswith(prefix)}


def test_second_load_reuses_the_copy_without_the_dict(
    wordnet: WordNet, wordnet_cache: Path, tmp_path: Path
) -> None:
    again = load_wordnet(wordnet_cache, sources=("system",), dict_dir=tmp_path / "no-dict")
    assert "copy in" in again.source
    assert again.reader.synset("costa_rica.n.01").instance_hypernyms()


def test_concurrent_builds_leave_one_complete_copy(wordnet_dict: Path, tmp_path: Path) -> None:
    nltk_data = tmp_path / "nltk_data"
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("fork")) as pool:
        built = list(pool.map(build_nltk_copy, [wordnet_dict] * 3, [nltk_data] * 3))
    final = nltk_data / "corpora" / "wordnet"
    assert built == [final] * 3
    assert all(p.is_file() and not p.is_symlink() for p in final.iterdir())
    assert (final / "lexnames").read_text().count("\n") == 45
    assert [p.name for p in final.parent.iterdir()] == ["wordnet"]  # no temporary folders left


def test_incomplete_existing_copy_is_reported(tmp_path: Path) -> None:
    final = tmp_path / "nltk_data" / "corpora" / "wordnet"
    final.mkdir(parents=True)
    (final / "data.noun").write_text("")
    with pytest.raises(NegRefineError, match=r"not a complete WordNet copy.*delete that folder"):
        build_nltk_copy(tmp_path / "dict", tmp_path / "nltk_data")


def test_no_source_names_both_fixes(tmp_path: Path) -> None:
    with pytest.raises(NegRefineError) as error:
        load_wordnet(tmp_path / "cache", sources=("system",), dict_dir=tmp_path / "empty")
    message = str(error.value)
    assert str(tmp_path / "empty") in message and "data.noun" in message
    assert all(fix in message for fix in BOTH_FIXES)


def test_unknown_source_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(NegRefineError, match="Unknown WordNet source"):
        load_wordnet(tmp_path, sources=("apt",))


def test_offline_download_failure_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> bool:
        raise ValueError("Error loading wordnet: <urlopen error no address>")  # what nltk raises

    monkeypatch.setattr(nltk, "download", offline)
    with pytest.raises(NegRefineError, match="nltk's download failed: Error loading wordnet") as error:
        load_wordnet(tmp_path, sources=("download",))
    assert all(fix in str(error.value) for fix in BOTH_FIXES)


def test_download_is_time_bounded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen_timeouts: list[float] = []

    def hanging(*args: object, **kwargs: object) -> bool:
        seen_timeouts.append(nltk.downloader.NETWORK_TIMEOUT)
        time.sleep(3)
        return True

    monkeypatch.setattr(nltk, "download", hanging)
    saved = nltk.downloader.NETWORK_TIMEOUT
    start = time.monotonic()
    with pytest.raises(NegRefineError, match=r"did not finish within 0\.3 s"):
        load_wordnet(tmp_path, sources=("download",), download_timeout_s=0.3)
    assert time.monotonic() - start < 2.5
    assert seen_timeouts == [wordnet_module.DOWNLOAD_SOCKET_TIMEOUT_S]
    assert saved == nltk.downloader.NETWORK_TIMEOUT


@pytest.fixture
def no_nltk_wordnet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any wordnet on nltk's data path (the session copy is on it) and forbid downloads."""
    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("status must not download"))


def test_status_without_wordnet(
    no_nltk_wordnet: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEGREFINE_WORDNET_DICT", str(tmp_path / "empty"))
    ok, detail = wordnet_status(tmp_path / "cache")
    assert not ok and str(tmp_path / "empty") in detail


def test_status_with_a_dict_folder(
    no_nltk_wordnet: None, wordnet_dict: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEGREFINE_WORDNET_DICT", str(wordnet_dict))
    ok, detail = wordnet_status(tmp_path / "cache")
    assert ok and "WordNet 3.0" in detail and "first use" in detail
    assert not (tmp_path / "cache").exists()  # status builds nothing
