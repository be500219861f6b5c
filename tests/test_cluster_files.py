"""The cluster files parse, pin the Ray version the package requires, and name entry points that exist."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def test_every_yaml_parses() -> None:
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        assert yaml.safe_load(path.read_text()), path


def _kuberay() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each KubeRay manifest's RayCluster spec and the pod specs of its submitter (RayJob only)."""
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())["spec"]
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster"
    return {
        "rayjob": (job["rayClusterSpec"], [job["submitterPodTemplate"]["spec"]]),
        "raycluster": (cluster["spec"], []),
    }


def test_kuberay_pins_the_installed_ray_and_a_real_job() -> None:
    spec = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())["spec"]
    module, job = re.match(r"python -m (\S+) run (\S+)", spec["entrypoint"]).groups()  # type: ignore[union-attr]
    assert importlib.util.find_spec(module) is not None
    assert (REPO / job).is_file()
    for cluster, _ in _kuberay().values():
        assert cluster["rayVersion"] == ray.__version__
        head = cluster["headGroupSpec"]["rayStartParams"]
        assert head["num-cpus"] == "0"  # the head runs no work
        assert all(isinstance(v, str) for v in head.values())  # KubeRay wants strings
        [gpu] = cluster["workerGroupSpecs"]
        assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1


def test_kuberay_keeps_token_auth_and_shared_storage_on_every_pod() -> None:
    """Every Ray container and the submitter read the token from the Secret (never a literal); the
    head and every worker mount the shared claim, where the job writes its run folder and caches and
    the model downloads go."""
    claim = yaml.safe_load((CLUSTER / "kuberay" / "shared-pvc.yaml").read_text())
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, (cluster, submitters) in _kuberay().items():
        pods = [cluster["headGroupSpec"]["template"]["spec"]]
        pods += [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
        for pod in [*pods, *submitters]:
            for container in pod["containers"]:
                env = {e["name"]: e for e in container["env"]}
                assert env["RAY_AUTH_MODE"]["value"] == "token", name
                assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "negrefine-ray-token"
                assert "value" not in env["RAY_AUTH_TOKEN"]
        for pod in pods:
            [volume] = pod["volumes"]
            assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            [container] = pod["containers"]
            assert {"name": volume["name"], "mountPath": "/shared"} in container["volumeMounts"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["HF_HOME"].startswith("/shared/") and env["XDG_CACHE_HOME"].startswith("/shared/")
    entrypoint = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())["spec"]["entrypoint"]
    for key in ("run.output_dir=/shared/", "run.cache_dir=/shared/"):
        assert key in entrypoint


def test_launcher_has_gpu_workers_token_auth_and_a_loopback_dashboard() -> None:
    config = yaml.safe_load((CLUSTER / "launcher" / "aws.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in types.values())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head and "--num-cpus=0" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert config["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/negrefine-ray-token"}


def test_dockerfile_and_submit_script_agree_with_the_package() -> None:
    assert f"rayproject/ray:{ray.__version__}" in (CLUSTER / "Dockerfile").read_text()
    assert "python -m negrefine_ray run" in (CLUSTER / "submit.sh").read_text()


# --- the shell scripts, with stub commands on PATH --------------------------------------------


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{shutil.which('bash')}\n{body}\n")
    path.chmod(0o755)


def _bin_with(tmp: Path, **stubs: str) -> Path:
    """A PATH folder holding only what the scripts use besides bash builtins, plus `stubs`: no
    nvidia-smi unless given, and a `ray` that prints its arguments instead of starting anything."""
    folder = tmp / "bin"
    folder.mkdir()
    for tool in ("grep", "dirname"):
        (folder / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    _stub(folder, "ray", 'echo "ray $*"')
    for name, body in stubs.items():
        _stub(folder, name.replace("_", "-"), body)
    return folder


def _run_script(script: str, path: Path, *args: str) -> str:
    bash = shutil.which("bash")
    assert bash is not None
    proc = subprocess.run(
        [bash, str(CLUSTER / script), *args],
        env={"PATH": str(path), "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.strip()


@pytest.mark.parametrize(
    ("nvidia_smi", "gpus"),
    [
        (None, "0"),  # no nvidia-smi on PATH (the script used to pass '0\n0')
        ("exit 9", "0"),  # nvidia-smi present, no driver
        ('echo "GPU 0: NVIDIA H200 (UUID: a)"; echo "GPU 1: NVIDIA H200 (UUID: b)"', "2"),
    ],
)
def test_local_start_passes_one_gpu_count(tmp_path: Path, nvidia_smi: str | None, gpus: str) -> None:
    stubs = {} if nvidia_smi is None else {"nvidia_smi": nvidia_smi}
    line = _run_script("local_start.sh", _bin_with(tmp_path, **stubs), "--temp-dir", "/tmp/x")
    assert line == f"ray start --head --num-gpus={gpus} --dashboard-host=127.0.0.1 --temp-dir /tmp/x"


def test_submit_reserves_no_cpu_for_the_driver(tmp_path: Path) -> None:
    line = _run_script("submit.sh", _bin_with(tmp_path), "jobs/smoke.toml", "--set", "run.seed=1")
    assert line == (
        "ray job submit --runtime-env cluster/runtime_env.yaml --entrypoint-num-cpus 0 "
        "-- python -m negrefine_ray run jobs/smoke.toml --set run.seed=1"
    )


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _head_pids(folder: str) -> set[int]:
    """Live processes of this user that belong to the head started with --temp-dir `folder`: those
    naming the folder, those naming their node id (the Ray client server), and their descendants."""
    out = subprocess.run(
        ["ps", "-ww", "-u", str(os.getuid()), "-o", "pid=,ppid=,args="],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    procs = [line.split(maxsplit=2) for line in out.splitlines()]
    args = {int(p[0]): p[2] if len(p) > 2 else "" for p in procs}
    named = {pid for pid, a in args.items() if f"{folder}/" in a or a.endswith(folder)}
    nodes = {m for pid in named for m in re.findall(r"--node[-_]id=([0-9a-f]+)", args[pid])}
    found = named | {pid for pid, a in args.items() if any(f"={n}" in a for n in nodes)}
    while more := {int(p[0]) for p in procs if int(p[1]) in found} - found:
        found |= more
    return {pid for pid in found if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.ray
@pytest.mark.cluster
def test_stop_local_stops_its_head_only(ray_session: None) -> None:
    """A `ray start` head with its own temp dir is stopped by PID; the session's Ray keeps working."""
    ray_bin = Path(sys.executable).with_name("ray")
    folder = tempfile.mkdtemp(prefix="nr-stop-", dir="/tmp")  # short: Ray's socket paths are limited
    gcs, dash, agent, agent_grpc, env_agent, client, metrics = _free_ports(7)
    try:
        subprocess.run(
            [
                str(ray_bin), "start", "--head", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={folder}",
                f"--port={gcs}", "--include-dashboard=false", f"--dashboard-port={dash}",
                f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
                f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
                "--disable-usage-stats",
            ],
            capture_output=True, check=True, timeout=180,
        )  # fmt: skip
        started = _head_pids(folder)
        assert len(started) >= 2  # gcs_server, raylet, agents, workers, the client server
        stop = subprocess.run(
            ["bash", str(CLUSTER / "stop_local.sh"), folder], capture_output=True, text=True, timeout=60
        )
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.startswith("stop_local: stopped ")
    finally:
        subprocess.run(["bash", str(CLUSTER / "stop_local.sh"), folder, "1"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
    assert not any(_alive(pid) for pid in started)

    import ray

    @ray.remote(num_cpus=0)
    def ping() -> str:
        return "pong"

    assert ray.get(ping.remote(), timeout=60) == "pong"  # the session's own Ray survived
