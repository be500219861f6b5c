"""The one actor-pool helper: the sizing rule on hand-built cluster numbers, the map_batches arguments
it derives, the row reassembly that refuses lost, duplicated and foreign rows, and the actors' column
checks that name what is missing and what arrived. No Ray session: these run in milliseconds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from negrefine_ray.clip.image import ImageEmbedder, image_pool_spec
from negrefine_ray.clip.text import TextEmbedder
from negrefine_ray.clip.text_service import text_pool_spec
from negrefine_ray.config import ImagesConfig, JobConfig, ModelConfig, TextConfig
from negrefine_ray.distributed.pools import (
    ROW,
    ActorPool,
    PoolPlan,
    PoolSpec,
    plan_pool,
    reassemble,
    require_columns,
)
from negrefine_ray.distributed.resources import PoolRequest
from negrefine_ray.errors import StageError

TEXT = PoolSpec("text embedding", 0, 1.0, "auto", count_key="text.num_actors", gpus_key="text.gpus_per_actor")


def test_automatic_count_is_one_actor_per_gpu_share() -> None:
    plan = plan_pool(TEXT, 4)
    want = PoolRequest("text embedding", 4, 1.0, 1.0, 0.0, "text.num_actors")
    assert plan.device == "cuda" and plan.pool == want
    quarter = plan_pool(PoolSpec("p", 0, 0.25), 3)
    assert (quarter.pool.actors, quarter.describe()) == (12, "12 actors x 0.25 GPU")
    assert plan_pool(PoolSpec("p", 0, 0.1), 0.7).pool.actors == 7  # 0.7 / 0.1 is 6.9999...: not cut to 6
    tensor_parallel = PoolSpec("judge 'q'", 0, 2.0)  # a judge: one engine per tensor-parallel group
    assert plan_pool(tensor_parallel, 5).pool.actors == 2 and plan_pool(tensor_parallel, 1).pool.actors == 1


def test_configured_count_is_kept_and_marked_fixed() -> None:
    spec = PoolSpec("p", 3, 1.0, count_key="x.num_actors")
    gpu, cpu = plan_pool(spec, 8), plan_pool(spec, 0)
    assert (gpu.device, gpu.pool.actors, gpu.pool.count_fixed) == ("cuda", 3, True)
    assert (cpu.device, cpu.pool.actors, cpu.pool.actor_gpus, cpu.pool.count_fixed) == ("cpu", 3, 0.0, True)
    assert not plan_pool(TEXT, 2).pool.count_fixed


def test_cpu_actors_when_the_cluster_or_the_settings_give_no_gpu() -> None:
    for spec, gpus in [(TEXT, 0), (PoolSpec("p", 0, 1.0, "cpu"), 8), (PoolSpec("p", 0, 0.0), 8)]:
        plan = plan_pool(spec, gpus)
        assert (plan.device, plan.pool.actors, plan.pool.actor_gpus) == ("cpu", 1, 0.0)
        assert plan.describe() == "1 actor x CPU"


def test_gpu_and_cpu_actors_take_their_own_cpu_shares_beside_tasks() -> None:
    images = image_pool_spec(ImagesConfig(), ModelConfig(device="auto"))
    gpu, cpu = plan_pool(images, 2).pool, plan_pool(images, 0).pool
    assert (gpu.actors, gpu.actor_cpus, gpu.actor_gpus, gpu.task_cpus) == (2, 1.0, 1.0, 1.0)
    assert (cpu.actors, cpu.actor_cpus, cpu.task_cpus) == (1, 0.5, 1.0)
    assert gpu.count_key == "images.num_actors" and gpu.stage == "embed-images"


def test_cuda_without_gpu_actors_is_refused_with_the_settings() -> None:
    with pytest.raises(
        StageError, match=r"text embedding: model.device = 'cuda' but the Ray cluster has 0 GPUs"
    ):
        plan_pool(PoolSpec("text embedding", 0, 1.0, "cuda", gpus_key="text.gpus_per_actor"), 0)
    with pytest.raises(StageError, match=r"text.gpus_per_actor = 0 gives its actors no GPU"):
        plan_pool(PoolSpec("text embedding", 0, 0.0, "cuda", gpus_key="text.gpus_per_actor"), 4)


def test_text_pool_follows_model_device() -> None:
    job = JobConfig(model=ModelConfig(device="cpu"), text=TextConfig(num_actors=2))
    spec = text_pool_spec(job)
    assert (spec.device, spec.count, spec.gpus_per_actor) == ("cpu", 2, 1.0)
    assert plan_pool(spec, 4).device == "cpu"  # as the image pool: model.device = "cpu" keeps CLIP on CPU


def test_map_batches_arguments_come_from_the_plan() -> None:
    pytest.importorskip("ray")
    plan = PoolPlan("cuda", PoolRequest("p", 3, 0.5, 0.25))
    kwargs = ActorPool(ImageEmbedder, {"device": "cuda"}, plan, 64).map_batches_kwargs()
    assert kwargs["compute"].min_size == kwargs["compute"].max_size == 3
    assert (kwargs["num_cpus"], kwargs["num_gpus"], kwargs["batch_size"]) == (0.5, 0.25, 64)
    assert kwargs["fn_constructor_kwargs"] == {"device": "cuda"} and kwargs["batch_format"] == "numpy"
    # only map_batches' named parameters (Ray 2.60 deprecates the **ray_remote_args catch-all), so
    # the actors spread over the nodes by Ray Data's default strategy for them
    import inspect

    import ray.data

    named = set(inspect.signature(ray.data.Dataset.map_batches).parameters) - {"ray_remote_args"}
    assert set(kwargs) <= named, sorted(set(kwargs) - named)
    assert ray.data.DataContext.get_current().scheduling_strategy == "SPREAD"


def batch(rows: list[int], dim: int = 2) -> dict[str, Any]:
    return {
        ROW: np.array(rows),
        "embedding": np.array([[r] * dim for r in rows], dtype=np.float32),
        "status": np.array(["ok" if r % 2 else "corrupt-file" for r in rows]),
    }


def test_reassembly_puts_rows_back_in_place() -> None:
    out = reassemble([batch([3, 0]), batch([2]), batch([1])], 4, ["embedding", "status"], stage="s")
    np.testing.assert_array_equal(out["embedding"], [[0, 0], [1, 1], [2, 2], [3, 3]])
    assert out["embedding"].dtype == np.float32
    # strings of every width survive, whatever width the first batch had
    assert out["status"].astype(str).tolist() == ["corrupt-file", "ok", "corrupt-file", "ok"]


def test_reassembly_refuses_lost_duplicated_and_foreign_rows() -> None:
    with pytest.raises(StageError, match=r"embed-images got 4 rows back with 1 lost and 0 duplicated"):
        reassemble([batch([0, 1]), batch([3])], 4, ["embedding"], stage="embed-images")
    with pytest.raises(StageError, match=r"got 3 rows back with 0 lost and 1 duplicated"):
        reassemble([batch([0, 1]), batch([1, 2])], 3, ["embedding"], stage="s")
    with pytest.raises(StageError, match=r"got 2 rows back with 1 lost and 1 duplicated"):
        reassemble([batch([0]), batch([0])], 2, ["embedding"], stage="s")
    with pytest.raises(StageError, match=r"got back row index 5; it sent rows 0 to 2"):
        reassemble([batch([0, 5])], 3, ["embedding"], stage="s")
    with pytest.raises(StageError, match=r"got 2 rows back with 2 lost"):
        reassemble([], 2, ["embedding"], stage="s")


def test_column_checks_name_the_missing_columns_and_what_arrived() -> None:
    with pytest.raises(StageError, match=r"s's row reassembly needs columns row, embedding; row missing"):
        reassemble([{"embedding": np.zeros((1, 2))}], 1, ["embedding"], stage="s")
    with pytest.raises(StageError) as err:
        require_columns({"qid": 1, "kind": 2}, ("qid", "kind", "label", "rank"), "JudgeActor")
    assert str(err.value) == (
        "JudgeActor needs columns qid, kind, label, rank; label, rank missing from a batch with columns "
        "['kind', 'qid']."
    )
    # the actors check before touching their model, so no model is loaded here
    with pytest.raises(
        StageError, match=r"TextEmbedder needs columns text; text missing .* \['row', 'txt'\]"
    ):
        TextEmbedder.__new__(TextEmbedder)({"row": np.arange(2), "txt": np.array(["a", "b"])})
    embedder = ImageEmbedder.__new__(ImageEmbedder)
    embedder.specs = {"clip": None}  # type: ignore[dict-item]  # the names are all the check reads
    with pytest.raises(StageError, match=r"ImageEmbedder needs columns status, pixels@clip; status missing"):
        embedder({"pixels@clip": np.zeros((1, 2, 2, 3), np.uint8)})
