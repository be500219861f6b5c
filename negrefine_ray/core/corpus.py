"""The `corpus` stage's pure core: WordNet lexicographer-file word lists (or a folder of published
lists) as an Arrow table, and the candidate pool a method draws negatives from (methods.md 0.3, 0.5,
1.3, 2.4, 3.1, 4.1). Output columns: word, pos, lexname, synsets, is_instance, capitalized, and
pool_index for the pool. No Ray, no CLIP."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from negrefine_ray.core.lines import text_lines
from negrefine_ray.core.methods import CSP_EXCLUDED as CSP_EXCLUDED  # re-exported: a pool rule's exclusions
from negrefine_ray.core.methods import METHODS
from negrefine_ray.errors import NegRefineError, unknown_name

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader

    from negrefine_ray.data.wordnet import WordNet

# The 27 files every reference repo ships (methods.md 0.3); noun.animal and noun.food are absent.
PUBLISHED_LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adj.ppl", "noun.Tops", "noun.act", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time",
)  # fmt: skip
# Lines per published file (methods.md 0.3's table; noun.phenomenon, missing from that table, is the
# line count of the shipped txtfiles/noun.phenomenon.txt, identical in all five repos).
PUBLISHED_COUNTS: dict[str, int] = {
    "adj.all": 10007, "adj.pert": 3400, "adj.ppl": 60, "noun.Tops": 50, "noun.act": 5897,
    "noun.artifact": 10345, "noun.attribute": 2729, "noun.body": 1978, "noun.cognition": 2775,
    "noun.communication": 5090, "noun.event": 998, "noun.feeling": 413, "noun.group": 2407,
    "noun.location": 2959, "noun.motive": 41, "noun.object": 1501, "noun.person": 9619,
    "noun.phenomenon": 629, "noun.plant": 7631, "noun.possession": 998, "noun.process": 719,
    "noun.quantity": 1195, "noun.relation": 411, "noun.shape": 331, "noun.state": 3413,
    "noun.substance": 2926, "noun.time": 933,
}  # fmt: skip
# Every noun and adjective lexicographer file, the names a corpus may use.
KNOWN_LEXNAMES: tuple[str, ...] = tuple(sorted((*PUBLISHED_LEXNAMES, "noun.animal", "noun.food")))

# The references walk `os.listdir` and the first file holding a string owns it, so the noun/adjective
# split, the 15 % cut-offs and CSP's suffix draws depend on directory order (methods.md 0.5). This
# order satisfies the constraints reconstructed from NegRefine's logs (46,826 nouns / 9,360
# adjectives): the 17 noun files that must precede adj.all plus noun.motive (free; put in its sorted
# place), sorted; then adj.ppl, adj.all; then noun.act, noun.body, noun.object, sorted. The four CSP
# exclusions are unconstrained (CSP/NegRefine/DNM skip them) and go last, sorted; only NegLabel's
# noun/adjective split depends on that choice.
NEGREFINE_FILE_ORDER: tuple[str, ...] = (
    "noun.Tops", "noun.artifact", "noun.attribute", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.location", "noun.motive", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time",
    "adj.ppl", "adj.all",
    "noun.act", "noun.body", "noun.object",
    "adj.pert", "noun.group", "noun.person", "noun.quantity",
)  # fmt: skip
# NegLabel's own os.listdir order is unknown too; this one is consistent with its shipped selection
# (selected_neg_labels_in1k_10k.txt: 8,578 nouns + 1,921 adjectives, implying 57,187-57,193 nouns in
# its pool): the 13 noun files holding some of its shipped adjectives come after the adjective files,
# the other 11 before them. On the published lists it gives 57,189 nouns / 12,811 adjectives, so
# exactly the shipped split with every shipped word in its shipped part of speech; NEGREFINE_FILE_ORDER
# gives NegLabel 57,863 / 12,137 (8,679 + 1,820), 191 shipped adjectives being nouns there.
NEGLABEL_FILE_ORDER: tuple[str, ...] = (
    "noun.Tops", "noun.cognition", "noun.event", "noun.feeling", "noun.motive", "noun.phenomenon",
    "noun.possession", "noun.process", "noun.relation", "noun.shape", "noun.time",
    "adj.all", "adj.pert", "adj.ppl",
    "noun.act", "noun.artifact", "noun.attribute", "noun.body", "noun.communication", "noun.group",
    "noun.location", "noun.object", "noun.person", "noun.plant", "noun.quantity", "noun.state",
    "noun.substance",
)  # fmt: skip
SORTED_ORDER: tuple[str, ...] = tuple(sorted(PUBLISHED_LEXNAMES))
# InterNeg takes set(noun lines) and set(adjective lines) and drops every adjective that is also a
# noun (methods.md 5.2): walking every noun file before the adjective files gives those sets.
INTERNEG_FILE_ORDER: tuple[str, ...] = tuple(
    sorted(n for n in PUBLISHED_LEXNAMES if n.startswith("noun."))
) + tuple(sorted(n for n in PUBLISHED_LEXNAMES if n.startswith("adj.")))
FILE_ORDERS: dict[str, tuple[str, ...]] = {
    "negrefine": NEGREFINE_FILE_ORDER,
    "neglabel": NEGLABEL_FILE_ORDER,
    "interneg": INTERNEG_FILE_ORDER,
    "sorted": SORTED_ORDER,
}

RULES: tuple[str, ...] = ("first-lemma", "all-lemmas")

ENTRY_SCHEMA = pa.schema(
    [
        ("word", pa.string()),
        ("pos", pa.string()),
        ("lexname", pa.string()),
        ("synsets", pa.list_(pa.string())),
        ("is_instance", pa.bool_()),
        ("capitalized", pa.bool_()),
    ]
)
POOL_SCHEMA = ENTRY_SCHEMA.append(pa.field("pool_index", pa.int64()))


def pos_of(lexname: str) -> str:
    """'noun' or 'adj' for a known lexicographer file name; a clear error otherwise."""
    if lexname not in KNOWN_LEXNAMES:
        raise unknown_name("lexicographer file (noun.* or adj.*)", lexname, KNOWN_LEXNAMES)
    return lexname.split(".", 1)[0]


def wordnet_entries(
    wn: WordNet | WordNetCorpusReader, lexnames: Iterable[str], rule: str = "first-lemma"
) -> pa.Table:
    """One row per distinct word of each lexicographer file in `lexnames`, ordered by lexname (sorted),
    then synset offset; a word is kept at its first synset and `synsets` lists every synset of that
    file that produced it.

    rule "first-lemma" (default) takes each synset's first lemma name, lower-cased with underscores
    as spaces: that reproduces the published lists (per-file Jaccard >= 0.98 for nouns, methods.md
    0.3). "all-lemmas" takes every lemma name (~60 % more words). `wn` is a `WordNet` or an nltk
    `WordNetCorpusReader`. Adjective files include satellites ("s" synsets), as in WordNet.
    """
    if rule not in RULES:
        raise unknown_name("corpus rule (corpus.rule)", rule, RULES)
    reader: WordNetCorpusReader = getattr(wn, "reader", wn)
    wanted = sorted(set(lexnames))
    by_file: dict[str, dict[str, _Word]] = {name: {} for name in wanted}
    for nltk_pos in sorted({"n" if pos_of(name) == "noun" else "a" for name in wanted}):
        # all_synsets("a") yields head and satellite adjectives alike, in data-file (offset) order.
        for synset in sorted(reader.all_synsets(nltk_pos), key=lambda s: s.offset()):
            words = by_file.get(synset.lexname())
            if words is not None:
                _add_synset(words, synset, rule)
    columns: dict[str, list[object]] = {name: [] for name in ENTRY_SCHEMA.names}
    for name in wanted:
        for word, info in by_file[name].items():
            row = (word, pos_of(name), name, info.synsets, all(info.instance), any(info.capitalized))
            for column, value in zip(ENTRY_SCHEMA.names, row, strict=True):
                columns[column].append(value)
    return pa.table(columns, schema=ENTRY_SCHEMA)


@dataclass
class _Word:
    synsets: list[str]
    instance: list[bool]
    capitalized: list[bool]


def _add_synset(words: dict[str, _Word], synset: Synset, rule: str) -> None:
    lemmas = synset.lemmas()
    chosen = lemmas[:1] if rule == "first-lemma" else lemmas
    name = synset.name()
    for lemma in chosen:
        spelling = lemma.name()
        word = spelling.lower().replace("_", " ")
        info = words.setdefault(word, _Word([], [], []))
        # "capitalized" looks at the lemma that produced the word, in WordNet's spelling
        # ("Costa_Rica"), not at its synonyms: "aspirin" is not a proper noun because its synset
        # also lists the brand "Bayer".
        info.capitalized.append(spelling[:1].isupper())
        if name not in info.synsets:
            info.synsets.append(name)
            info.instance.append(bool(synset.instance_hypernyms()))


def read_wordlist_folder(path: Path) -> pa.Table:
    """A folder in the published layout (`<lexname>.txt`, one entry per line, e.g. a reference repo's
    txtfiles/) as an entries table: lines stripped, blank lines and repeats within a file dropped.
    Files are read in sorted name order, never in `os.listdir` order; hidden files are ignored.
    `synsets` is empty and `is_instance`/`capitalized` are null (the lists do not say)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NegRefineError(
            f"Word-list folder {folder} does not exist or is not a folder; set corpus.source to a "
            'folder of <lexname>.txt files (e.g. a reference repo\'s txtfiles/) or to "wordnet".'
        )
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not files:
        raise NegRefineError(f"Word-list folder {folder} is empty; it needs <lexname>.txt files.")
    columns: dict[str, list[object]] = {name: [] for name in ENTRY_SCHEMA.names}
    for file in files:
        lexname = file.name.removesuffix(".txt")
        if not file.is_file() or file.suffix != ".txt" or lexname not in KNOWN_LEXNAMES:
            raise NegRefineError(
                f"Unexpected file {file.name!r} in word-list folder {folder}: expected <lexname>.txt "
                f"with lexname one of {', '.join(KNOWN_LEXNAMES)}; move the file elsewhere."
            )
        lines = (line.strip() for line in text_lines(file.read_text(encoding="utf-8")))
        for word in dict.fromkeys(line for line in lines if line):
            row: tuple[object, ...] = (word, pos_of(lexname), lexname, [], None, None)
            for column, value in zip(ENTRY_SCHEMA.names, row, strict=True):
                columns[column].append(value)
    return pa.table(columns, schema=ENTRY_SCHEMA)


def candidate_pool(
    entries: pa.Table,
    *,
    include: Sequence[str] | None,
    exclude: Sequence[str],
    order: Sequence[str],
    id_names: Collection[str] = (),
    exclude_id_names_from: str | None = None,
) -> pa.Table:
    """The candidate pool: entries of the included lexnames (None: all in `entries`) minus `exclude`,
    walked file by file in `order`; the first file holding a string (stripped, exact match) owns it,
    as the references' dict over `os.listdir` does (methods.md 0.5). With `exclude_id_names_from`
    ("noun" for NegRefine, 3.1; "both" for InterNeg, 5.2) exact, case-sensitive `id_names` are then
    dropped from that part of speech only; such a word has still claimed its string, so no later file
    brings it back.
    Returns POOL_SCHEMA rows in pool order; `pool_index` counts 0..n-1."""
    _check_columns(entries)
    selected = _selected_lexnames(entries, include, exclude)
    walk = _walk_order(selected, order)
    if exclude_id_names_from not in (None, "noun", "adj", "both"):
        raise NegRefineError(
            f"exclude_id_names_from = {exclude_id_names_from!r}; use 'noun', 'adj', 'both' or None."
        )
    id_set = frozenset(id_names) if exclude_id_names_from else frozenset()
    keep, kept_words = _first_owners(entries, walk, id_set, exclude_id_names_from)
    pool = entries.select(ENTRY_SCHEMA.names).take(pa.array(keep, pa.int64()))
    pool = pool.set_column(0, "word", pa.array(kept_words, pa.string()))
    return pool.append_column("pool_index", pa.array(range(len(keep)), pa.int64()))


def _first_owners(
    entries: pa.Table, walk: list[str], id_set: frozenset[str], id_pos: str | None
) -> tuple[list[int], list[str]]:
    """Row indices and stripped words of the pool: each string kept at its first file in `walk`."""
    words = entries.column("word").to_pylist()
    rows_of: dict[str, list[int]] = {name: [] for name in walk}
    for row, lexname in enumerate(entries.column("lexname").to_pylist()):
        if lexname in rows_of:
            rows_of[lexname].append(row)
    seen: set[str] = set()
    keep: list[int] = []
    kept_words: list[str] = []
    for lexname in walk:
        pos = pos_of(lexname)
        for row in rows_of[lexname]:
            word = words[row].strip()
            if word in seen:
                continue
            seen.add(word)
            if id_pos in (pos, "both") and word in id_set:
                continue
            keep.append(row)
            kept_words.append(word)
    return keep, kept_words


def _check_columns(entries: pa.Table) -> None:
    missing = [name for name in ENTRY_SCHEMA.names if name not in entries.column_names]
    if missing:
        raise NegRefineError(
            f"Corpus entries lack column(s) {missing}; they have {entries.column_names} and need "
            f"{ENTRY_SCHEMA.names} (build them with wordnet_entries or read_wordlist_folder)."
        )


def _selected_lexnames(entries: pa.Table, include: Sequence[str] | None, exclude: Sequence[str]) -> set[str]:
    present = set(entries.column("lexname").to_pylist())
    for name in [*(include or ()), *exclude]:
        pos_of(name)  # a typo in a lexname must not silently select nothing
    if include is None:
        return present - set(exclude)
    absent = sorted(set(include) - present)
    if absent:
        raise NegRefineError(
            f"Lexname(s) {absent} are not in the corpus entries (they hold {sorted(present)}); add them "
            "to corpus.lexnames / corpus.extra_lexnames or drop them from the pool's include list."
        )
    return set(include) - set(exclude)


def _walk_order(selected: set[str], order: Sequence[str]) -> list[str]:
    repeated = sorted({name for name in order if list(order).count(name) > 1})
    if repeated:
        raise NegRefineError(f"File order lists {repeated} more than once; list each lexname once.")
    missing = sorted(selected - set(order))
    if missing:
        raise NegRefineError(
            f"File order lacks {missing}, which the pool includes; the order decides which file owns a "
            "word shared by several files (methods.md 0.5), so list every included lexname "
            "(extend_order(order, names) appends them sorted)."
        )
    return [name for name in order if name in selected]


def extend_order(order: Sequence[str], names: Iterable[str]) -> tuple[str, ...]:
    """`order` followed by the `names` it lacks, sorted (e.g. noun.animal, noun.food as extras)."""
    return (*order, *sorted(set(names) - set(order)))


@dataclass(frozen=True)
class PoolRule:
    """How a method builds its pool from the entries (include None: every lexname in the entries)."""

    name: str
    description: str
    exclude: tuple[str, ...] = ()
    exclude_id_names_from: str | None = None
    order: tuple[str, ...] = NEGREFINE_FILE_ORDER
    include: tuple[str, ...] | None = None

    def pool(self, entries: pa.Table, id_names: Collection[str] = ()) -> pa.Table:
        """`candidate_pool` with this rule; lexnames outside `order` (extras) are appended sorted."""
        present = entries.column("lexname").to_pylist() if "lexname" in entries.column_names else []
        return candidate_pool(
            entries,
            include=self.include,
            exclude=self.exclude,
            order=extend_order(self.order, present),
            id_names=id_names,
            exclude_id_names_from=self.exclude_id_names_from,
        )


# The mining methods' pools, as the method catalogue declares them, each walking the file order its
# catalogue entry names: NegLabel NEGLABEL_FILE_ORDER (consistent with its shipped selection), CSP,
# NegRefine and DNM NEGREFINE_FILE_ORDER (reproduces NegRefine's logged pools; CSP's and DNM's own
# orders are unknown, machine-specific os.listdir).
POOL_RULES: dict[str, PoolRule] = {
    m.name: PoolRule(
        m.name,
        m.pool.description,
        m.pool.exclude,
        m.pool.exclude_id_names_from,
        FILE_ORDERS[m.pool.file_order],
    )
    for m in METHODS.values()
    if m.pool is not None
}


def get_pool_rule(name: str, file_order: str = "per-method") -> PoolRule:
    """The pool rule of method `name`, walking its own file order ("per-method", mining.file_order's
    default) or the FILE_ORDERS entry `file_order` names."""
    if name not in POOL_RULES:
        raise unknown_name("candidate pool rule", name, POOL_RULES)
    if file_order == "per-method":
        return POOL_RULES[name]
    if file_order not in FILE_ORDERS:
        raise unknown_name("file order (mining.file_order)", file_order, ["per-method", *FILE_ORDERS])
    return dataclasses.replace(POOL_RULES[name], order=FILE_ORDERS[file_order])
