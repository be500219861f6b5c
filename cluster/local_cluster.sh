#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine, for tests and trials: a head that runs no tasks
# (`--num-cpus 0`) and WORKERS worker nodes, each its own `ray start` with its own temp dir, ports and
# custom resources (`node_<i>: 1`, `accelerator: 1`), all bound to 127.0.0.1, token auth on (Ray
# 2.60's default for `ray start`; clients use RAY_AUTH_MODE=token).
#
#   cluster/local_cluster.sh start DIR [WORKERS=2] [CPUS_PER_WORKER=2]
#   cluster/local_cluster.sh check DIR    # the live nodes: id, temp dir, CPUs, custom resources
#   cluster/local_cluster.sh stop DIR     # stops exactly these nodes, by their temp dirs
#
# DIR must be short (Ray's socket paths stay under 108 bytes), e.g. $(mktemp -d /tmp/nrc.XXXXXX).
# `start` writes DIR/cluster.env: GCS=127.0.0.1:PORT and DASHBOARD=http://127.0.0.1:PORT.
# `stop` never runs `ray stop`, which would stop every Ray on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ray_bin=${RAY_BIN:-.venv/bin/ray}
python_bin=${PYTHON_BIN:-.venv/bin/python}
cmd=${1:?usage: cluster/local_cluster.sh start|check|stop DIR [WORKERS] [CPUS_PER_WORKER]}
dir=${2:?usage: cluster/local_cluster.sh start|check|stop DIR [WORKERS] [CPUS_PER_WORKER]}
dir=${dir%/}

free_ports() {
  "$python_bin" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))' "$1"
}

# Ports every node needs of its own (ray start picks some at random, which can collide on one host).
node_ports() {
  read -r manager store agent agent_grpc env_agent metrics < <(free_ports 6)
  echo --node-manager-port "$manager" --object-manager-port "$store" \
    --dashboard-agent-listen-port "$agent" --dashboard-agent-grpc-port "$agent_grpc" \
    --runtime-env-agent-port "$env_agent" --metrics-export-port "$metrics"
}

# Token authentication on every node and client: the workers join with the head's token (the default
# token file the head created, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH when set).
export RAY_AUTH_MODE=token

case $cmd in
  start)
    workers=${3:-2}
    cpus=${4:-2}
    mkdir -p "$dir"
    read -r gcs dash client < <(free_ports 3)
    # shellcheck disable=SC2046  # node_ports prints options to split
    "$ray_bin" start --head --node-ip-address 127.0.0.1 --num-cpus 0 --num-gpus 0 \
      --temp-dir "$dir/head" --port "$gcs" --dashboard-host 127.0.0.1 --dashboard-port "$dash" \
      --ray-client-server-port "$client" $(node_ports) --disable-usage-stats >/dev/null
    for i in $(seq 1 "$workers"); do
      # shellcheck disable=SC2046
      "$ray_bin" start --address "127.0.0.1:$gcs" --node-ip-address 127.0.0.1 --num-cpus "$cpus" \
        --num-gpus 0 --resources "{\"node_$i\": 1, \"accelerator\": 1}" --temp-dir "$dir/w$i" \
        $(node_ports) --disable-usage-stats >/dev/null
    done
    printf 'GCS=127.0.0.1:%s\nDASHBOARD=http://127.0.0.1:%s\n' "$gcs" "$dash" >"$dir/cluster.env"
    echo "local cluster: head + $workers workers, GCS 127.0.0.1:$gcs, dashboard http://127.0.0.1:$dash"
    ;;
  check)
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
    "$python_bin" -c '
import ray, sys
ray.init(address=sys.argv[1], logging_level="ERROR")
for n in sorted(ray.nodes(), key=lambda n: n["NodeManagerAddress"] + n["NodeID"]):
    if n["Alive"]:
        custom = {k: v for k, v in n["Resources"].items() if k.startswith(("node_", "accelerator"))}
        print(n["NodeID"], n.get("ObjectStoreSocketName", "").split("/sockets/")[0], n["Resources"].get("CPU", 0), custom)
' "$GCS"
    ;;
  stop)
    # workers first, so the head does not wait for them to time out
    for node in "$dir"/w* "$dir/head"; do
      [[ -d $node ]] && bash cluster/stop_local.sh "$node" >/dev/null
    done
    echo "local cluster in $dir stopped"
    ;;
  *)
    echo "usage: cluster/local_cluster.sh start|check|stop DIR [WORKERS] [CPUS_PER_WORKER]" >&2
    exit 2
    ;;
esac
