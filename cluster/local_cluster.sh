#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine, for tests and trials: a head that runs no tasks
# (`--num-cpus 0`) and WORKERS worker nodes, each its own `ray start` with its own temp dir, ports and
# custom resources (`node_<i>: 1`, `accelerator: 1`), all bound to 127.0.0.1, token auth on (Ray
# 2.60's default for `ray start`; clients use RAY_AUTH_MODE=token).
#
#   cluster/local_cluster.sh start DIR [WORKERS=2] [CPUS_PER_WORKER=2]
#   cluster/local_cluster.sh check DIR    # the live nodes: id, temp dir, CPUs, custom resources
#   cluster/local_cluster.sh stop DIR     # stops exactly these nodes, by their temp dirs
#   cluster/local_cluster.sh pids DIR NODE          # NODE's processes (head, w1, w2...): PID and name
#   cluster/local_cluster.sh kill-worker DIR I [SIG]  # kill worker I's raylet (default SIGKILL), by PID
#   cluster/local_cluster.sh add-worker DIR [CPUS]    # one more worker node, the next free w<i>
#
# kill-worker simulates the loss of a node: its raylet dies at once, its workers follow, and the
# GCS marks the node dead once its health checks fail; `stop` still clears what is left of it.
#
# DIR must be short (Ray's socket paths stay under 108 bytes), e.g. $(mktemp -d /tmp/nrc.XXXXXX).
# `start` writes DIR/cluster.env: GCS=127.0.0.1:PORT, DASHBOARD=http://127.0.0.1:PORT, CPUS_PER_WORKER.
# `stop` never runs `ray stop`, which would stop every Ray on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ray_bin=${RAY_BIN:-.venv/bin/ray}
python_bin=${PYTHON_BIN:-.venv/bin/python}
usage="usage: cluster/local_cluster.sh start|check|stop|pids|kill-worker|add-worker DIR [ARGS] (see the header)"
cmd=${1:?$usage}
dir=${2:?$usage}
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
# token file, created by `start` when there is none, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH when set).
export RAY_AUTH_MODE=token

# PID and program name of each process of node NODE (head, w1, ...): those with DIR/NODE, followed by
# "/" or the end of an argument, in their command lines (as stop_local.sh matches them).
node_pids() {
  local node=$dir/$1 pid args exe
  while read -r pid args; do
    case " $args " in
      *"$node/"* | *"$node "*)
        exe=${args%% *}
        echo "$pid ${exe##*/}"
        ;;
    esac
  done < <(ps -ww -u "$(id -u)" -o pid=,args=)
}

start_worker() { # I CPUS GCS_ADDRESS
  # shellcheck disable=SC2046  # node_ports prints options to split
  "$ray_bin" start --address "$3" --node-ip-address 127.0.0.1 --num-cpus "$2" \
    --num-gpus 0 --resources "{\"node_$1\": 1, \"accelerator\": 1}" --temp-dir "$dir/w$1" \
    $(node_ports) --disable-usage-stats >/dev/null
}

case $cmd in
  start)
    workers=${3:-2}
    cpus=${4:-2}
    mkdir -p "$dir"
    # With RAY_AUTH_MODE=token, `ray start --head` refuses to run without a token: make the default
    # token file on a machine that has none (a no-op when RAY_AUTH_TOKEN(_PATH) or the file exists).
    "$ray_bin" get-auth-token --generate >/dev/null
    read -r gcs dash client < <(free_ports 3)
    # shellcheck disable=SC2046  # node_ports prints options to split
    "$ray_bin" start --head --node-ip-address 127.0.0.1 --num-cpus 0 --num-gpus 0 \
      --temp-dir "$dir/head" --port "$gcs" --dashboard-host 127.0.0.1 --dashboard-port "$dash" \
      --ray-client-server-port "$client" $(node_ports) --disable-usage-stats >/dev/null
    for i in $(seq 1 "$workers"); do
      start_worker "$i" "$cpus" "127.0.0.1:$gcs"
    done
    printf 'GCS=127.0.0.1:%s\nDASHBOARD=http://127.0.0.1:%s\nCPUS_PER_WORKER=%s\n' "$gcs" "$dash" "$cpus" \
      >"$dir/cluster.env"
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
  pids)
    node_pids "${3:?usage: cluster/local_cluster.sh pids DIR NODE (head, w1, w2...)}"
    ;;
  add-worker)
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
    i=1
    while [[ -e $dir/w$i ]]; do i=$((i + 1)); done
    start_worker "$i" "${3:-${CPUS_PER_WORKER:-2}}" "$GCS"
    echo "w$i"
    ;;
  kill-worker)
    i=${3:?usage: cluster/local_cluster.sh kill-worker DIR I [SIGNAL]}
    raylets=$(node_pids "w$i" | awk '$2 == "raylet" {print $1}')
    if [[ $(wc -w <<<"$raylets") -ne 1 ]]; then
      echo "kill-worker: expected one raylet of worker $i under $dir/w$i, found: ${raylets:-none}" >&2
      exit 1
    fi
    kill "-${4:-KILL}" "$raylets"
    echo "$raylets"
    ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac
