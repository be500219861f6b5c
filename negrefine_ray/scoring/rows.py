"""Where the per-image scores are computed. Every score function of core.scores gives each image a
score from that image's embedding and the text side alone, so the images can be cut into blocks and
scored anywhere: in this process, or as Ray tasks on the cluster's workers (score.workers), the text
side put in the object store once per call and each image block once per run. A block is a whole
number of score.chunk_size chunks, so every matrix product has the shapes it has on the driver.
With `device` "cuda" (score.device) the functions' torch twins (core.scores_torch) run on a GPU: the
driver's, or one per task on the cluster's GPU nodes; they agree with numpy within their TOLERANCE.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from negrefine_ray.distributed.pools import node_id


def _scored_block(
    fn: Callable[..., np.ndarray], image: np.ndarray, kwargs: dict[str, Any]
) -> tuple[np.ndarray, str]:
    """Ray task: `fn` over one image block, and the node that ran it."""
    return fn(image, **kwargs), node_id()


@dataclass
class Rows:
    """How score functions run over the images: in this process (`tasks` False), or as Ray tasks over
    blocks of `block` rows, on `device` ("cpu": numpy; "cuda": the torch twins on a GPU). `nodes`
    counts the images each Ray node scored (the manifest's)."""

    tasks: bool = False
    block: int = 65536
    device: str = "cpu"
    nodes: dict[str, int] = field(default_factory=dict)
    _blocks: dict[int, tuple[np.ndarray, list[Any]]] = field(default_factory=dict, repr=False)

    def map(self, fn: Callable[..., np.ndarray], image: np.ndarray, **kwargs: Any) -> np.ndarray:
        """`fn(image, **kwargs)`, (N,) float64, computed block by block where `tasks` says."""
        gpus = 0
        if self.device != "cpu":
            from negrefine_ray.core.scores_torch import TWINS

            if fn in TWINS:  # any other function runs in numpy on the CPU
                fn, gpus = functools.partial(TWINS[fn], device=self.device), 1
        if not self.tasks or image.shape[0] <= self.block:
            return fn(image, **kwargs)
        import ray

        gpus = 1 if self.device != "cpu" else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2, scheduling_strategy="SPREAD")(
            _scored_block
        )
        shared = ray.put(kwargs)  # the text side, once per call
        refs = [task.remote(fn, block, shared) for block in self._image_blocks(image)]
        results = ray.get(refs)
        for (_, node), rows in zip(results, self._sizes(image), strict=True):
            self.nodes[node] = self.nodes.get(node, 0) + rows
        return np.concatenate([values for values, _ in results])

    def _image_blocks(self, image: np.ndarray) -> list[Any]:
        """The object refs of `image`'s blocks, put once for every call on the same array."""
        import ray

        kept = self._blocks.get(id(image))
        if kept is None or kept[0] is not image:
            refs = [ray.put(image[i : i + self.block]) for i in range(0, image.shape[0], self.block)]
            kept = self._blocks[id(image)] = (image, refs)
        return kept[1]

    def _sizes(self, image: np.ndarray) -> list[int]:
        n = image.shape[0]
        return [min(self.block, n - i) for i in range(0, n, self.block)]
