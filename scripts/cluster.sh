#!/usr/bin/env bash
# Starts, stops and inspects a local quorumkv cluster on 127.0.0.1.
#
#   scripts/cluster.sh start [N]      start nodes n1..nN (default 3) and wait until all answer
#   scripts/cluster.sh stop           stop every node (SIGTERM)
#   scripts/cluster.sh status         which nodes run, and the cluster as n1..nN see it
#   scripts/cluster.sh kill NODE      SIGKILL one node (e.g. n2)
#   scripts/cluster.sh restart NODE   start one node again (after kill or stop)
#
# Environment:
#   QUORUMKV_BASE_PORT  port of n1, the others follow (default 7101); `start` records it,
#                       later commands on the same QUORUMKV_HOME reuse it
#   QUORUMKV_HOME       where data, logs and pid files go (default .cluster in the repo)
#   QUORUMKV_NODE_ARGS  extra flags for every quorumkv-node
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${QUORUMKV_HOME:-$repo/.cluster}
if [ -z "${QUORUMKV_BASE_PORT:-}" ] && [ -f "$home/base_port" ] && [ "${1:-}" != start ]; then
  base_port=$(cat "$home/base_port")
else
  base_port=${QUORUMKV_BASE_PORT:-7101}
fi
bin=$repo/target/release
# How long `start` and `restart` wait for nodes to answer before giving up.
ready_timeout_secs=60

die() { echo "cluster.sh: $*" >&2; exit 1; }

port_of() { echo $((base_port + ${1#n} - 1)); }

size() {
  [ -f "$home/size" ] || die "no cluster in $home; run: scripts/cluster.sh start"
  cat "$home/size"
}

build() {
  # cargo only rebuilds what changed, so this is quick when the binaries are current. The
  # first build takes a few minutes; cargo's progress goes to standard error.
  local quiet=--quiet
  if [ ! -x "$bin/quorumkv-node" ] || [ ! -x "$bin/quorumkv" ]; then
    echo "building the release binaries (the first build takes a few minutes)..." >&2
    quiet=
  fi
  (cd "$repo" && cargo build --release $quiet -p quorumkv-node -p quorumkv-client) \
    || die "build failed"
}

# A process that exited but was not yet reaped (a zombie) still answers kill -0.
alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

running() {
  local pid_file=$home/$1.pid
  [ -f "$pid_file" ] && alive "$(cat "$pid_file")"
}

launch() {
  local node=$1 n=$2 peers=() i
  for ((i = 1; i <= n; i++)); do
    [ "n$i" = "$node" ] || peers+=(--peer "n$i=127.0.0.1:$(port_of "n$i")")
  done
  mkdir -p "$home/$node"
  # shellcheck disable=SC2086 # QUORUMKV_NODE_ARGS is a list of flags on purpose
  nohup "$bin/quorumkv-node" --node-id "$node" --listen "127.0.0.1:$(port_of "$node")" \
    --data-dir "$home/$node/data" "${peers[@]}" ${QUORUMKV_NODE_ARGS:-} \
    >>"$home/$node.log" 2>&1 &
  echo $! >"$home/$node.pid"
}

# Waits until NODE answers and sees every running member up.
wait_ready() {
  local node=$1 n=$2 deadline=$((SECONDS + ready_timeout_secs)) expected i
  expected=0
  for ((i = 1; i <= n; i++)); do running "n$i" && expected=$((expected + 1)); done
  while ((SECONDS < deadline)); do
    running "$node" || die "$node exited; see $home/$node.log"
    local up
    up=$("$bin/quorumkv" --nodes "127.0.0.1:$(port_of "$node")" status 2>/dev/null \
      | grep -cw up || true)
    [ "$up" -ge "$expected" ] && return 0
    sleep 0.2
  done
  die "$node did not see $expected nodes up within ${ready_timeout_secs}s; see $home/$node.log"
}

start() {
  local n=${1:-3} i
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "start: N must be a positive number"
  if [ -f "$home/size" ]; then
    for ((i = 1; i <= $(size); i++)); do
      running "n$i" && die "a cluster is already running in $home; stop it first"
    done
  fi
  build
  mkdir -p "$home"
  echo "$n" >"$home/size"
  echo "$base_port" >"$home/base_port"
  for ((i = 1; i <= n; i++)); do launch "n$i" "$n"; done
  for ((i = 1; i <= n; i++)); do wait_ready "n$i" "$n"; done
  echo "cluster of $n nodes up on 127.0.0.1:$base_port..$((base_port + n - 1)) (home $home)"
}

stop() {
  local n i pid
  n=$(size)
  for ((i = 1; i <= n; i++)); do
    if running "n$i"; then
      pid=$(cat "$home/n$i.pid")
      kill "$pid" 2>/dev/null || true
      # Give it a few seconds to exit cleanly before insisting.
      for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$home/n$i.pid"
  done
  echo "cluster stopped"
}

status() {
  local n i nodes=()
  n=$(size)
  for ((i = 1; i <= n; i++)); do
    if running "n$i"; then
      echo "n$i running (pid $(cat "$home/n$i.pid"), port $(port_of "n$i"))"
      nodes+=("127.0.0.1:$(port_of "n$i")")
    else
      echo "n$i stopped"
    fi
  done
  [ ${#nodes[@]} -gt 0 ] || return 0
  echo
  "$bin/quorumkv" --nodes "$(IFS=,; echo "${nodes[*]}")" status
}

check_node() {
  [[ ${1:-} =~ ^n[1-9][0-9]*$ ]] || die "expected a node name like n2"
  ((${1#n} <= $(size))) || die "$1 is not in this cluster of $(size)"
}

kill_node() {
  check_node "${1:-}"
  running "$1" || die "$1 is not running"
  kill -9 "$(cat "$home/$1.pid")"
  rm -f "$home/$1.pid"
  echo "$1 killed"
}

restart_node() {
  check_node "${1:-}"
  local n
  n=$(size)
  if running "$1"; then
    kill "$(cat "$home/$1.pid")"
    for _ in $(seq 50); do running "$1" || break; sleep 0.1; done
  fi
  build
  launch "$1" "$n"
  wait_ready "$1" "$n"
  echo "$1 restarted"
}

case ${1:-} in
  start) start "${2:-3}" ;;
  stop) stop ;;
  status) status ;;
  kill) kill_node "${2:-}" ;;
  restart) restart_node "${2:-}" ;;
  *) sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
