"""The cluster files parse, pin the Ray version the package requires, and name entry points that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def test_every_yaml_parses() -> None:
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        assert yaml.safe_load(path.read_text()), path


def test_kuberay_pins_the_installed_ray_and_a_real_job() -> None:
    spec = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())["spec"]
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    module, job = re.fullmatch(r"python -m (\S+) run (\S+)", spec["entrypoint"]).groups()  # type: ignore[union-attr]
    assert importlib.util.find_spec(module) is not None
    assert (REPO / job).is_file()
    head = spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert all(isinstance(v, str) for v in head.values())  # KubeRay wants strings


def test_dockerfile_and_submit_script_agree_with_the_package() -> None:
    assert f"rayproject/ray:{ray.__version__}" in (CLUSTER / "Dockerfile").read_text()
    assert "python -m negrefine_ray run" in (CLUSTER / "submit.sh").read_text()
