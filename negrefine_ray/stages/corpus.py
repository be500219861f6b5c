"""The `corpus` stage: the WordNet candidate words of every requested lexicographer file, written
once per run as `corpus/corpus.parquet`; the mining stage builds each method's pool from it.

Source: WordNet 3.0 through nltk (first lemma of every synset by default, methods.md 0.3), or a
folder of word lists in the published layout. The stats record per-file counts beside the published
ones and each method's pool sizes (the numbers the references print).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.config import JobConfig
from negrefine_ray.core.corpus import (
    POOL_RULES,
    PUBLISHED_COUNTS,
    PUBLISHED_LEXNAMES,
    get_pool_rule,
    read_wordlist_folder,
    wordnet_entries,
)
from negrefine_ray.core.labels import load_id_labels
from negrefine_ray.errors import NegRefineError
from negrefine_ray.runfolder.atomic import file_sha256, write_parquet
from negrefine_ray.runfolder.folder import StageContext, StageOutput


def requested_lexnames(config: JobConfig) -> tuple[str, ...]:
    base = config.corpus.lexnames or PUBLISHED_LEXNAMES
    return tuple(dict.fromkeys((*base, *config.corpus.extra_lexnames)))


def corpus_settings(config: JobConfig) -> dict[str, Any]:
    """The corpus section, the ID labels (for the pool statistics), and the word lists' content
    when the source is a folder (editing a list must rebuild the corpus)."""
    settings: dict[str, Any] = {
        "corpus": dataclasses.asdict(config.corpus),
        "labels": config.labels.id_labels,
    }
    if config.corpus.source != "wordnet":
        folder = Path(config.corpus.source).expanduser()
        settings["word_lists"] = {p.name: file_sha256(p) for p in sorted(folder.glob("*.txt"))}
    return settings


def _first_per_lexname(entries: pa.Table, limit: int) -> pa.Table:
    """The first `limit` words of each lexicographer file, in the table's order (for smoke runs)."""
    lexnames = entries.column("lexname").to_pylist()
    seen: dict[str, int] = {}
    keep = []
    for name in lexnames:
        seen[name] = seen.get(name, 0) + 1
        keep.append(seen[name] <= limit)
    return entries.filter(pa.array(keep))


def load_entries(config: JobConfig) -> tuple[pa.Table, str]:
    """The corpus table and a sentence naming its source."""
    wanted = requested_lexnames(config)
    if config.corpus.source == "wordnet":
        from negrefine_ray.data.wordnet import load_wordnet

        wn = load_wordnet(config.local_cache_dir)
        return wordnet_entries(wn, wanted, config.corpus.rule), wn.source
    folder = Path(config.corpus.source).expanduser()
    entries = read_wordlist_folder(folder)
    missing = sorted(set(wanted) - set(entries.column("lexname").to_pylist()))
    if missing and config.corpus.lexnames:
        raise NegRefineError(
            f"corpus.lexnames asks for {missing}, which {folder} lacks; add <lexname>.txt files or "
            f"remove them from corpus.lexnames."
        )
    entries = entries.filter(pc.is_in(entries.column("lexname"), pa.array(wanted)))
    return entries, f"word lists in {folder}"


def pool_sizes(entries: pa.Table, id_labels: list[str], order: str) -> dict[str, dict[str, int]]:
    """Nouns and adjectives in each method's candidate pool (after cross-file de-duplication)."""
    sizes = {}
    for name in POOL_RULES:
        pool = get_pool_rule(name, order).pool(entries, id_labels)
        pos = pool.column("pos").to_pylist()
        sizes[name] = {"noun": pos.count("noun"), "adj": pos.count("adj")}
    return sizes


def run_corpus(ctx: StageContext) -> StageOutput:
    config = ctx.config
    entries, source = load_entries(config)
    if config.corpus.max_words_per_lexname:
        entries = _first_per_lexname(entries, config.corpus.max_words_per_lexname)
    write_parquet(ctx.out_dir / "corpus.parquet", entries)
    lexnames = entries.column("lexname").to_pylist()
    per_file = {name: lexnames.count(name) for name in sorted(set(lexnames))}
    pools = pool_sizes(entries, load_id_labels(config.labels.id_labels), config.mining.file_order)
    stats = {
        "source": source,
        "words_per_lexname": per_file,
        "published_words_per_lexname": {n: PUBLISHED_COUNTS[n] for n in per_file if n in PUBLISHED_COUNTS},
        "pool_sizes": pools,
    }
    pool_text = ", ".join(f"{m} {p['noun']:,} nouns / {p['adj']:,} adjectives" for m, p in pools.items())
    summary = (
        f"{entries.num_rows:,} words from {len(per_file)} lexicographer files ({source}); pools: {pool_text}"
    )
    return StageOutput(("corpus.parquet",), summary, stats)
