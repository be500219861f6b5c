"""The job's sections: one typed, frozen dataclass per `[section]` of a job file (the whole job, their
sum, is job.py).

Each `[section]` of a job file maps to one frozen dataclass below; every field declares its type and,
where it matters, its allowed range in `field(metadata=...)`, which load.py enforces before any work
starts. A fixed set of choices is the field's `Literal` type; choices that a table owns (methods,
judge backends, dataset formats) are a `str` field with `_choices(*table)` in its metadata.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from negrefine_ray.core.methods import (
    DEFAULT_MINING_METHODS,
    DEFAULT_SCORE_METHODS,
    MINING_METHODS,
    SCORE_METHODS,
    TEST_PREPROCESSING,
)
from negrefine_ray.data.formats import FORMAT_NAMES as DATASET_FORMATS
from negrefine_ray.judges.backends import BACKEND_NAMES as JUDGE_BACKENDS


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"range": (lo, hi)}


# Names that become folder or file names (run, datasets, judges): one plain path part each.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Their longest: file names join a name with others (plots/<method>@<dataset>_roc.png), and a file
# name has at most 255 bytes.
PLAIN_NAME_MAX = 64
_NAME: dict[str, Any] = {"plain_name": True}
# Settings that may name a local file or folder: its content enters the hash of every stage whose
# settings hold the value (negrefine_ray/file_ids.py), so editing the file reruns those stages.
_FILE: dict[str, Any] = {"names_file": True}


def named_paths(config: Any) -> tuple[str, ...]:
    """The values of every `_FILE` setting of `config` (a JobConfig or one of its sections), judges
    and datasets included, in field order."""
    out: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("names_file") and isinstance(value, str):
            out.append(value)
        elif dataclasses.is_dataclass(value):
            out.extend(named_paths(value))
        elif isinstance(value, tuple):
            for item in value:
                if dataclasses.is_dataclass(item):
                    out.extend(named_paths(item))
    return tuple(out)


@dataclass(frozen=True)
class RunConfig:
    """Where results go and the run-wide seed."""

    name: str = field(default="run", metadata=_NAME)
    # A local or shared path, or an object-store URI (s3://bucket/prefix, gs://...; storage.py).
    output_dir: str = "runs"
    cache_dir: str = "~/.cache/negrefine-ray"
    # The driver's local scratch: its working copy of an object-store run folder, and what must be
    # local files when cache_dir is a URI (WordNet's nltk copy).
    local_dir: str = "~/.cache/negrefine-ray/local"
    # An object-store run folder's lock is a lease renewed by its driver; a dead driver's lease
    # expires after this many seconds (at once when it ran on the same host).
    lease_seconds: float = field(default=60.0, metadata=_range(5.0))
    seed: int = field(default=0, metadata=_range(0))
    # Several seeds: one run folder per seed, then mean and std over seeds (negrefine_ray.seeds).
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray: a local single-node Ray unless an address is given (or RAY_ADDRESS is set)."""

    address: str = ""
    # How long the driver waits for a given address's head to accept connections before it stops
    # with an error naming the address (a cluster still starting up; a wrong address fails then).
    connect_seconds: float = field(default=30.0, metadata=_range(0.0))
    num_cpus: int = field(default=0, metadata=_range(0))  # 0: all cores of a local Ray
    num_gpus: int = field(default=-1, metadata=_range(-1))  # -1: what a local Ray detects


@dataclass(frozen=True)
class ModelConfig:
    """The CLIP model: an open_clip architecture and its weights.

    `pretrained` is an open_clip pretrained tag (downloaded by open_clip where there is internet), a
    path to a local checkpoint file, or "none" for random initialisation (results are meaningless).
    """

    arch: str = "ViT-B-16"
    pretrained: str = field(default="openai", metadata=_FILE)
    precision: Literal["fp32", "fp16", "bf16"] = "fp16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    init_seed: int = field(default=0, metadata=_range(0, 2**32 - 1))  # random init when pretrained = "none"


@dataclass(frozen=True)
class CorpusConfig:
    """The WordNet candidate corpus (methods.md 0.3).

    `source` is "wordnet" (built from WordNet 3.0 through nltk) or a folder of word-list files in the
    published layout (`<lexname>.txt`). `lexnames` empty means the 27 published files.
    """

    source: str = field(default="wordnet", metadata=_FILE)
    rule: Literal["first-lemma", "all-lemmas"] = "first-lemma"
    lexnames: tuple[str, ...] = ()
    extra_lexnames: tuple[str, ...] = ()  # e.g. ("noun.animal", "noun.food"), absent from the lists
    max_words_per_lexname: int = field(default=0, metadata=_range(0))  # 0: all; >0 for smoke runs


@dataclass(frozen=True)
class LabelsConfig:
    """In-distribution labels: a named set ("imagenet1k", "imagenet10", ...) or a label file."""

    id_labels: str = field(default="imagenet1k", metadata=_FILE)


@dataclass(frozen=True)
class TextConfig:
    """How CLIP text embeddings are computed (the `embed-text` stage and every later text encoding).
    None of these change the embeddings except through `model.precision` on GPU."""

    batch_size: int = field(default=1024, metadata=_range(1))
    num_actors: int = field(default=0, metadata=_range(0))  # 0: one per GPU, or 1 on CPU
    gpus_per_actor: float = field(default=1.0, metadata=_range(0.0, 1.0))
    local_below: int = field(default=4096, metadata=_range(0))  # CPU only: fewer texts run in-process


@dataclass(frozen=True)
class MiningConfig:
    """Negative-label mining (methods.md 1.4, 2.4, 3.1, 4.2); `methods` are the catalogue's methods
    that mine (negrefine_ray.core.methods)."""

    methods: tuple[str, ...] = field(default=DEFAULT_MINING_METHODS, metadata=_choices(*MINING_METHODS))
    # The order the references' os.listdir walked word-list files in decides which file owns a word
    # two files share: "per-method" walks each method's own (NegLabel: one consistent with its shipped
    # selection; CSP, NegRefine, DNM: the one reproducing NegRefine's logged pools); "negrefine",
    # "neglabel" or "sorted" (alphabetical) walks that one for every method (core.corpus.FILE_ORDERS).
    file_order: Literal["per-method", "negrefine", "neglabel", "sorted"] = "per-method"
    top_fraction: float = field(default=0.15, metadata=_range(0.0, 1.0))  # NegLabel/CSP/NegRefine
    negrefine_quantile: float = field(default=1.0, metadata=_range(0.0, 1.0))  # code: max; paper: 0.95
    dnm_preset: str = ""  # DNM's hyper-parameters by backbone; "" = model.arch
    dnm_distance: Literal["reference", "normalised"] = "reference"
    n_nearest: int = field(default=10, metadata=_range(1))  # NegFilter's nearest ID labels
    # Judges (filter.judges) whose filtered candidate pool every mining method also selects from
    # (needs filter.scope = "corpus"): filter/<judge>/mined.parquet, scored as "<method>[pool=<judge>]".
    filtered_by: tuple[str, ...] = field(default=(), metadata=_NAME)


@dataclass(frozen=True)
class DatasetConfig:
    """One image dataset (a `[[datasets]]` table). `root` is a local path or a pyarrow/fsspec URI."""

    name: str = field(metadata=_NAME)
    # "prototype": labelled ID training images for InterNeg's class prototypes (methods.md 5.2)
    role: Literal["id", "ood", "prototype"]
    root: str
    format: str = field(metadata=_choices(*DATASET_FORMATS))  # data/formats.py: FORMATS
    image_list: str = ""  # the list file of format "imagelist" (and imagenet-val's ground truth)
    expected: int = field(default=0, metadata=_range(0))  # expected image count; 0 = unknown
    limit: int = field(default=0, metadata=_range(0))  # 0 = all; >0 = a seeded sample of that size
    per_class: int = field(default=0, metadata=_range(0))  # 0 = all; >0 = a seeded sample per label


@dataclass(frozen=True)
class ImagesConfig:
    """How images are read and embedded (the `embed-images` stage)."""

    preset: str = ""  # a benchmark preset that fills [[datasets]] (see negrefine_ray.data.datasets)
    data_root: str = ""  # folder under which a preset's datasets live
    # "pil" (the references' loader), "pil-draft" (reduced-scale JPEG decoding) or "gpu" (JPEGs decoded
    # with nvJPEG and resized on the model's device, in the actors; torchvision's libjpeg-turbo there
    # when model.device is "cpu"; not bit-identical to "pil": clip/device_decode.py)
    decode: Literal["pil", "pil-draft", "gpu"] = "pil"
    exif: Literal["ignore", "transpose"] = "ignore"
    alpha: Literal["drop", "white"] = "drop"
    high_bit_depth: Literal["scale", "clip"] = "scale"
    max_pixels: int = field(default=0, metadata=_range(0))  # 0: twice Pillow's decompression-bomb limit
    batch_size: int = field(default=256, metadata=_range(1))
    num_actors: int = field(default=0, metadata=_range(0))  # 0: one per GPU, or 1 on CPU
    gpus_per_actor: float = field(default=1.0, metadata=_range(0.0, 1.0))
    max_failed_fraction: float = field(default=0.01, metadata=_range(0.0, 1.0))
    # While a pass runs, its finished rows are kept as partial cache entries at most this often
    # (seconds; 0: after every batch), so a killed driver or failed pass resumes from them.
    checkpoint_seconds: float = field(default=30.0, metadata=_range(0.0))
    # Symbolic links inside a dataset root: "follow" (torchvision's ImageFolder and the references
    # follow them wherever they point) or "within-root" (a link resolving outside the root is not read
    # and is recorded as a failure of kind "outside-root").
    symlinks: Literal["follow", "within-root"] = "follow"
    # Which preprocessing each method's images get (core.methods.PREPROCESSING): "per-method" (each
    # method as its reference: NegLabel/CSP/DNM bilinear, NegRefine/MCM the model's bicubic transform;
    # each image decoded once, one crop and one embedding per distinct preprocessing), "shared" (the
    # model's own transform for every method: one embedding per image, the speed option) or one
    # preprocessing name for every method.
    preprocess: str = field(
        default="per-method", metadata=_choices("per-method", "shared", *TEST_PREPROCESSING)
    )


@dataclass(frozen=True)
class FilterConfig:
    """NegFilter (methods.md 3.2): which judges, which prompts, and how answers become decisions."""

    judges: tuple[str, ...] = ("wordnet",)  # names of [[judges]] entries, or built-in "wordnet"
    prompt_set: Literal["negrefine", "corrected"] = "negrefine"
    n_id_labels: int = field(default=10, metadata=_range(1))  # nearest ID labels asked about
    invalid_policy: Literal["keep", "drop"] = "keep"
    # What the judges are asked about: "negatives" (NegRefine's mined negatives, the reference) or
    # "corpus" (every candidate of the mining methods' pools, so mining.filtered_by can re-mine them).
    scope: Literal["negatives", "corpus"] = "negatives"
    chunk_size: int = field(default=2048, metadata=_range(1))  # questions per persisted answer shard


@dataclass(frozen=True)
class JudgeConfig:
    """One judge (a `[[judges]]` table). `backend`: a name of negrefine_ray.judges.BACKENDS (vllm,
    transformers, wordnet, replay, or fake: a deterministic test double with meaningless answers).

    The fields are every backend's options; each backend reads only those its `BackendSpec.options`
    name (judges/backends.py), and loading a job refuses a key its backend does not read unless the
    key holds its default (checks.check_backend_options)."""

    name: str = field(metadata=_NAME)
    backend: str = field(metadata=_choices(*JUDGE_BACKENDS))
    model: str = field(default="", metadata=_FILE)  # hub id, local folder, or .gguf file (transformers)
    mode: Literal["logprob", "generate"] = "logprob"
    threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))  # decision: P(yes) > threshold
    dtype: str = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = field(default=64, metadata=_range(1))
    max_new_tokens: int = field(default=8, metadata=_range(1))  # generate mode
    # Where the system prompt goes: a system turn (the reference), or "in-user-turn" for chat
    # templates without a system role (gemma-2).
    system_prompt: Literal["system-role", "in-user-turn"] = "system-role"
    prefix_cache: bool = True  # transformers: run the prompts' shared prefix once (vLLM caches its own)
    max_model_len: int = field(default=1024, metadata=_range(64))
    gpu_memory_utilization: float = field(default=0.9, metadata=_range(0.05, 1.0))
    tensor_parallel_size: int = field(default=1, metadata=_range(1))
    num_actors: int = field(default=0, metadata=_range(0))  # 0: one per GPU (or TP group), 1 on CPU
    # A custom Ray resource each actor takes one unit of ("" none): pins a judge to the nodes that
    # offer it (a node label, or the fake accelerators of a test cluster) and sizes concurrency.
    resource: str = ""
    proper_rule: Literal["instance", "capitalized"] = "instance"  # wordnet backend
    compound_head: bool = True  # wordnet backend: "african daisy" is a subcategory of "daisy"
    log_noun: str = field(default="", metadata=_FILE)  # replay backend: NegRefine's llm_process_noun.txt
    log_adj: str = field(default="", metadata=_FILE)  # replay backend: llm_process_adj.txt


@dataclass(frozen=True)
class ScoreConfig:
    """OOD scores per image (methods.md 0.6, 1.5, 2.5, 3.4, 4.3, App. B); defaults are the references'.

    `permutation_seed`: "fixed" draws NegLabel's grouping with `group_seed` (the references always use
    0); "run" draws it with run.seed. `permutation_device` "cuda" reproduces the
    references' CUDA randperm (needs a GPU in the driver process); "cpu" is machine-independent.
    """

    methods: tuple[str, ...] = field(default=DEFAULT_SCORE_METHODS, metadata=_choices(*SCORE_METHODS))
    ablations: bool = True  # NegRefine's NegFilter on/off x S_MM on/off columns
    n_groups: int = field(default=100, metadata=_range(1))
    logit_scale: float = field(default=100.0, metadata=_range(0.0))
    mcm_temperature: float = field(default=1.0, metadata=_range(0.0))
    alpha: float = 2.0  # NegRefine: S = S_NL + alpha * S_MM
    k_pos: int = field(default=5, metadata=_range(1))
    k_neg: int = field(default=5, metadata=_range(1))
    permutation_device: Literal["cpu", "cuda"] = "cpu"
    permutation_seed: Literal["fixed", "run"] = "fixed"
    # NegRefine's de-duplicated negatives: "shuffled" (a random order seeded with run.seed, as the
    # reference's list(set(...)) gives, so the M mod G the grouped score drops are random ones) or
    # "ranked" (mine's order: the most ID-like adjectives are dropped). docs/faithfulness.md.
    negrefine_order: Literal["shuffled", "ranked"] = "shuffled"
    group_seed: int = field(default=0, metadata=_range(0))
    dnm_temperature: float = field(default=0.01, metadata=_range(0.0))
    dnm_tau: float = field(default=0.5, metadata=_range(0.0, 1.0))
    dnm_seed: int = field(default=50, metadata=_range(0))
    chunk_size: int = field(default=1024, metadata=_range(1))  # images per scoring step
    # Where the per-image scores are computed (scoring.rows): "driver" (this process), "cluster" (Ray
    # tasks over blocks of block_rows images, rounded down to whole chunks, on the cluster's workers)
    # or "auto": the cluster when the job runs on one (a Ray address) of more than one node. The
    # columns are the same either way, so neither key is part of the stage's hash.
    workers: Literal["auto", "driver", "cluster"] = "auto"
    block_rows: int = field(default=65_536, metadata=_range(1))
    # What computes them (scoring.rows): "cpu" (numpy), "cuda" (core.scores_torch on a GPU: the
    # driver's, or one per task) or "auto": "cuda" where the process or, for tasks, the cluster has a
    # GPU. The GPU's scores agree with numpy's within 1e-5 (core.scores_torch.TOLERANCE), not to the
    # bit, so this key is part of the stage's hash; the manifest records what "auto" chose.
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class GLMCMConfig:
    """GL-MCM and L-MCM (methods.md Appendix C): S = MCM + lambda_local x L-MCM. Defaults are the
    reference's ImageNet script's: lambda_local 0.5 (its argument's default is 1.0, and versions
    before June 2024 hard-coded 1), T = 1 (softmax over raw cosines; the reference's `--T` is an int).
    The prompts are MCM's 'a photo of a {}' and the images torchvision's bilinear Resize + CenterCrop,
    as the reference's; L-MCM is computed in the image actors, so `temperature` is part of the
    embed-images stage's hash too."""

    lambda_local: float = field(default=0.5, metadata=_range(0.0))
    temperature: float = field(default=1.0, metadata=_range(0.0))


@dataclass(frozen=True)
class ReportConfig:
    """What report.html shows beside the tables: per method and OOD dataset the `hardest` OOD images
    scored most ID-like and ID images scored most OOD-like (0: none), as `thumbnail_px` JPEG
    thumbnails (the longer side), each with its `top_labels` ID labels and negatives by cosine."""

    hardest: int = field(default=12, metadata=_range(0, 200))
    thumbnail_px: int = field(default=128, metadata=_range(16, 512))
    top_labels: int = field(default=5, metadata=_range(1, 20))


@dataclass(frozen=True)
class AdaNegConfig:
    """AdaNeg (methods.md Appendix D): test-time adaptive negative proxies over one seeded, shuffled
    stream of the ID images and each OOD dataset's. Defaults are its ImageNet script's: thres 0.5,
    gap 0.5 (cache above 0.75, below 0.25), memory_length 10, lambda 0.1 (S = S_ada + lambda S_nl),
    group_num 5, 10,000 negatives, batches of 256. `replacement` "never" (default) is the reference's
    effective rule, its fp16 entropies being NaN: a full memory is never updated; "entropy" replaces
    the most uncertain image, as its code was written. `fill_last_slot` false (default) keeps its
    quirk of storing L - 1 images. `shuffles`: stream orders run.seed, run.seed + 1, ...; the
    manifest gives each metric's mean and std over them."""

    n_negatives: int = field(default=10_000, metadata=_range(1))
    thres: float = field(default=0.5, metadata=_range(0.0, 1.0))
    gap: float = field(default=0.5, metadata=_range(0.0, 1.0))
    memory_length: int = field(default=10, metadata=_range(1))
    lambda_static: float = field(default=0.1, metadata=_range(0.0))  # lambda on the static S_nl
    n_groups: int = field(default=5, metadata=_range(1))
    batch_size: int = field(default=256, metadata=_range(1))
    shuffles: int = field(default=1, metadata=_range(1))
    replacement: Literal["never", "entropy"] = "never"
    fill_last_slot: bool = False
    # The cosines' scale: 0 (default) = score.logit_scale (100, OpenAI's exp(logit_scale)).
    logit_scale: float = field(default=0.0, metadata=_range(0.0))


@dataclass(frozen=True)
class InterNegConfig:
    """InterNeg (methods.md 5): inter-modal textual negatives against ID image prototypes (a dataset of
    role "prototype") and negatives inverted online from confident OOD images; defaults are its
    scripts' (5.1). `shuffles`: stream orders run.seed, run.seed + 1, ...; its scores depend on the
    order (5.5), so the manifest gives each metric's mean and std over them."""

    n_negatives: int = field(default=2000, metadata=_range(1))  # M textual negatives (ood_number)
    k_extra: int = field(default=2000, metadata=_range(0))  # inverted negatives used (extra_text_length)
    threshold: float = field(default=0.35, metadata=_range(0.0))  # beta: below it, inverted (> 1: all)
    n_groups: int = field(default=5, metadata=_range(1))  # 5: Four-OOD, Far-OOD; 1: Near-OOD
    batch_size: int = field(default=256, metadata=_range(1))  # images per step of the online stream
    shuffles: int = field(default=1, metadata=_range(1))
    steps: int = field(default=10, metadata=_range(1))  # inversion: AdamW steps
    lr: float = field(default=0.02, metadata=_range(0.0))
    weight_decay: float = field(default=0.01, metadata=_range(0.0))
    # InterNeg's arithmetic: "fp32" (default) or "fp16", the reference's end to end (methods.md 5.6):
    # the score (quantised, so metrics see ties), the bank's stored embeddings and scores and their
    # sort, and the cosines and deviations of the textual selection and of the inversions.
    precision: Literal["fp32", "fp16"] = "fp32"
    # The scale of InterNeg's cosines. The reference multiplies by its checkpoint's exp(logit_scale):
    # 100 for OpenAI's weights, score.logit_scale's default. 0 (default) = score.logit_scale; set it for
    # a checkpoint whose own scale differs (1/0.07 for a random-initialised open_clip model).
    logit_scale: float = field(default=0.0, metadata=_range(0.0))
    # The prototype images' preprocessing: "augment" (the reference's RandomResizedCrop + flip, here
    # seeded per image by run.seed and its path) or "center" (InterNeg's deterministic test transform).
    prototype_preprocess: Literal["augment", "center"] = "augment"
