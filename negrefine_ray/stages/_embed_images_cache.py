"""The embed-images stage's pass over the image embedding cache: which rows of each dataset listing
earlier cache entries already hold (each unchanged file's rows), one pass of the embedding pool over
the rest (every preprocessing variant from one decode of each file), partial entries kept while the
pass runs (clip/image_checkpoint.py), and the complete entries stored per variant."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from negrefine_ray.clip.image_cache import EmbedResult, ImageEmbeddingCache
from negrefine_ray.clip.image_checkpoint import PassCheckpoints, PassListing, remove_partials
from negrefine_ray.data.datasets import Listing

OnBatch = Callable[[Mapping[str, np.ndarray]], None]  # sees each batch of a pass's output


# (work rows, variants, batch observer) -> results
Embed = Callable[[pa.Table, Sequence[str], OnBatch], dict[str, EmbedResult]]


def _embed_listings(
    listings: dict[str, Listing], variants: Sequence[str], embed: Embed, on_batch: OnBatch
) -> dict[str, dict[str, EmbedResult]]:
    """Embed the listings' rows in one pass of `embed` (every variant from one decode of each file)
    and return them by listing key and variant; `on_batch` sees the pass's batches."""
    parts = list(listings.values())
    sizes = [li.table.num_rows for li in parts]
    roots = [li.root for li, k in zip(parts, sizes, strict=True) for _ in range(k)]
    work = pa.table(
        {
            "row": pa.array(np.arange(sum(sizes), dtype=np.int64)),
            "root": pa.array(roots, pa.string()),
            "path": pa.concat_arrays([li.table.column("path").combine_chunks() for li in parts]),
            # failures the listing found ("missing", "outside-root") are passed on without a read
            "status": pa.concat_arrays([li.table.column("status").combine_chunks() for li in parts]),
        }
    )
    out = embed(work, variants, on_batch)
    results: dict[str, dict[str, EmbedResult]] = {}
    bounds = np.cumsum([0, *sizes])
    for key, a, b in zip(listings, bounds[:-1], bounds[1:], strict=True):
        results[key] = {
            v: EmbedResult(r.status[a:b], r.detail[a:b], r.embedding[a:b]) for v, r in out.items()
        }
    return results


def _merge(
    reused: EmbedResult | None, found: np.ndarray, fresh: EmbedResult | None, need: np.ndarray
) -> EmbedResult:
    """One dataset's rows of one variant: `reused` where `found`, else `fresh`, which holds the rows
    of `need` (a superset of ~found) in order."""
    if reused is None or not found.any():
        assert fresh is not None and need.all()  # nothing reused: every row went through `embed`
        return fresh
    if fresh is None:
        return reused
    take = ~found
    at = (np.cumsum(need) - 1)[take]
    status, detail, emb = reused.status.astype(object), reused.detail.astype(object), reused.embedding.copy()
    status[take], detail[take], emb[take] = fresh.status[at], fresh.detail[at], fresh.embedding[at]
    return EmbedResult(status.astype(str), detail.astype(str), emb)


@dataclass(frozen=True)
class Todo:
    """A dataset listing missing the cache entries of `variants` ({variant: (base, key)})."""

    listing: Listing
    variants: dict[str, tuple[str, str]]


def _checkpointed_pass(
    work: dict[str, Listing], variants: Sequence[str], embed: Embed, checkpoints: PassCheckpoints
) -> dict[str, dict[str, EmbedResult]]:
    """`_embed_listings` with its finished rows kept by `checkpoints` as it goes and, when the pass
    fails, once more before the error goes on: the resubmission takes them back."""
    try:
        return _embed_listings(work, variants, embed, checkpoints.observe)
    except BaseException:
        checkpoints.flush()
        raise


def embed_with_cache(
    todo: dict[str, Todo], cache: ImageEmbeddingCache, embed: Embed, checkpoint_s: float
) -> tuple[dict[str, dict[str, EmbedResult]], dict[str, int]]:
    """Listings that missed exact cache entries of the same variants: each unchanged file's rows from
    earlier entries of each variant's base, the files missing in any variant through `embed` (all
    these variants, one decode) in one pass; each variant's rows stored under its key. The pass's
    finished rows are kept as partial entries every `checkpoint_s` seconds and when it fails
    (clip/image_checkpoint.py), and those are deleted once the complete entries are stored. Returns
    the results by listing and variant and, per listing, how many rows went through `embed`."""
    variants = list(next(iter(todo.values())).variants)
    reused, need, work = {}, {}, {}
    for ident, item in todo.items():
        li = item.listing
        reused[ident] = {v: cache.reusable(base, li.table) for v, (base, _) in item.variants.items()}
        need[ident] = ~np.logical_and.reduce([found for _, found in reused[ident].values()])
        work[ident] = dataclasses.replace(li, table=li.table.filter(pa.array(need[ident])))
    work = {ident: li for ident, li in work.items() if li.table.num_rows}
    fresh: dict[str, dict[str, EmbedResult]] = {}
    if work:
        listings = [PassListing(todo[i].listing.table, need[i], todo[i].variants, reused[i]) for i in work]
        checkpoints = PassCheckpoints(cache, listings, every_s=checkpoint_s)
        fresh = _checkpointed_pass(work, variants, embed, checkpoints)
        del checkpoints  # frees its copy of the pass's rows before the merge below
    results: dict[str, dict[str, EmbedResult]] = {}
    for ident, item in todo.items():
        results[ident] = {}
        for v, (base, key) in item.variants.items():
            old, found = reused[ident][v]
            result = _merge(old, found, fresh.get(ident, {}).get(v), need[ident])
            cache.put(base, key, item.listing.table, result)
            remove_partials(cache, base, key)
            results[ident][v] = result
    return results, {ident: li.table.num_rows for ident, li in work.items()}
