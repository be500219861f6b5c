"""The `score` stage: every method's OOD score for every readable image (methods.md 0.6, 1.5, 2.5,
3.3-3.4, 4.3, App. B), plus NegRefine's ablations (NegFilter on/off x S_MM on/off) per judge. Each
method's entry in the catalogue (negrefine_ray.core.methods) names its scorer here, its views and columns.

Input: embed-images/images.parquet, embed-text/id_labels.parquet, mine/negatives.parquet,
filter/<judge>/kept.parquet, and for each judge of mining.filtered_by filter/<judge>/mined.parquet
(every mining method re-mined from the pool that judge filtered, stages/filter_scope.py). Output:
score/scores.parquet (dataset, role, path, label, status, one float64 column per score, null where
status != "ok") and score/columns.json (what each column is).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from negrefine_ray.config import JobConfig
from negrefine_ray.core import scores
from negrefine_ray.core.methods import (
    CANDIDATE_VIEWS,
    METHODS,
    Method,
    TextView,
    embedding_name,
    image_preprocessing,
    prototype_preprocessing,
)
from negrefine_ray.core.multi_matching import (  # NegRefine's pure core (tests import it from here)
    PairEmbedder,
    RefinedNegatives,
    multi_matching_scores,
    refined_negatives,
)
from negrefine_ray.core.templates import get_templates
from negrefine_ray.errors import ConfigError, StageError, unknown_name
from negrefine_ray.progress import Progress
from negrefine_ray.runfolder.atomic import column_matrix, read_parquet, write_json, write_parquet
from negrefine_ray.runfolder.folder import StageContext, StageOutput
from negrefine_ray.stages.embed_text import view_matrix

IMAGE_COLUMNS = ("dataset", "role", "path", "label", "status")  # plus one embedding@<variant> each
# Pair texts per TextEncoder call: 1M templated texts, ~2 GiB of fp32 features at D = 512. Each batch
# is its own cache entry, so an interrupted stage re-encodes only the batches it had not finished.
PAIR_BATCH = 131_072


@dataclass(frozen=True)
class ScoreColumn:
    """One float64 column of scores.parquet (listed in columns.json); higher = more in-distribution.

    `row` is the report row its method's catalogue entry declares: mcm, neglabel, csp, dnm,
    negrefine[J] (S_NL + alpha S_MM over judge J's kept negatives), negrefine_nl[J] (S_NL alone),
    negrefine_nofilter and negrefine_nl_nofilter (the same over every cleaned, unfiltered NegRefine
    negative). With `pool`, `judge` filtered the candidate pool instead (filter.scope = "corpus") and
    the method's negatives were mined from what it kept (mining.filtered_by, filter/J/mined.parquet):
    neglabel[pool=J], csp[pool=J], dnm[pool=J]@<d>, negrefine[pool=J] and negrefine_nl[pool=J] (no
    NegFilter after mining: J already judged every candidate). `name` = row, plus `@<ood dataset>`
    for DNM: DNM draws its grouping once per OOD dataset, so its ID scores differ per OOD dataset;
    `dnm@<d>` holds the ID rows and dataset d's rows under d's grouping and is null elsewhere.
    alpha S_MM = negrefine - negrefine_nl.
    """

    name: str
    row: str
    method: str
    judge: str | None = None  # NegRefine: the judge whose kept negatives were used; None = no filter
    s_mm: bool = False  # NegRefine: whether alpha * S_MM is added
    seed: int | None = None  # the grouping permutation's seed
    ood_dataset: str | None = None  # DNM: the OOD dataset whose grouping made this column
    preprocess: str = ""  # the image preprocessing (core.methods.PREPROCESSING) of its embeddings
    visual: bool = False  # InterNeg: with the negatives inverted online from its stream's images
    pool: bool = False  # negatives mined from the candidate pool `judge` filtered (mining.filtered_by)


def score_column(
    method: Method, judge: str | None = None, *, s_mm: bool = False, seed: int | None = None,
    ood: str | None = None, visual: bool = False, pool: bool = False,
) -> ScoreColumn:  # fmt: skip
    """A column of `method` with the row and name its catalogue entry gives it."""
    row, _ = method.row(judge, s_mm, visual, pool)
    name = method.column_name(row, ood)
    return ScoreColumn(name, row, method.name, judge, s_mm, seed, ood, visual=visual, pool=pool)


def grouping_seed(config: JobConfig) -> int:
    """The grouping permutation's seed: the references' fixed group_seed, or with permutation_seed =
    "run" this run's seed (a multi-seed job runs one run folder per seed, see seeds.py)."""
    return config.score.group_seed if config.score.permutation_seed == "fixed" else config.run.seed


def check_methods(config: JobConfig) -> list[str]:
    """score.methods without repeats, each in the catalogue and (if it needs negatives) mined."""
    methods = list(dict.fromkeys(config.score.methods))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"score.methods: {unknown_name('score method', m, METHODS)}")
        if METHODS[m].mines and m not in config.mining.methods:
            raise ConfigError(
                f"score.methods has '{m}' but mining.methods = {list(config.mining.methods)} lacks it; "
                f"add '{m}' to mining.methods or remove it from score.methods."
            )
    return methods


def _judges(config: JobConfig) -> list[str]:
    from negrefine_ray.stages.filter import judge_configs

    filtered = any(m in METHODS and METHODS[m].filtered for m in config.score.methods)
    return [j.name for j in judge_configs(config)] if filtered else []


def score_settings(config: JobConfig) -> dict[str, Any]:
    score = {k: v for k, v in dataclasses.asdict(config.score).items() if k != "chunk_size"}
    score["methods"] = check_methods(config)
    score["preprocess"] = image_preprocessing(score["methods"], config.images.preprocess)
    # The model embeds NegRefine's cleaned negatives and pair texts here, so it is part of the hash.
    model = {k: getattr(config.model, k) for k in ("arch", "pretrained", "init_seed", "precision")}
    return {
        "score": score,
        "grouping_seed": grouping_seed(config),
        "negrefine_order_seed": config.run.seed if config.score.negrefine_order == "shuffled" else None,
        # InterNeg's online streams and inversions are seeded with the run seed
        "interneg": {**dataclasses.asdict(config.interneg), "seed": config.run.seed}
        if "interneg" in config.score.methods
        else None,
        "judges": _judges(config),
        "filter_scope": config.filter.scope,  # "corpus": kept.parquet covers every candidate
        "filtered_by": list(config.mining.filtered_by),  # pools re-mined per judge, scored too
        "model": model,
    }


def ok_images(table: pa.Table, variants: Iterable[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N,) bool mask of the rows with status "ok" and, per preprocessing variant, their (n_ok, D)
    float32 embeddings (images.parquet column embedding@<variant>)."""
    names = {v: embedding_name(v) for v in dict.fromkeys(variants)}
    missing = [c for c in (*IMAGE_COLUMNS, *names.values()) if c not in table.column_names]
    if missing:
        raise StageError(
            f"images.parquet lacks columns {missing} (has {table.column_names}); rerun embed-images."
        )
    ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(zero_copy_only=False)
    if not ok.any():
        raise StageError(f"none of the {table.num_rows:,} images has status 'ok'; nothing to score.")
    rows = table.filter(pa.array(ok))
    return ok, {v: column_matrix(rows, name) for v, name in names.items()}


def method_negatives(negatives: pa.Table, method: str) -> np.ndarray:
    """(M, D) float32 embeddings of a method's mined negatives in its canonical order (rank)."""
    rows = negatives.filter(pc.equal(negatives.column("method"), method)).sort_by("rank")
    if rows.num_rows == 0:
        raise StageError(
            f"mine/negatives.parquet has no negatives of method '{method}'; rerun the mine stage."
        )
    return column_matrix(rows, "embedding")


class _Scorer:
    """Scores of the ok images, added column by column with their catalogue entries. A method's entry
    names its function here (`Method.scorer`): `score_<scorer>(method)` adds the method's columns."""

    def __init__(
        self,
        ctx: StageContext,
        images: Mapping[str, np.ndarray],
        ood_of: np.ndarray,
        preprocess: Mapping[str, str],
        prototype_rows: pa.Table | None = None,
    ) -> None:
        """`images`: the ok rows' embeddings per preprocessing variant; `preprocess`: each method's
        variant; `ood_of` (n_ok,) object: each ok row's OOD dataset name, None for ID rows."""
        sc = ctx.config.score
        if sc.permutation_device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "score.permutation_device = 'cuda' but the process running the score stage sees no GPU; "
                "run it on a GPU machine or set score.permutation_device = 'cpu'."
            )
        self.ctx, self.images, self.sc, self.seed = ctx, images, sc, grouping_seed(ctx.config)
        self.preprocess = dict(preprocess)
        self.image = next(iter(images.values()))  # the current method's (set by `use`)
        self.ood_of, self.ood = ood_of, list(dict.fromkeys(d for d in ood_of.tolist() if d is not None))
        self.ids = read_parquet(ctx.input("embed-text", "id_labels.parquet"))
        self.mined = read_parquet(ctx.input("mine", "negatives.parquet"))
        self.columns: dict[str, np.ndarray] = {}
        self.catalogue: list[ScoreColumn] = []
        self.negatives: dict[str, dict[str, int]] = {}
        self.seconds: dict[str, float] = {}
        self.pairs: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}  # a scorer's own manifest entries
        self.prototype_rows = prototype_rows
        self.pool_mined: dict[str, pa.Table] = {}

    def negatives_from(self, pool: str | None) -> pa.Table:
        """mine/negatives.parquet, or with `pool` = J the negatives mined from the pool J filtered."""
        if pool is None:
            return self.mined
        if pool not in self.pool_mined:
            from negrefine_ray.stages.filter_scope import pool_negatives

            self.pool_mined[pool] = pool_negatives(self.ctx, pool)
        return self.pool_mined[pool]

    def prototypes(self, method: Method) -> tuple[np.ndarray, np.ndarray]:
        """(labels (P,), embeddings (P, D)) of the readable role-"prototype" images in the method's
        preprocessing (InterNeg's class prototypes, methods.md 5.2)."""
        rows = self.prototype_rows
        if rows is None or rows.num_rows == 0:
            raise StageError(
                f"{method.display} needs readable images of a dataset with role 'prototype'; "
                "none were embedded."
            )
        c = self.ctx.config
        variant = prototype_preprocessing(
            c.score.methods, c.images.preprocess, c.interneg.prototype_preprocess
        )
        labels = rows.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
        return labels, column_matrix(rows, embedding_name(variant or self.preprocess[method.name]))

    def use(self, method: Method) -> None:
        """Score `method` next: its images are the embeddings of its preprocessing."""
        self.image = self.images[self.preprocess[method.name]]

    def add(self, column: ScoreColumn, values: np.ndarray) -> None:
        column = dataclasses.replace(column, preprocess=self.preprocess[column.method])
        self.columns[column.name] = values
        self.catalogue.append(column)

    def id_text(self, method: Method, unit: bool = True) -> np.ndarray:
        """(K, D) float32 ID-label embeddings of the method's view; `unit`: L2-normalised rows."""
        return view_matrix(self.ids, method.id_view, unit=unit)

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

    def score_mcm(self, method: Method) -> None:
        """MCM (App. B): the maximum softmax over the cosines to the ID prompts."""
        values = scores.mcm(
            self.image, self.id_text(method), self.sc.mcm_temperature, chunk_size=self.sc.chunk_size
        )
        self.add(score_column(method), values)

    def score_grouped(self, method: Method, pool: str | None = None) -> None:
        """NegLabel's grouped score (0.6) over the method's mined negatives (NegLabel, CSP); with
        `pool` = J over those mined from the pool J filtered."""
        column = score_column(method, pool, seed=self.seed, pool=pool is not None)
        negatives = method_negatives(self.negatives_from(pool), method.name)
        self.add(column, self.grouped(column.row, self.id_text(method), negatives))

    def score_dnm(self, method: Method, pool: str | None = None) -> None:
        """DNM (4.3): one column per OOD dataset d, its ID and d rows under d's grouping, NaN elsewhere.
        DNM normalises inside, so it gets the raw ID view. `pool` as in score_grouped."""
        id_text = self.id_text(method, unit=False)
        neg_text = method_negatives(self.negatives_from(pool), method.name)
        sc, is_id = self.sc, np.array([d is None for d in self.ood_of], dtype=bool)
        self.check_groups(neg_text.shape[0], method.row(pool, pool=pool is not None)[0])
        perms = scores.dnm_permutations(neg_text.shape[0], sc.n_groups, len(self.ood), seed=sc.dnm_seed)
        for name, perm in zip(self.ood, perms, strict=True):
            rows = is_id | (self.ood_of == name)
            values = np.full(self.image.shape[0], np.nan)
            values[rows] = scores.dnm(
                self.image[rows], id_text, neg_text, permutation=perm, n_groups=sc.n_groups,
                temperature=sc.dnm_temperature, tau=sc.dnm_tau, chunk_size=sc.chunk_size,
            )  # fmt: skip
            column = score_column(method, pool, seed=sc.dnm_seed, ood=name, pool=pool is not None)
            self.add(column, values)

    def score_negrefine(self, method: Method, pool: str | None = None) -> None:
        """NegRefine per judge and its ablations (3.3-3.4), see _score_negrefine; with `pool` = J over
        the negatives mined from the pool J filtered (S_MM's pair counts go to the manifest)."""
        pairs = _score_negrefine(self, method, pool)
        if pool is None:
            self.pairs = pairs
        else:
            self.extra.setdefault("pool_pairs", {})[pool] = pairs

    def score_interneg(self, method: Method) -> None:
        """InterNeg, textual and textual + visual (5.3-5.5), see stages/score_interneg.py."""
        from negrefine_ray.stages.score_interneg import run_interneg

        run_interneg(self, method)


def _embed_refined(refined: RefinedNegatives, encoder: Any, view: TextView) -> np.ndarray:
    """(M, D) final NegRefine embeddings (3.3) under its candidate view: nouns x 8 noun templates,
    adjective phrases x 4 adjective templates, raw-mean, in RefinedNegatives order (nouns first)."""
    parts = []
    for is_noun, templates in ((True, view.templates), (False, view.adj_templates)):
        labels = [lab for lab, p in zip(refined.labels, refined.pos, strict=True) if (p == "noun") == is_noun]
        if labels:
            parts.append(encoder.embed(labels, get_templates(templates)))
    return np.concatenate(parts)


def _pair_embedder(encoder: Any, view: TextView) -> PairEmbedder:
    """NegRefine's pair-text embedding (3.4: the 8 noun templates, raw-mean), PAIR_BATCH at a time."""

    def embed(texts: list[str]) -> np.ndarray:
        parts = [texts[i : i + PAIR_BATCH] for i in range(0, len(texts), PAIR_BATCH)]
        return np.concatenate([encoder.embed(part, get_templates(view.templates)) for part in parts])

    return embed


def _score_negrefine(s: _Scorer, method: Method, pool: str | None = None) -> dict[str, Any]:
    """NegRefine per judge and its ablations (3.3-3.4); S_MM over every negative set from one pass
    of distinct pair texts. Without ablations only negrefine[J] (or, with no judge, _nofilter).
    With `pool` = J one set: the negatives mined from the pool J filtered (negrefine[pool=J])."""
    from negrefine_ray.clip.text_service import TextEncoder
    from negrefine_ray.stages.filter_scope import negrefine_kept

    ctx, view = s.ctx, CANDIDATE_VIEWS[method.candidate_view or ""]
    judges, scope = (_judges(ctx.config), ctx.config.filter.scope) if pool is None else ([], "")
    kept = {
        j: negrefine_kept(read_parquet(ctx.input("filter", f"{j}/kept.parquet")), s.mined, scope)
        for j in judges
    }
    mined = s.negatives_from(pool)
    refined = refined_negatives(mined, kept, order=s.sc.negrefine_order, seed=ctx.config.run.seed)

    def column(k: str | None, s_mm: bool) -> ScoreColumn:  # negative set k's column (None: unfiltered)
        return score_column(method, pool or k, s_mm=s_mm, seed=s.seed, pool=pool is not None)

    rows = {k: column(k, True).row for k in refined.sets}  # negative set -> its final row
    use = [k for k in refined.sets if k is not None or s.sc.ablations or not judges]
    sets = {rows[k]: refined.sets[k] for k in use}
    encoder = TextEncoder(ctx.config, ctx.ray)
    neg_text, id_text = _embed_refined(refined, encoder, view), s.id_text(method)
    before = encoder.encoded
    s_mm, pairs = multi_matching_scores(
        s.image, id_text, neg_text, sets=sets,
        names=(s.ids.column("label").to_pylist(), refined.labels),
        embed_pairs=_pair_embedder(encoder, view),
        k_pos=s.sc.k_pos, k_neg=s.sc.k_neg, logit_scale=s.sc.logit_scale, chunk_size=s.sc.chunk_size,
    )  # fmt: skip
    pairs["texts_encoded"] = encoder.encoded - before
    for judge in use:
        row = rows[judge]
        s_nl = s.grouped(row, id_text, neg_text[sets[row]])
        if s.sc.ablations:
            s.add(column(judge, False), s_nl)
        final = scores.negrefine(s_nl, s_mm[row], alpha=s.sc.alpha)
        s.add(column(judge, True), final)
    return pairs


# Each catalogue entry's scorer, looked up once: a method without one fails at import, not mid-run.
# Scorers of methods that mine in the mine stage also take `pool` (a judge of mining.filtered_by).
_SCORERS: dict[str, Callable[..., None]] = {
    m.name: getattr(_Scorer, f"score_{m.scorer}") for m in METHODS.values()
}


def _excluded(images: pa.Table, ok: np.ndarray) -> dict[str, dict[str, int]]:
    bad = images.filter(pa.array(~ok))
    counts = Counter(zip(bad.column("dataset").to_pylist(), bad.column("status").to_pylist(), strict=True))
    out: dict[str, dict[str, int]] = {}
    for (dataset, status), n in sorted(counts.items(), key=str):
        out.setdefault(dataset, {})[str(status)] = n
    return out


def _output_table(images: pa.Table, ok: np.ndarray, columns: Mapping[str, np.ndarray]) -> pa.Table:
    table = images.select(list(IMAGE_COLUMNS))
    for name, values in columns.items():
        full = np.full(images.num_rows, np.nan)
        full[ok] = values
        table = table.append_column(name, pa.array(full, pa.float64(), mask=np.isnan(full)))
    return table


def run_score(ctx: StageContext) -> StageOutput:
    config, t0 = ctx.config, time.perf_counter()
    methods = check_methods(config)
    images = read_parquet(ctx.input("embed-images", "images.parquet"))
    preprocess = image_preprocessing(methods, config.images.preprocess)
    # role "prototype": InterNeg's labelled ID training images, used for its prototypes, never scored
    is_prototype = pc.equal(images.column("role"), "prototype")
    prototype_rows = images.filter(pc.and_(is_prototype, pc.equal(images.column("status"), "ok")))
    images = images.filter(pc.invert(is_prototype))
    ok, embeddings = ok_images(images, preprocess.values())
    scored = images.filter(pa.array(ok))
    roles = scored.column("role").to_numpy(zero_copy_only=False)
    if not (roles == "id").any():
        raise StageError("no readable image has role 'id'; add an ID dataset to [[datasets]].")
    ood_of = scored.column("dataset").to_numpy(zero_copy_only=False).astype(object)
    ood_of[roles == "id"] = None
    s = _Scorer(ctx, embeddings, ood_of, preprocess, prototype_rows)
    # each method, then the same methods over the pools the judges filtered (mining.filtered_by)
    work = [(m, None) for m in methods] + [
        (m, judge) for judge in config.mining.filtered_by for m in methods if METHODS[m].pool_filterable
    ]
    progress = Progress(f"score: {int(ok.sum()):,} images", total=len(work), unit="methods")
    for method, judge in work:
        start = time.perf_counter()
        s.use(METHODS[method])
        if judge is None:
            _SCORERS[method](s, METHODS[method])
        else:
            _SCORERS[method](s, METHODS[method], judge)
        name = method if judge is None else f"{method}[pool={judge}]"
        s.seconds[name] = round(time.perf_counter() - start, 3)
        progress.update(1)
    progress.close()
    ood, pairs = s.ood, s.pairs
    write_parquet(ctx.out_dir / "scores.parquet", _output_table(images, ok, s.columns))
    write_json(ctx.out_dir / "columns.json", {"columns": [dataclasses.asdict(c) for c in s.catalogue]})
    excluded = _excluded(images, ok)
    n_bad = sum(sum(v.values()) for v in excluded.values())
    stats = {
        "images": images.num_rows, "scored": int(ok.sum()), "excluded": excluded, "columns": len(s.columns),
        "ood_datasets": ood, "seeds": [s.seed], "negatives": s.negatives,
        "pairs": pairs, "seconds": s.seconds, "preprocess": preprocess, **s.extra,
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
