"""WordNet 3.0 through nltk, provisioned without a manual step: nltk's own corpus when it is installed,
else nltk's downloader (time-bounded, so an offline machine does not hang), else an nltk-readable copy
built from a system WordNet dict folder (Debian's wordnet-base + wordnet-sense-index). The corpus stage
reads the lexicographer files from it (methods.md 0.3)."""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nltk
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from negrefine_ray.errors import NegRefineError

# WordNet's 45 lexicographer files in their number order (lexnames(5)); nltk needs this `lexnames`
# file, which Debian does not ship. Pos numbers: 1 noun, 2 verb, 3 adjective, 4 adverb.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

_POS = ("noun", "verb", "adj", "adv")
REQUIRED_FILES: tuple[str, ...] = tuple(
    f"{kind}.{pos}" for kind in ("data", "index") for pos in _POS
) + tuple(f"{pos}.exc" for pos in _POS)
OPTIONAL_FILES = ("index.sense", "cntlist.rev")  # lemma_from_key and lemma counts need them

SOURCES = ("nltk", "download", "system")
DICT_ENV = "NEGREFINE_WORDNET_DICT"
DEFAULT_DICT_DIRS = (Path("/usr/share/wordnet"), Path("/usr/share/wordnet/dict"))
INSTALL_HINT = (
    "on a machine with internet run `python -m nltk.downloader wordnet`; offline on Debian/Ubuntu run "
    "`apt-get install wordnet-base wordnet-sense-index` (or set NEGREFINE_WORDNET_DICT to a WordNet "
    "3.0 dict folder)"
)
# nltk waits up to 120 s per socket read; a blackholed network would stall a run that long.
DOWNLOAD_SOCKET_TIMEOUT_S = 15


@dataclass(frozen=True)
class WordNet:
    """An nltk WordNet reader and a sentence saying where its data came from."""

    reader: WordNetCorpusReader
    source: str


def load_wordnet(
    cache_dir: Path,
    *,
    sources: Sequence[str] = SOURCES,
    dict_dir: Path | None = None,
    download_timeout_s: float = 120.0,
) -> WordNet:
    """WordNet from the first source that works, in the order "nltk" (nltk's data path), "download"
    (into `<cache_dir>/nltk_data`), "system" (a copy built from `dict_dir`, default
    $NEGREFINE_WORDNET_DICT or /usr/share/wordnet). A copy already in the cache is reused before
    downloading or building. Safe to call from several processes at once."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise NegRefineError(f"Unknown WordNet source(s) {unknown}; use some of {list(SOURCES)}.")
    nltk_data = Path(cache_dir).expanduser() / "nltk_data"
    why_not: list[str] = []
    if "nltk" in sources:
        found = _find_on_nltk_path()
        if found is not None:
            return WordNet(_open_reader(found), f"nltk's wordnet corpus at {found}")
        why_not.append("nltk's data path has no wordnet corpus")
    own_copy = "download" in sources or "system" in sources
    if own_copy and _cached_copy(nltk_data) is not None:
        return WordNet(_open_reader(nltk_data), f"nltk-readable WordNet copy in {nltk_data}")
    if "download" in sources:
        reason = _try_download(nltk_data, download_timeout_s)
        if reason is None and _cached_copy(nltk_data) is not None:
            return WordNet(_open_reader(nltk_data), f"WordNet downloaded by nltk into {nltk_data}")
        why_not.append(reason or f"nltk's download left no wordnet corpus in {nltk_data}")
    if "system" in sources:
        folder = dict_dir if dict_dir is not None else _default_dict_dir()
        missing = _missing_dict_files(folder)
        if not missing:
            build_nltk_copy(folder, nltk_data)
            return WordNet(
                _open_reader(nltk_data),
                f"{_dict_version(folder)} dict files from {folder}, copied for nltk into {nltk_data}",
            )
        why_not.append(f"the WordNet dict folder {folder} lacks {', '.join(missing)}")
    raise NegRefineError(f"WordNet is not available ({'; '.join(why_not)}). To fix: {INSTALL_HINT}.")


def wordnet_status(cache_dir: Path) -> tuple[bool, str]:
    """Whether `load_wordnet` will find WordNet, and where, without downloading or loading it."""
    found = _find_on_nltk_path()
    if found is not None:
        return True, f"nltk's wordnet corpus at {found}"
    nltk_data = Path(cache_dir).expanduser() / "nltk_data"
    if _cached_copy(nltk_data) is not None:
        return True, f"nltk-readable WordNet copy in {nltk_data}"
    folder = _default_dict_dir()
    missing = _missing_dict_files(folder)
    if not missing:
        return True, f"{_dict_version(folder)} dict files in {folder}; copied into {nltk_data} on first use"
    return False, (
        f"no WordNet: not on nltk's data path, no copy in {nltk_data}, and the dict folder {folder} "
        f"lacks {', '.join(missing)}"
    )


def build_nltk_copy(dict_dir: Path, nltk_data: Path) -> Path:
    """Copy a WordNet dict folder to `<nltk_data>/corpora/wordnet` with the `lexnames` file nltk needs.

    Files are copied, not linked: nltk's path security rejects links that leave the corpus folder. The
    copy is written to a temporary sibling and renamed into place, so a reader never sees half a
    copy and of two processes building at once one wins the rename and the other uses its copy.
    """
    final = nltk_data / "corpora" / "wordnet"
    if _is_complete(final):
        return final
    if final.exists() and any(final.iterdir()):
        raise NegRefineError(
            f"{final} exists but is not a complete WordNet copy (it needs {', '.join(REQUIRED_FILES)} "
            "and lexnames); delete that folder and run again."
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-build-", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared by a team
        for name in REQUIRED_FILES + OPTIONAL_FILES:
            if (dict_dir / name).is_file():
                shutil.copyfile(dict_dir / name, tmp / name)
        (tmp / "lexnames").write_text(_lexnames_text())
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):  # not a lost race: report the real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*REQUIRED_FILES, "lexnames"))


def _cached_copy(nltk_data: Path) -> Path | None:
    """The wordnet corpus in our cache: a built folder, or the zip nltk's downloader leaves."""
    folder = nltk_data / "corpora" / "wordnet"
    if _is_complete(folder):
        return folder
    archive = nltk_data / "corpora" / "wordnet.zip"
    return archive if archive.is_file() else None


def _find_on_nltk_path() -> str | None:
    try:
        return str(nltk.data.find("corpora/wordnet"))
    except LookupError:
        return None


def _open_reader(location: Path | str) -> WordNetCorpusReader:
    """A reader for `location`: an nltk data folder to search, or a corpus nltk already found."""
    if isinstance(location, Path):
        root = str(location.resolve())
        # nltk's path security only reads under folders on nltk.data.path.
        if root not in nltk.data.path:
            nltk.data.path.append(root)
        pointer = nltk.data.find("corpora/wordnet", paths=[root])
    else:
        pointer = nltk.data.find("corpora/wordnet")
    with warnings.catch_warnings():
        # We pass no Open Multilingual Wordnet reader on purpose: only English lemmas are used.
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return WordNetCorpusReader(pointer, None)


def _try_download(nltk_data: Path, timeout_s: float) -> str | None:
    """Run nltk's downloader with a deadline; None on success, else why it failed.

    Offline, nltk fails fast when DNS fails (it raises ValueError with raise_on_error), but a network
    that drops packets would stall each socket read for nltk's 120 s and name resolution has no
    timeout at all, so the call runs in a daemon thread we stop waiting for.
    """
    errors = io.StringIO()
    outcome: list[str | None] = []

    def download() -> None:
        try:
            nltk.download(
                "wordnet",
                download_dir=str(nltk_data),
                quiet=True,
                raise_on_error=True,
                print_error_to=errors,
            )
            outcome.append(None)
        except (ValueError, OSError) as exc:  # nltk turns network and disk errors into ValueError
            outcome.append(f"nltk's download failed: {exc}")

    downloader = nltk.downloader
    saved = downloader.NETWORK_TIMEOUT
    downloader.NETWORK_TIMEOUT = min(saved, DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        worker = threading.Thread(target=download, name="nltk-wordnet-download", daemon=True)
        worker.start()
        worker.join(timeout_s)
    finally:
        downloader.NETWORK_TIMEOUT = saved
    if not outcome:
        return f"nltk's download did not finish within {timeout_s:g} s"
    return outcome[0]


def _default_dict_dir() -> Path:
    env = os.environ.get(DICT_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    for folder in DEFAULT_DICT_DIRS:
        if not _missing_dict_files(folder):
            return folder
    return DEFAULT_DICT_DIRS[0]


def _missing_dict_files(folder: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


def _dict_version(folder: Path) -> str:
    """'WordNet 3.0' from the licence header of data.noun (the published lists come from 3.0)."""
    with open(folder / "data.noun", encoding="utf-8", errors="replace") as handle:
        head = "".join(handle.readline() for _ in range(40))
    match = re.search(r"WordNet (\d+\.\d+)", head)
    return f"WordNet {match.group(1)}" if match else "WordNet (version unknown)"
