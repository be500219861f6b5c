"""Session-wide WordNet for the wordnet and corpus tests: an nltk copy built once from the system dict
folder (never the network) and the entries of every noun/adjective file. Test modules load it with
`pytest_plugins = ("conftest_wordnet",)`, so both share one build."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from negrefine_ray.core.corpus import KNOWN_LEXNAMES, wordnet_entries
from negrefine_ray.data.wordnet import WordNet, load_wordnet

DICT_DIR = Path(os.environ.get("NEGREFINE_WORDNET_DICT") or "/usr/share/wordnet")


@pytest.fixture(scope="session")
def wordnet_dict() -> Path:
    """The system WordNet 3.0 dict folder; tests that need it skip where it is missing."""
    if not (DICT_DIR / "data.noun").is_file():
        pytest.skip(f"no WordNet dict files in {DICT_DIR}: apt-get install wordnet-base wordnet-sense-index")
    return DICT_DIR


@pytest.fixture(scope="session")
def wordnet_cache(wordnet_dict: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache folder holding the session's nltk copy (built on first use)."""
    return tmp_path_factory.getbasetemp() / "wordnet-cache"


@pytest.fixture(scope="session")
def wordnet(wordnet_dict: Path, wordnet_cache: Path) -> WordNet:
    return load_wordnet(wordnet_cache, sources=("system",), dict_dir=wordnet_dict)


@pytest.fixture(scope="session")
def entries(wordnet: WordNet) -> pa.Table:
    """First-lemma entries of all 29 noun/adjective files (the 27 published + animal, food)."""
    return wordnet_entries(wordnet, KNOWN_LEXNAMES)
