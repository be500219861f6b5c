"""One place every stage gets CLIP text features from: the persistent cache first, then a Ray actor
pool sized by pools.plan_pool (GPU actors when the cluster has GPUs and model.device allows, CPU
actors otherwise) or, for small CPU jobs, this process. Features are cached unnormalised per
templated text list, so every ensembling convention (raw-mean, norm-mean) and DNM's raw vectors come
from the same cached rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from negrefine_ray.clip.model import resolve_precision, resolve_weights
from negrefine_ray.clip.text import EnsembleMode, encode_texts, ensemble
from negrefine_ray.clip.text_cache import TextEmbeddingCache, text_cache_key, texts_hash
from negrefine_ray.config import JobConfig
from negrefine_ray.core.templates import apply_templates
from negrefine_ray.distributed.pools import (
    PoolPlan,
    PoolSpec,
    ResidentPool,
    cluster_gpus,
    fit_plan,
    plan_pool,
)


class TextEncoder:
    """Cached CLIP text features for one job's model. `connect` starts or joins Ray when needed."""

    def __init__(self, config: JobConfig, connect: Callable[[], None]) -> None:
        self.config, self.connect = config, connect
        self.weights = resolve_weights(config.model)
        self.cache = TextEmbeddingCache(config.cache_dir / "text-features")
        self._plan: PoolPlan | None = None
        self._local: tuple[Any, Any] | None = None
        self._pool: ResidentPool | None = None  # the text actors (clip.text.text_pool), at the first Ray pass
        self.encoded = 0  # texts actually run through CLIP (cache misses)
        self.nodes: dict[str, int] = {}  # texts each Ray node's actors encoded

    def _pool_plan(self) -> PoolPlan:
        """The text pool by the one sizing rule; Ray is asked for its GPUs (and started) only when
        the pool could use them."""
        if self._plan is None:
            gpus = 0.0  # CPU by request (text.gpus_per_actor = 0 or model.device = "cpu")
            spec = text_pool_spec(self.config)
            if spec.gpus_per_actor and spec.device != "cpu":
                self.connect()
                gpus = cluster_gpus()
            self._plan = plan_pool(spec, gpus)
        return self._plan

    @property
    def precision(self) -> str:
        """The precision that runs: the model's on GPU actors, fp32 on CPU (clip.resolve_precision)."""
        return resolve_precision(self._pool_plan().device, self.config.model.precision)

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) float32 UNNORMALISED features of exactly these texts (already templated)."""
        key = text_cache_key(
            self.weights.identity, self.config.model.arch, (), "features", texts_hash(texts), self.precision
        )
        hit = self.cache.get(key)
        if hit is not None and hit[0] == list(texts):
            return hit[1]
        feats = self._compute(texts)
        self.cache.put(key, texts, feats)
        self.encoded += len(texts)
        return feats

    def _compute(self, texts: Sequence[str]) -> np.ndarray:
        from negrefine_ray.clip.text import embed_texts_ray

        plan = self._pool_plan()
        if plan.device == "cpu" and len(texts) < self.config.text.local_below:
            return self._encode_here(texts)
        self.connect()  # a CPU plan may not have connected
        if self._pool is None:  # one pool for every text list of this encoder: CLIP loaded once per actor
            from negrefine_ray.clip.text import text_pool

            self._plan = plan = fit_plan(plan)
            self._pool = text_pool(self.config.model, self.config.text, plan)
        return embed_texts_ray(
            texts, self.config.model, self.config.text, plan, nodes=self.nodes, pool=self._pool
        )

    def close(self) -> None:
        """End the text actors, if any started (they also end when the encoder is dropped)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _encode_here(self, texts: Sequence[str]) -> np.ndarray:
        from negrefine_ray.clip.model import create_clip, get_tokenizer

        if self._local is None:
            model, _, _ = create_clip(self.config.model, "cpu")
            self._local = (model, get_tokenizer(self.config.model.arch))
        model, tokenizer = self._local
        return encode_texts(model, tokenizer, texts, batch_size=self.config.text.batch_size)

    def embed(
        self, labels: Sequence[str], templates: Sequence[str], mode: EnsembleMode = "raw-mean"
    ) -> np.ndarray:
        """(n_labels, D) float32 L2-normalised template ensembles (methods.md 0.2)."""
        feats = self.features(apply_templates(labels, templates))
        return ensemble(feats, len(templates), mode)

    def raw(self, labels: Sequence[str], template: str) -> np.ndarray:
        """(n_labels, D) float32 UNNORMALISED single-template features (DNM works on these)."""
        return self.features(apply_templates(labels, [template]))


def text_pool_spec(config: JobConfig) -> PoolSpec:
    """The text-embedding pool: text.num_actors actors of text.gpus_per_actor GPU and 1 CPU each."""
    text = config.text
    return PoolSpec(
        "text embedding",
        text.num_actors,
        text.gpus_per_actor,
        config.model.device,
        count_key="text.num_actors",
        gpus_key="text.gpus_per_actor",
    )
