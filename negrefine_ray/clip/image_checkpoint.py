"""Within-stage checkpoints of embed-images: the rows a Ray pass has finished are kept in the image-
embedding cache while it runs, so a killed driver or a failed pass loses seconds of work, not the pass.

While the driver collects the actor pool's batches, `PassCheckpoints` writes, at most every
`images.checkpoint_seconds` (and at most ~10 % of the pass's time), one partial entry per dataset
listing and variant: every row of that listing known so far (reused from earlier entries or embedded
by this pass), under the cache base of the listing's complete entry. A resumed stage takes those rows
back through `ImageEmbeddingCache.reusable` (unchanged files' rows from the entries of a base), so only
the rest go through CLIP again.

A partial entry lives under `partial_key(key, slot)` (`<key>.partial-<slot>.parquet`), never under
the listing's own key, so `ImageEmbeddingCache.get` never returns one as a complete entry. Each
listing's two slots are written in turn, so a driver killed during a write still leaves the previous
one; `remove_partials` deletes both once the complete entry is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from negrefine_ray.clip.image_cache import EmbedResult, ImageEmbeddingCache
from negrefine_ray.core.methods import embedding_name
from negrefine_ray.distributed.pools import ROW
from negrefine_ray.runfolder.cache_files import checksum_path

log = logging.getLogger(__name__)

SLOTS = 2  # partial entries per listing and variant, written in turn
MAX_SHARE = 0.1  # at most this share of a pass's time goes to writing checkpoints


def partial_key(key: str, slot: int) -> str:
    """The cache key of slot `slot` of the partial entry of the complete entry `key`: its file is
    `<key>.partial-<slot>.parquet`, beside `<key>.parquet`."""
    return f"{key}.partial-{slot}"


def remove_partials(cache: ImageEmbeddingCache, base: str, key: str) -> None:
    """Delete the partial entries of `key` (both slots, with their checksums), if any."""
    for slot in range(SLOTS):
        path = cache.path(base, partial_key(key, slot))
        for file in (path, checksum_path(path)):
            file.unlink(missing_ok=True)


@dataclass(frozen=True)
class PassListing:
    """One dataset listing in a pass. `rows`: the listing's rows (path, size, mtime_ns, in listing
    order); `need`: (N,) bool, the rows the pass embeds, which are consecutive rows of the pass in this
    order; `entries`: variant -> (base, key) of its complete cache entry; `reused`: variant ->
    (rows taken from earlier entries or None, (N,) bool mask of them), as `reusable` returns."""

    rows: pa.Table
    need: np.ndarray
    entries: Mapping[str, tuple[str, str]]
    reused: Mapping[str, tuple[EmbedResult | None, np.ndarray]]


class PassCheckpoints:
    """Collects a pass's finished rows (`observe`, once per batch the driver receives) and writes them
    as partial entries (`flush`): when `every_s` seconds have passed since the last write, and never
    sooner than ten times the last write took. `listings` are in pass order."""

    def __init__(
        self,
        cache: ImageEmbeddingCache,
        listings: Sequence[PassListing],
        *,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache, self.listings, self.every_s, self.clock = cache, list(listings), every_s, clock
        self.variants = list(self.listings[0].entries) if self.listings else []  # the same for every listing
        self.starts = np.cumsum([0, *(int(li.need.sum()) for li in self.listings)])
        n = int(self.starts[-1])
        self.done = np.zeros(n, dtype=bool)
        self.written = np.zeros(n, dtype=bool)  # rows in the last partial entries written
        self.status, self.detail = np.empty(n, dtype=object), np.empty(n, dtype=object)
        self.embeddings: dict[str, np.ndarray] = {}
        self.slots = [0] * len(self.listings)  # next slot to write, per listing
        self.due = clock() + every_s

    def observe(self, batch: Mapping[str, np.ndarray]) -> None:
        """Record a batch of the pool's output (ROW, status, detail, embedding@<variant>); flush when due."""
        rows = np.asarray(batch[ROW], dtype=np.int64)
        self.done[rows] = True
        self.status[rows], self.detail[rows] = batch["status"], batch["detail"]
        for variant in self.variants:
            values = np.asarray(batch[embedding_name(variant)])
            if variant not in self.embeddings:
                self.embeddings[variant] = np.zeros((len(self.done), values.shape[1]), dtype=np.float32)
            self.embeddings[variant][rows] = values
        if self.clock() >= self.due:
            self.flush()

    def flush(self) -> int:
        """Write the partial entries of every listing with rows finished since the last write; returns
        how many entries were written."""
        t0 = self.clock()
        new = self.done & ~self.written
        count = 0
        for i, li in enumerate(self.listings):
            a, b = int(self.starts[i]), int(self.starts[i + 1])
            if not new[a:b].any():
                continue
            for variant, (base, key) in li.entries.items():
                rows, result = self._partial(li, variant, a, b)
                self.cache.put(base, partial_key(key, self.slots[i]), rows, result)
                count += 1
            self.slots[i] = (self.slots[i] + 1) % SLOTS
        self.written = self.done.copy()
        spent = self.clock() - t0
        self.due = self.clock() + max(self.every_s, spent / MAX_SHARE)
        if count:
            log.debug("embed-images: %d rows kept in %d partial entries (%.2f s)", new.sum(), count, spent)
        return count

    def _partial(self, li: PassListing, variant: str, a: int, b: int) -> tuple[pa.Table, EmbedResult]:
        """The listing's known rows of `variant`: reused where found (as the stage merges them), else
        embedded by this pass (pass rows a..b-1)."""
        n = li.rows.num_rows
        done = self.done[a:b]
        at = np.flatnonzero(li.need)[done]  # listing positions of the finished pass rows
        emb = self.embeddings[variant]
        status, detail = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
        vectors = np.zeros((n, emb.shape[1]), dtype=np.float32)
        status[at], detail[at], vectors[at] = self.status[a:b][done], self.detail[a:b][done], emb[a:b][done]
        old, found = li.reused[variant]
        if old is not None:
            status[found], detail[found] = old.status[found], old.detail[found]
            vectors[found] = old.embedding[found]
        keep = found.copy()
        keep[at] = True
        result = EmbedResult(status[keep].astype(str), detail[keep].astype(str), vectors[keep])
        return li.rows.filter(pa.array(keep)), result
