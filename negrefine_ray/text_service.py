"""One place every stage gets CLIP text features from: the persistent cache first, then a Ray actor
pool (GPU actors when the cluster has GPUs, CPU actors otherwise) or, for small CPU jobs, this
process. Features are cached unnormalised per templated text list, so every ensembling convention
(raw-mean, norm-mean) and DNM's raw vectors come from the same cached rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from negrefine_ray.clip import resolve_weights
from negrefine_ray.config import JobConfig, ModelConfig
from negrefine_ray.resources import Pool, fit_pool_on_cluster
from negrefine_ray.templates import apply_templates
from negrefine_ray.text_cache import TextEmbeddingCache, text_cache_key, texts_hash
from negrefine_ray.text_embed import EnsembleMode, encode_texts, ensemble


class TextEncoder:
    """Cached CLIP text features for one job's model. `connect` starts or joins Ray when needed."""

    def __init__(self, config: JobConfig, connect: Callable[[], None]) -> None:
        self.config, self.connect = config, connect
        self.weights = resolve_weights(config.model)
        self.cache = TextEmbeddingCache(config.cache_dir / "text-features")
        self._gpus: int | None = None
        self._local: tuple[Any, Any] | None = None
        self.encoded = 0  # texts actually run through CLIP (cache misses)

    def _cluster_gpus(self) -> int:
        if self._gpus is None:
            if not self.config.text.gpus_per_actor:
                self._gpus = 0  # CPU by request: no need to ask (or start) Ray
            else:
                import ray

                self.connect()
                self._gpus = int(ray.cluster_resources().get("GPU", 0))
        return self._gpus

    @property
    def precision(self) -> str:
        """The precision that runs: the model's on GPU actors, fp32 on CPU."""
        return self.config.model.precision if self._cluster_gpus() else "fp32"

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
        from negrefine_ray.text_embed import embed_texts_ray

        cfg = self.config.text
        gpus = self._cluster_gpus()
        if not gpus and len(texts) < cfg.local_below:
            return self._encode_here(texts)
        actors = cfg.num_actors or (max(int(gpus / cfg.gpus_per_actor), 1) if gpus else 1)
        pool = Pool(
            "text embedding",
            actors,
            1.0,
            cfg.gpus_per_actor if gpus else 0.0,
            count_key="text.num_actors",
            count_fixed=cfg.num_actors > 0,
        )
        self.connect()  # text.gpus_per_actor = 0 skips connecting in _cluster_gpus
        fit = fit_pool_on_cluster(pool).pool
        model = ModelConfig(
            arch=self.config.model.arch,
            pretrained=self.config.model.pretrained,
            precision=self.precision,  # type: ignore[arg-type]
            init_seed=self.config.model.init_seed,
        )
        return embed_texts_ray(
            texts, model, num_actors=fit.actors, num_gpus_per_actor=fit.actor_gpus,
            num_cpus_per_actor=fit.actor_cpus, batch_size=cfg.batch_size,
        )  # fmt: skip

    def _encode_here(self, texts: Sequence[str]) -> np.ndarray:
        from negrefine_ray.clip import create_clip, get_tokenizer

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
