"""The method catalogue: one frozen entry per OOD method (MCM, NegLabel, CSP, NegRefine, DNM,
InterNeg) that says what each stage needs to know about it: its pool rule (corpus), text views
(embed-text), mining rule (mine, or score for InterNeg), image preprocessing (embed-images), scoring
function (score) and score columns and report rows (score, report). The config's method choices come
from here too. Pure (standard library and errors.py only): config.py imports it.

Adding a method: one `Method` entry in METHODS, its pure score function in scores.py and its
scorer in scoring/ listed in scoring.registry.SCORERS (or an existing scorer). A new mining rule is
a function in core/mining.py plus its branch in negatives.selection.select; a new text view, its
column in stages/embed_text.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from negrefine_ray.errors import NegRefineError, unknown_name

# CSP's pool leaves out these lexicographer files (methods.md 2.4); NegRefine and DNM follow it.
CSP_EXCLUDED: tuple[str, ...] = ("noun.person", "noun.quantity", "noun.group", "adj.pert")


@dataclass(frozen=True)
class TextView:
    """One embedding column of the embed-text stage: texts through a templates.py set (methods.md 0.2).

    `raw`: the single template's unnormalised features (NegLabel's 'the nice {}'; DNM's density and
    score work on them), L2-normalised by whoever takes cosines with them; otherwise the L2-normalised
    raw-mean over the set. Candidate views also name the adjectives' set, and with `phrases` the
    adjectives become CSP's suffix phrases first (2.3).
    """

    templates: str  # ID labels and candidate nouns
    description: str
    adj_templates: str = ""  # candidate adjectives ("" for an ID-label view)
    raw: bool = False
    phrases: bool = False


# Columns of embed-text/id_labels.parquet, in file order; embed-text computes every one.
ID_VIEWS: dict[str, TextView] = {
    "the_nice_raw": TextView("the-nice", "unnormalised 'the nice {}' (NegLabel, DNM)", raw=True),
    "csp_noun8": TextView("csp-noun8", "raw-mean of the 8 noun templates (CSP, NegRefine)"),
    "bare": TextView("bare", "the bare string (NegFilter's nearest ID labels)"),
    "mcm": TextView("mcm", "'a photo of a {}' (MCM)"),
    "interneg_nice": TextView("interneg-nice", "'The nice {}.' (InterNeg)"),
}
# Embedding columns of embed-text/candidates.parquet: how a method embeds its candidate words.
CANDIDATE_VIEWS: dict[str, TextView] = {
    "single_raw": TextView(
        "the-nice", "unnormalised single template, every candidate (NegLabel, DNM)", "neglabel-adj", raw=True
    ),
    "ensemble": TextView(
        "csp-noun8", "nouns x 8 templates, suffix phrases x 4 (CSP, NegRefine)", "csp-adj4", phrases=True
    ),
    "interneg": TextView(
        "interneg-nice", "'The nice {}.' nouns, 'This is a {} photo.' adjectives", "interneg-adj"
    ),
}


@dataclass(frozen=True)
class Preprocess:
    """An image preprocessing a reference evaluates with (methods.md 1.6, 2.6, 3.5, 4.4, 5.7), relative
    to the model's image size S: `interpolation` None is the model's own open_clip eval transform;
    otherwise torchvision's Resize(round(S * resize_ratio)) of the short side with `interpolation`,
    then CenterCrop(S), with the model's mean and std (clip.preprocess.variant_specs builds them).
    `augment`: instead torchvision's RandomResizedCrop(S) with `interpolation` and a horizontal flip,
    drawn per image from (run.seed, its path): a training transform, for InterNeg's prototypes only."""

    description: str
    interpolation: str | None = None
    resize_ratio: float = 1.0
    augment: bool = False


# Each distinct preprocessing is one embedding column of embed-images (`embedding@<name>`).
PREPROCESSING: dict[str, Preprocess] = {
    "clip": Preprocess("the model's open_clip transform: bicubic Resize(S), CenterCrop(S) (NegRefine, MCM)"),
    "torchvision": Preprocess(
        "torchvision's default bilinear Resize(S), CenterCrop(S) (NegLabel, CSP, DNM)", "bilinear"
    ),
    "openood": Preprocess(
        "OpenOOD's test transform: bicubic Resize(S * 256/224), CenterCrop(S) (InterNeg)",
        "bicubic",
        256 / 224,
    ),
    "augment": Preprocess(
        "RandomResizedCrop(S, bicubic) + horizontal flip, seeded per image (InterNeg's prototypes, 5.2)",
        "bicubic",
        augment=True,
    ),
}
# The preprocessings images.preprocess may name for the scored images (test transforms).
TEST_PREPROCESSING: tuple[str, ...] = tuple(k for k, v in PREPROCESSING.items() if not v.augment)


@dataclass(frozen=True)
class Pool:
    """Which lexicographer files a method's candidate pool takes (corpus.PoolRule applies it, 0.5)."""

    description: str
    exclude: tuple[str, ...] = ()
    exclude_id_names_from: str | None = None  # "noun": exact ID class names dropped from the nouns
    file_order: str = "negrefine"  # the corpus.FILE_ORDERS entry its files are walked in (0.5)


@dataclass(frozen=True)
class Mining:
    """How a method's negatives are selected from its pool. "id-distance": the top fraction farthest
    from the ID labels by the `quantile` of cosines, with CSP's max-cosine guard (1.4, 2.4, 3.1);
    "density": DNM's lowest-density fraction (4.2), both in the mine stage; "inter-modal": InterNeg's
    admissibility and deviation against ID image prototypes (5.3), in the score stage, which has the
    prototype images; "order-statistic": AdaNeg's fixed count of the farthest by an order statistic of
    the cosines, split in proportion to the parts of speech (D.2). A str `quantile` names a [mining]
    key."""

    rule: Literal["id-distance", "density", "inter-modal", "order-statistic"]
    quantile: float | str = 0.95
    csp_guard: bool = False


@dataclass(frozen=True)
class Row:
    """A report row: its key (the `row` of its score columns) and its label. "{judge}" stands for the
    NegFilter judge whose kept negatives the row used, "{method}" for the method's display name.
    With `pool`, "{judge}" is the judge that filtered the candidate pool the method then mined
    (filter.scope = "corpus", mining.filtered_by): its negatives are filter/<judge>/mined.parquet."""

    key: str
    label: str = "{method}"
    judge: bool = False  # one row per judge (over its kept negatives); False: no NegFilter
    s_mm: bool = False  # NegRefine: alpha * S_MM added
    visual: bool = False  # InterNeg: with the negatives inverted online from confident OOD images
    pool: bool = False  # mined from the pool minus what the judge removed (needs judge=True)


@dataclass(frozen=True)
class Method:
    """One OOD method. `pool`/`mining` None: it mines no negatives (MCM). `scorer` names the score
    stage's `score_<scorer>` function that adds its columns; `column` is a column's name from its
    row, "{row}@{ood}" when the method writes one column per OOD dataset (DNM's groupings)."""

    name: str
    display: str
    id_view: str  # the ID-label view it scores (and mines) against
    scorer: str
    rows: tuple[Row, ...]
    pool: Pool | None = None
    mining: Mining | None = None
    candidate_view: str | None = None  # how its candidate words (and so its negatives) are embedded
    filtered: bool = False  # its negatives go through NegFilter (mine adds the filter inputs)
    column: str = "{row}"
    preprocess: str = "clip"  # the PREPROCESSING its reference embeds images with
    default: bool = True  # in the default score.methods/mining.methods (InterNeg needs prototype images)
    needs_prototypes: bool = False  # scores against labelled ID images (a dataset of role "prototype")
    settings: str | None = None  # its own JobConfig section, part of the score stage's hash when scored
    # scores a number the image actors compute from the local (patch) features where the images are
    # encoded: GL-MCM's L-MCM (core.glmcm), kept per image as images.parquet's local_variant column
    needs_local: bool = False

    @property
    def mines(self) -> bool:
        return self.pool is not None

    @property
    def mined_in_score(self) -> bool:
        """Its negatives are selected in the score stage (InterNeg's need the prototype images)."""
        return self.mining is not None and self.mining.rule == "inter-modal"

    def row(
        self, judge: str | None = None, s_mm: bool = False, visual: bool = False, pool: bool = False
    ) -> tuple[str, str]:
        """(key, label) of the row of a score over `judge`'s kept negatives (None: no NegFilter), or
        with `pool` over the negatives mined from the candidate pool `judge` filtered."""
        for r in self.rows:
            if r.judge == (judge is not None) and (r.s_mm, r.visual, r.pool) == (s_mm, visual, pool):
                return r.key.format(judge=judge), r.label.format(method=self.display, judge=judge)
        raise ValueError(
            f"method {self.name!r} has no report row with judge={judge!r}, s_mm={s_mm}, visual={visual}, "
            f"pool={pool}."
        )

    @property
    def judged(self) -> bool:
        """A NegFilter judge changes what it scores: its mined negatives are filtered, or it can be
        re-mined from a pool a judge filtered (the report's judge comparison takes these)."""
        return self.filtered or self.pool_filterable

    @property
    def pool_filterable(self) -> bool:
        """It selects in the mine stage, so filter.scope = "corpus" can re-mine its filtered pool."""
        return self.mines and not self.mined_in_score

    def column_name(self, row: str, ood: str | None = None) -> str:
        return self.column.format(row=row, ood=ood)


def _pool_row(key: str, label: str = "{method}", s_mm: bool = False) -> Row:
    """The row of a method mined from the candidate pool a judge filtered: "<key>[pool=<judge>]",
    "<label> (filtered by <judge>)"."""
    return Row(f"{key}[pool={{judge}}]", f"{label} (filtered by {{judge}})", judge=True, s_mm=s_mm, pool=True)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mcm", "MCM", id_view="mcm", scorer="mcm", rows=(Row("mcm"),)),  # App. B: CLIP's
        # App. C: GL-MCM's local score alone, and added to MCM; ViT towers only (core.glmcm)
        Method("lmcm", "L-MCM", id_view="mcm", scorer="lmcm", rows=(Row("lmcm"),),
               preprocess="torchvision", default=False, settings="glmcm", needs_local=True),
        Method("glmcm", "GL-MCM", id_view="mcm", scorer="glmcm", rows=(Row("glmcm"),),
               preprocess="torchvision", default=False, settings="glmcm", needs_local=True),
        Method(
            "neglabel", "NegLabel", id_view="the_nice_raw", scorer="grouped",
            rows=(Row("neglabel"), _pool_row("neglabel")),
            pool=Pool("all 27 published files, ID names kept (methods.md 1.3)", file_order="neglabel"),
            mining=Mining("id-distance"), candidate_view="single_raw", preprocess="torchvision",
        ),
        Method(
            "csp", "CSP", id_view="csp_noun8", scorer="grouped", rows=(Row("csp"), _pool_row("csp")),
            pool=Pool("without noun.person/quantity/group and adj.pert (2.4)", CSP_EXCLUDED),
            mining=Mining("id-distance", csp_guard=True), candidate_view="ensemble", preprocess="torchvision",
        ),
        Method(
            "negrefine", "NegRefine", id_view="csp_noun8", scorer="negrefine",
            rows=(
                Row("negrefine[{judge}]", "{method} ({judge})", judge=True, s_mm=True),
                Row("negrefine_nl[{judge}]", "{method} w/o S_MM ({judge})", judge=True),
                Row("negrefine_nofilter", "{method} w/o NegFilter", s_mm=True),
                Row("negrefine_nl_nofilter", "{method} w/o NegFilter, w/o S_MM"),
                _pool_row("negrefine", s_mm=True),
                _pool_row("negrefine_nl", "{method} w/o S_MM"),
            ),
            pool=Pool("CSP's files, exact ID class names dropped from nouns (3.1)", CSP_EXCLUDED, "noun"),
            mining=Mining("id-distance", quantile="negrefine_quantile", csp_guard=True),
            candidate_view="ensemble", filtered=True,
        ),
        Method(
            "dnm", "DNM", id_view="the_nice_raw", scorer="dnm", rows=(Row("dnm"), _pool_row("dnm")),
            pool=Pool("CSP's files, ID names kept (4.1)", CSP_EXCLUDED),
            mining=Mining("density"), candidate_view="single_raw", column="{row}@{ood}",
            preprocess="torchvision",
        ),
        Method(  # App. D: OpenOOD-VLM's TTAPromptPostprocessor_noadagap; InterNeg's pool and prompts
            "adaneg", "AdaNeg", id_view="interneg_nice", scorer="adaneg",
            rows=(Row("adaneg"), _pool_row("adaneg")),
            pool=Pool("all 27 files, nouns before adjectives, ID names dropped from both (D.2)",
                      exclude_id_names_from="both", file_order="interneg"),
            mining=Mining("order-statistic"), candidate_view="interneg", column="{row}@{ood}",
            preprocess="openood", default=False, settings="adaneg",
        ),
        Method(
            "interneg", "InterNeg", id_view="interneg_nice", scorer="interneg",
            rows=(Row("interneg_text", "{method} (textual)"), Row("interneg", visual=True)),
            pool=Pool("all 27 files, nouns before adjectives, ID names dropped from both (5.2)",
                      exclude_id_names_from="both", file_order="interneg"),
            mining=Mining("inter-modal"), candidate_view="interneg", column="{row}@{ood}",
            preprocess="openood", default=False, needs_prototypes=True, settings="interneg",
        ),
    )
}  # fmt: skip

SCORE_METHODS: tuple[str, ...] = tuple(METHODS)
MINING_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.mines)
DEFAULT_SCORE_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.default)
DEFAULT_MINING_METHODS: tuple[str, ...] = tuple(m for m in MINING_METHODS if METHODS[m].default)


def embedding_name(variant: str) -> str:
    """The images.parquet column (and batch column) of a preprocessing variant's image embeddings."""
    return f"embedding@{variant}"


LOCAL = "local-mcm:"  # the prefix of a variant's local score (GL-MCM's L-MCM, one float per image)


def local_variant(variant: str) -> str:
    """The pseudo-variant holding L-MCM of `variant`'s crops: cached and stored like an embedding of
    dimension 1 (images.parquet column embedding@local-mcm:<variant>)."""
    return f"{LOCAL}{variant}"


def base_variant(variant: str) -> str:
    """The preprocessing a (pseudo-)variant's crops come from."""
    return variant.removeprefix(LOCAL)


def local_templates(methods: Sequence[str]) -> str | None:
    """The template set of the ID view the local scores are taken against (GL-MCM's, MCM's prompt),
    None when no method in `methods` needs local scores."""
    views = {ID_VIEWS[get_method(m).id_view].templates for m in methods if get_method(m).needs_local}
    if len(views) > 1:
        raise NegRefineError(f"the methods needing local scores use different ID prompts: {sorted(views)}")
    return next(iter(views), None)


def local_variants(methods: Sequence[str], setting: str) -> tuple[str, ...]:
    """The preprocessings whose images also need their local score (methods with `needs_local`)."""
    chosen = image_preprocessing(methods, setting)
    return tuple(dict.fromkeys(chosen[m] for m in methods if get_method(m).needs_local))


def image_preprocessing(methods: Sequence[str], setting: str) -> dict[str, str]:
    """Method -> the PREPROCESSING name its images are embedded with under `images.preprocess`:
    "per-method" (each as its reference), "shared" (the model's own transform for all: one embedding
    per image, the fast option) or one PREPROCESSING name for every method."""
    if setting == "per-method":
        return {m: get_method(m).preprocess for m in methods}
    variant = "clip" if setting == "shared" else setting
    if variant not in TEST_PREPROCESSING:
        raise unknown_name("images.preprocess", setting, ["per-method", "shared", *TEST_PREPROCESSING])
    return dict.fromkeys(methods, variant)


def prototype_preprocessing(methods: Sequence[str], setting: str, prototype: str) -> str | None:
    """The PREPROCESSING of role-"prototype" images (InterNeg's class prototypes) under
    interneg.prototype_preprocess = `prototype`: "augment", or for "center" the test preprocessing
    of the method that needs prototypes under images.preprocess = `setting`; None when no method
    among `methods` needs prototypes."""
    users = [m for m in methods if m in METHODS and METHODS[m].needs_prototypes]
    if not users:
        return None
    return "augment" if prototype == "augment" else image_preprocessing(users[:1], setting)[users[0]]


def get_method(name: str) -> Method:
    """The catalogue entry of `name`; an unknown name lists the methods and suggests the closest."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]
