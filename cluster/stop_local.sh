#!/usr/bin/env bash
# Stop the Ray processes started with `--temp-dir DIR` (`ray start --temp-dir DIR`, or
# `ray.init(_temp_dir=DIR)`), and only those, with their child processes (the job's driver among them):
# `ray stop` would stop every Ray on the machine. Usage: cluster/stop_local.sh DIR [GRACE_SECONDS]
# Ray puts DIR (its sockets, logs and session folder) in the command lines of the processes it starts;
# the rest are their children (workers, agents) or name the same node id (the Ray client server).
# Like `ray stop`, this sends SIGTERM to the raylet first, then to the rest, then to the gcs_server
# (together they wait for each other and exit late), each group given GRACE_SECONDS (default 5);
# whatever is left then gets SIGKILL. DIR itself stays (it holds the logs).
set -euo pipefail
dir=${1:?usage: cluster/stop_local.sh TEMP_DIR [GRACE_SECONDS]}
grace=${2:-5}
dir=${dir%/}
real=$(cd "$dir" 2>/dev/null && pwd -P || echo "$dir")

declare -A parent=() children=() name=() cmd=() nodes=()
targets=()
# -ww: the full command lines, whatever COLUMNS says.
snapshot=$(ps -ww -u "$(id -u)" -o pid=,ppid=,args=)
while read -r pid ppid args; do
  parent[$pid]=$ppid
  children[$ppid]+=" $pid"
  cmd[$pid]=$args
  exe=${args%% *}
  name[$pid]=${exe##*/}
  # DIR followed by "/" or the end of an argument, so /tmp/ray-a does not match /tmp/ray-ab.
  case " $args " in
    *"$dir/"* | *"$dir "* | *"$real/"* | *"$real "*)
      targets+=("$pid")
      read -ra words <<<"$args"
      for w in "${words[@]}"; do
        case $w in --node-id=* | --node_id=*) nodes[${w#*=}]=1 ;; esac
      done
      ;;
  esac
done <<<"$snapshot"
# The Ray client server names its node, not DIR, and outlives its parent `ray start`.
for pid in "${!cmd[@]}"; do
  for id in "${!nodes[@]}"; do
    case " ${cmd[$pid]} " in *" --node-id=$id "* | *" --node_id=$id "*) targets+=("$pid") ;; esac
  done
done

# Never this script, its subshells or whoever called it, even with DIR in their command lines.
declare -A keep=()
p=$$
while [[ -n $p && $p != 0 && -z ${keep[$p]:-} ]]; do
  keep[$p]=1
  p=${parent[$p]:-}
done
for c in ${children[$$]:-}; do keep[$c]=1; done

# The matches and all their descendants (e.g. the driver a job's supervisor started).
declare -A stop=()
queue=("${targets[@]}")
while ((${#queue[@]})); do
  p=${queue[0]}
  queue=("${queue[@]:1}")
  [[ -n ${keep[$p]:-} || -n ${stop[$p]:-} ]] && continue
  stop[$p]=1
  for c in ${children[$p]:-}; do queue+=("$c"); done
done
if ((${#stop[@]} == 0)); then
  echo "stop_local: no Ray process started from $dir"
  exit 0
fi

alive() { # a zombie has exited: only its parent can still reap it
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]
}

any_alive() {
  local p
  for p in "$@"; do alive "$p" && return 0; done
  return 1
}

term_and_wait() { # PID...: SIGTERM, then up to $grace seconds for them to exit
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while any_alive "$@" && ((SECONDS < deadline)); do sleep 0.2; done
}

raylets=() others=() gcs=()
for p in "${!stop[@]}"; do
  case ${name[$p]} in
    raylet) raylets+=("$p") ;;
    gcs_server) gcs+=("$p") ;;
    *) others+=("$p") ;;
  esac
done
term_and_wait "${raylets[@]}"
term_and_wait "${others[@]}"
term_and_wait "${gcs[@]}"
left=()
for p in "${!stop[@]}"; do alive "$p" && left+=("$p"); done
if ((${#left[@]})); then
  kill -KILL "${left[@]}" 2>/dev/null || true
fi
echo "stop_local: stopped ${#stop[@]} process(es) started from $dir${left[*]:+ (SIGKILL: ${left[*]})}"
