"""The `score` stage: every method's OOD score for every readable image (methods.md 0.6, 1.5, 2.5,
3.3-3.4, 4.3, App. B), plus NegRefine's ablations (NegFilter on/off x S_MM on/off) per judge.

Input: embed-images/images.parquet, embed-text/id_labels.parquet, mine/negatives.parquet,
filter/<judge>/kept.parquet. Output: score/scores.parquet (dataset, role, path, label, status, one
float64 column per score, null where status != "ok") and score/columns.json (what each column is).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from negrefine_ray import scores
from negrefine_ray.artifacts import column_matrix, read_parquet, write_json, write_parquet
from negrefine_ray.config import MINING_METHODS, SCORE_METHODS, JobConfig, ScoreConfig
from negrefine_ray.errors import ConfigError, StageError, unknown_name
from negrefine_ray.stages import StageContext, StageOutput
from negrefine_ray.templates import get_templates
from negrefine_ray.text_embed import l2_normalise

METHODS = SCORE_METHODS
MINED = MINING_METHODS  # methods whose negatives come from the mine stage
IMAGE_COLUMNS = ("dataset", "role", "path", "label", "status", "embedding")
PairEmbedder = Callable[[list[str]], np.ndarray]
# Pair texts per TextEncoder call: 1M templated texts, ~2 GiB of fp32 features at D = 512. Each batch
# is its own cache entry, so an interrupted stage re-encodes only the batches it had not finished.
PAIR_BATCH = 131_072


@dataclass(frozen=True)
class ScoreColumn:
    """One float64 column of scores.parquet (listed in columns.json); higher = more in-distribution.

    `row` is the report row: mcm, neglabel, csp, dnm, negrefine[J] (S_NL + alpha S_MM over judge J's
    kept negatives), negrefine_nl[J] (S_NL alone), negrefine_nofilter and negrefine_nl_nofilter (the
    same over every cleaned, unfiltered NegRefine negative). `name` = row, plus `@<ood dataset>` for
    DNM: DNM draws its grouping
    once per OOD dataset, so its ID scores differ per OOD dataset; `dnm@<d>` holds the ID rows and
    dataset d's rows under d's grouping and is null elsewhere. alpha S_MM = negrefine - negrefine_nl.
    """

    name: str
    row: str
    method: str
    judge: str | None = None  # NegRefine: the judge whose kept negatives were used; None = no filter
    s_mm: bool = False  # NegRefine: whether alpha * S_MM is added
    seed: int | None = None  # the grouping permutation's seed
    ood_dataset: str | None = None  # DNM: the OOD dataset whose grouping made this column


def grouping_seed(config: JobConfig) -> int:
    """The grouping permutation's seed: the references' fixed group_seed, or with permutation_seed =
    "run" this run's seed (a multi-seed job runs one run folder per seed, see seeds.py)."""
    return config.score.group_seed if config.score.permutation_seed == "fixed" else config.run.seed


def check_methods(config: JobConfig) -> list[str]:
    """score.methods without repeats, each known and (if it needs negatives) mined."""
    methods = list(dict.fromkeys(config.score.methods))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"score.methods: {unknown_name('score method', m, METHODS)}")
        if m in MINED and m not in config.mining.methods:
            raise ConfigError(
                f"score.methods has '{m}' but mining.methods = {list(config.mining.methods)} lacks it; "
                f"add '{m}' to mining.methods or remove it from score.methods."
            )
    return methods


def _judges(config: JobConfig) -> list[str]:
    from negrefine_ray.filter_stage import judge_configs

    return [j.name for j in judge_configs(config)] if "negrefine" in config.score.methods else []


def score_settings(config: JobConfig) -> dict[str, Any]:
    score = {k: v for k, v in dataclasses.asdict(config.score).items() if k != "chunk_size"}
    score["methods"] = check_methods(config)
    # The model embeds NegRefine's cleaned negatives and pair texts here, so it is part of the hash.
    model = {k: getattr(config.model, k) for k in ("arch", "pretrained", "init_seed", "precision")}
    return {
        "score": score,
        "grouping_seed": grouping_seed(config),
        "judges": _judges(config),
        "model": model,
    }


def ok_images(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool mask of the rows with status "ok" and their (n_ok, D) float32 embeddings."""
    missing = [c for c in IMAGE_COLUMNS if c not in table.column_names]
    if missing:
        raise StageError(
            f"images.parquet lacks columns {missing} (has {table.column_names}); rerun embed-images."
        )
    ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(zero_copy_only=False)
    if not ok.any():
        raise StageError(f"none of the {table.num_rows:,} images has status 'ok'; nothing to score.")
    return ok, column_matrix(table.filter(pa.array(ok)), "embedding")


def method_negatives(negatives: pa.Table, method: str) -> np.ndarray:
    """(M, D) float32 embeddings of a method's mined negatives in its canonical order (rank)."""
    rows = negatives.filter(pc.equal(negatives.column("method"), method)).sort_by("rank")
    if rows.num_rows == 0:
        raise StageError(
            f"mine/negatives.parquet has no negatives of method '{method}'; rerun the mine stage."
        )
    return column_matrix(rows, "embedding")


@dataclass(frozen=True)
class RefinedNegatives:
    """NegRefine's cleaned negatives (3.2 step 1, first occurrence per part of speech), nouns then
    adjectives in mine order, and per negative set the (M_s,) int64 indices of its negatives in the
    final [nouns | adjectives] order: set None = unfiltered, set J = judge J's kept labels."""

    labels: list[str]
    pos: list[str]
    sets: dict[str | None, np.ndarray]


def _nouns_first(index: Sequence[int], pos: Sequence[str]) -> np.ndarray:
    nouns = [i for i in index if pos[i] == "noun"]
    return np.array(nouns + [i for i in index if pos[i] != "noun"], dtype=np.int64)


def refined_negatives(negatives: pa.Table, kept: Mapping[str, pa.Table]) -> RefinedNegatives:
    """The unfiltered set from mine/negatives.parquet and each judge's from its kept.parquet."""
    rows = negatives.filter(pc.equal(negatives.column("method"), "negrefine"))
    if "filter_input" not in rows.column_names or rows.num_rows == 0:
        raise StageError("mine/negatives.parquet has no NegRefine negatives with filter inputs; rerun mine.")
    rows = rows.filter(pc.fill_null(rows.column("filter_input"), False)).sort_by("rank")
    labels, pos = rows.column("clean_label").to_pylist(), rows.column("pos").to_pylist()
    order = _nouns_first(range(len(labels)), pos)
    labels, pos = [labels[i] for i in order], [pos[i] for i in order]
    where = {(p, label): i for i, (p, label) in enumerate(zip(pos, labels, strict=True))}
    sets: dict[str | None, np.ndarray] = {None: np.arange(len(labels), dtype=np.int64)}
    for judge, table in kept.items():
        keys = list(zip(table.column("pos").to_pylist(), table.column("label").to_pylist(), strict=True))
        unknown = [k for k in keys if k not in where]
        if unknown:
            raise StageError(
                f"filter/{judge}/kept.parquet keeps {len(unknown)} label(s) that NegRefine did not mine, "
                f"e.g. {unknown[0]}; rerun the filter stage on this run's mine output."
            )
        sets[judge] = _nouns_first([where[k] for k in keys], pos)
    return RefinedNegatives(labels, pos, sets)


def multi_matching_scores(
    image: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    *,
    sets: Mapping[str, np.ndarray],
    names: tuple[Sequence[str], Sequence[str]],
    embed_pairs: PairEmbedder,
    k_pos: int = 5,
    k_neg: int = 5,
    logit_scale: float = 100.0,
    chunk_size: int = scores.CHUNK_SIZE,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """S_MM (methods.md 3.4 step 2) of N images under several negative sets, each "p and n" text
    embedded once: top_pairs per set, pairs mapped into the union, distinct_pairs over every set, ONE
    `embed_pairs(texts) -> (P, D)` call (NegRefine: 8 noun templates, raw-mean), multi_matching.

    image (N, D), id_text (K, D), neg_text (M, D) the union; sets {key: (M_s,) int indices into
    neg_text}; names = (K ID strings, M negative strings). Returns {key: (N,) float64 S_MM} and
    counts: distinct pairs per set and over all sets, and N * k_pos * k_neg (pairs without dedup).
    """
    keys, n = list(sets), image.shape[0]
    if not keys:
        raise StageError("multi_matching_scores needs at least one negative set; got none.")
    tops = []
    for key in keys:
        idx = np.asarray(sets[key], dtype=np.int64)
        pos, neg, v = scores.top_pairs(
            image, id_text, neg_text[idx], k_pos=k_pos, k_neg=k_neg, logit_scale=logit_scale,
            chunk_size=chunk_size,
        )  # fmt: skip
        tops.append((pos, idx[neg], v))
    pairs, index = scores.distinct_pairs(
        np.concatenate([t[0] for t in tops]), np.concatenate([t[1] for t in tops])
    )
    pair_emb = embed_pairs(scores.pair_texts(pairs, *names))
    out, distinct = {}, {}
    for i, (key, top) in enumerate(zip(keys, tops, strict=True)):
        part = index[i * n : (i + 1) * n]
        out[key] = scores.multi_matching(
            image, pair_emb, part, top[2], logit_scale=logit_scale, chunk_size=chunk_size
        )
        distinct[key] = int(np.unique(part).size)
    without = n * min(k_pos, id_text.shape[0]) * k_neg
    counts = {"per_set": distinct, "all_sets": len(pairs), "without_dedup": without}
    return out, counts


class _Scorer:
    """Scores of the ok images, added column by column with their catalogue entries."""

    def __init__(self, image: np.ndarray, sc: ScoreConfig, seed: int) -> None:
        if sc.permutation_device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "score.permutation_device = 'cuda' but the process running the score stage sees no GPU; "
                "run it on a GPU machine or set score.permutation_device = 'cpu'."
            )
        self.image, self.sc, self.seed = image, sc, seed
        self.columns: dict[str, np.ndarray] = {}
        self.catalogue: list[ScoreColumn] = []
        self.negatives: dict[str, dict[str, int]] = {}
        self.seconds: dict[str, float] = {}

    def add(self, column: ScoreColumn, values: np.ndarray) -> None:
        self.columns[column.name] = values
        self.catalogue.append(column)

    def check_groups(self, m: int, what: str) -> None:
        g = self.sc.n_groups
        if g > m:
            raise ConfigError(
                f"score.n_groups = {g} but {what} has only {m} negatives; set score.n_groups <= {m}."
            )
        kept = scores.kept_negatives(m, g)
        self.negatives[what] = {"negatives": m, "kept": kept, "dropped": m - kept, "per_group": kept // g}

    def grouped(self, what: str, id_text: np.ndarray, neg_text: np.ndarray) -> np.ndarray:
        """NegLabel's grouped score (0.6) under the run's grouping permutation: (n_ok,) float64."""
        self.check_groups(neg_text.shape[0], what)
        perm = scores.grouping_permutation(
            neg_text.shape[0], self.sc.n_groups, self.seed, self.sc.permutation_device
        )
        return scores.neglabel(
            self.image, id_text, neg_text, n_groups=self.sc.n_groups, logit_scale=self.sc.logit_scale,
            permutation=perm, chunk_size=self.sc.chunk_size,
        )  # fmt: skip

    def dnm(self, id_text: np.ndarray, neg_text: np.ndarray, ood_of: np.ndarray, ood: list[str]) -> None:
        """DNM (4.3): one column per OOD dataset d, its ID and d rows under d's grouping, NaN elsewhere.
        `ood_of` (n_ok,) object: each row's OOD dataset name, None for ID rows."""
        sc, is_id = self.sc, np.array([d is None for d in ood_of], dtype=bool)
        self.check_groups(neg_text.shape[0], "dnm")
        perms = scores.dnm_permutations(neg_text.shape[0], sc.n_groups, len(ood), seed=sc.dnm_seed)
        for name, perm in zip(ood, perms, strict=True):
            rows = is_id | (ood_of == name)
            values = np.full(self.image.shape[0], np.nan)
            values[rows] = scores.dnm(
                self.image[rows], id_text, neg_text, permutation=perm, n_groups=sc.n_groups,
                temperature=sc.dnm_temperature, tau=sc.dnm_tau, chunk_size=sc.chunk_size,
            )  # fmt: skip
            self.add(ScoreColumn(f"dnm@{name}", "dnm", "dnm", seed=sc.dnm_seed, ood_dataset=name), values)


def _embed_refined(refined: RefinedNegatives, encoder: Any) -> np.ndarray:
    """(M, D) final NegRefine embeddings (3.3): nouns x 8 noun templates, adjective phrases x 4
    adjective templates, raw-mean, in RefinedNegatives order (nouns first)."""
    parts = []
    for is_noun, templates in ((True, "csp-noun8"), (False, "csp-adj4")):
        labels = [lab for lab, p in zip(refined.labels, refined.pos, strict=True) if (p == "noun") == is_noun]
        if labels:
            parts.append(encoder.embed(labels, get_templates(templates)))
    return np.concatenate(parts)


def _pair_embedder(encoder: Any) -> PairEmbedder:
    """NegRefine's pair-text embedding (3.4: the 8 noun templates, raw-mean), PAIR_BATCH at a time."""

    def embed(texts: list[str]) -> np.ndarray:
        parts = [texts[i : i + PAIR_BATCH] for i in range(0, len(texts), PAIR_BATCH)]
        return np.concatenate([encoder.embed(part, get_templates("csp-noun8")) for part in parts])

    return embed


def _score_negrefine(
    s: _Scorer, ctx: StageContext, id_table: pa.Table, negatives: pa.Table
) -> dict[str, Any]:
    """NegRefine per judge and its ablations (3.3-3.4); S_MM over every negative set from one pass
    of distinct pair texts. Without ablations only negrefine[J] (or, with no judge, _nofilter)."""
    from negrefine_ray.text_service import TextEncoder

    judges = _judges(ctx.config)
    kept = {j: read_parquet(ctx.input("filter", f"{j}/kept.parquet")) for j in judges}
    refined = refined_negatives(negatives, kept)
    tags = {k: f"[{k}]" if k is not None else "_nofilter" for k in refined.sets}
    use = [k for k in refined.sets if k is not None or s.sc.ablations or not judges]
    sets = {f"negrefine{tags[k]}": refined.sets[k] for k in use}
    encoder = TextEncoder(ctx.config, ctx.ray)
    neg_text, id_text = _embed_refined(refined, encoder), column_matrix(id_table, "csp_noun8")
    before = encoder.encoded
    s_mm, pairs = multi_matching_scores(
        s.image, id_text, neg_text, sets=sets,
        names=(id_table.column("label").to_pylist(), refined.labels),
        embed_pairs=_pair_embedder(encoder),
        k_pos=s.sc.k_pos, k_neg=s.sc.k_neg, logit_scale=s.sc.logit_scale, chunk_size=s.sc.chunk_size,
    )  # fmt: skip
    pairs["texts_encoded"] = encoder.encoded - before
    for judge in use:
        row = f"negrefine{tags[judge]}"
        s_nl = s.grouped(row, id_text, neg_text[sets[row]])
        if s.sc.ablations:
            s.add(ScoreColumn(f"negrefine_nl{tags[judge]}", f"negrefine_nl{tags[judge]}", "negrefine", judge,
                              seed=s.seed), s_nl)  # fmt: skip
        final = scores.negrefine(s_nl, s_mm[row], alpha=s.sc.alpha)
        s.add(ScoreColumn(row, row, "negrefine", judge, s_mm=True, seed=s.seed), final)
    return pairs


def _excluded(images: pa.Table, ok: np.ndarray) -> dict[str, dict[str, int]]:
    bad = images.filter(pa.array(~ok))
    counts = Counter(zip(bad.column("dataset").to_pylist(), bad.column("status").to_pylist(), strict=True))
    out: dict[str, dict[str, int]] = {}
    for (dataset, status), n in sorted(counts.items(), key=str):
        out.setdefault(dataset, {})[str(status)] = n
    return out


def _output_table(images: pa.Table, ok: np.ndarray, columns: Mapping[str, np.ndarray]) -> pa.Table:
    table = images.select(list(IMAGE_COLUMNS[:-1]))
    for name, values in columns.items():
        full = np.full(images.num_rows, np.nan)
        full[ok] = values
        table = table.append_column(name, pa.array(full, pa.float64(), mask=np.isnan(full)))
    return table


def run_score(ctx: StageContext) -> StageOutput:
    config, t0 = ctx.config, time.perf_counter()
    methods = check_methods(config)
    images = read_parquet(ctx.input("embed-images", "images.parquet"))
    ok, image = ok_images(images)
    scored = images.filter(pa.array(ok))
    roles = scored.column("role").to_numpy(zero_copy_only=False)
    if not (roles == "id").any():
        raise StageError("no readable image has role 'id'; add an ID dataset to [[datasets]].")
    ood_of = scored.column("dataset").to_numpy(zero_copy_only=False).astype(object)
    ood_of[roles == "id"] = None
    ood = list(dict.fromkeys(d for d in ood_of.tolist() if d is not None))
    ids = read_parquet(ctx.input("embed-text", "id_labels.parquet"))
    negatives = read_parquet(ctx.input("mine", "negatives.parquet"))
    sc = config.score
    s, pairs = _Scorer(image, sc, grouping_seed(config)), None
    views = {
        "neglabel": l2_normalise(column_matrix(ids, "the_nice_raw")),
        "csp": column_matrix(ids, "csp_noun8"),
    }
    for method in methods:
        start = time.perf_counter()
        if method == "mcm":
            mcm = scores.mcm(image, column_matrix(ids, "mcm"), sc.mcm_temperature, chunk_size=sc.chunk_size)
            s.add(ScoreColumn("mcm", "mcm", "mcm"), mcm)
        elif method in views:
            values = s.grouped(method, views[method], method_negatives(negatives, method))
            s.add(ScoreColumn(method, method, method, seed=s.seed), values)
        elif method == "dnm":
            s.dnm(column_matrix(ids, "the_nice_raw"), method_negatives(negatives, "dnm"), ood_of, ood)
        else:
            pairs = _score_negrefine(s, ctx, ids, negatives)
        s.seconds[method] = round(time.perf_counter() - start, 3)
    write_parquet(ctx.out_dir / "scores.parquet", _output_table(images, ok, s.columns))
    write_json(ctx.out_dir / "columns.json", {"columns": [dataclasses.asdict(c) for c in s.catalogue]})
    excluded = _excluded(images, ok)
    n_bad = sum(sum(v.values()) for v in excluded.values())
    stats = {
        "images": images.num_rows, "scored": int(ok.sum()), "excluded": excluded, "columns": len(s.columns),
        "ood_datasets": ood, "seeds": [s.seed], "negatives": s.negatives,
        "pairs": pairs, "seconds": s.seconds,
    }  # fmt: skip
    summary = (
        f"{int(ok.sum()):,} images ({n_bad:,} excluded) x {len(s.columns)} score columns "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if pairs:
        summary += (
            f"; S_MM: {pairs['all_sets']:,} distinct pair texts for {pairs['without_dedup']:,} pairs a set, "
            f"{pairs['texts_encoded']:,} texts through CLIP"
        )
    return StageOutput(("scores.parquet", "columns.json"), summary, stats)
