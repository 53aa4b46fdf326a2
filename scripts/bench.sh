#!/usr/bin/env bash
# Measures quorumkv beside Redis, replicated Redis, etcd and the loopback floor, in one run
# on this machine, with the same load generator (`quorumkv bench`) and the same settings.
#
#   scripts/bench.sh [--quick] [--json FILE] [--rounds N] [--secs S] [--concurrency N]
#
#   --quick          3 rounds of 1.5 s per measurement: the whole run takes under 2 minutes
#   --json FILE      also write the table as a JSON array of row objects
#   --rounds N       rounds (default 5, at least 3)
#   --secs S         seconds per measurement (default 5)
#   --concurrency N  client tasks of every measurement (default 50)
#
# What runs, all on 127.0.0.1 (every process is stopped on exit):
#   echo              the in-process floor: a server that answers each request at once
#   redis             one redis-server, no persistence: SET and GET
#   redis-replicated  a primary and two replicas; each SET is followed by WAIT 1 0
#   quorumkv          two 3-node clusters (N = 3), one at --sync never, one at --sync always;
#                     writes at one, quorum, all; reads at one, quorum
#   etcd              a 3-member cluster (Debian's etcd-server): puts, serializable gets
#
# Machines here drift 2-3x in speed within minutes, so one measurement of each system is
# taken per round, the systems one after another (A B C ... A B C ...), in short rounds.
# Each ratio is computed within a round, between measurements taken seconds apart, and the
# table shows the median over rounds of each figure and of each ratio. The CPU steal of
# each round (from /proc/stat) is printed, so a noisy round can be recognised.
#
# Writes are blind writes to keys drawn uniformly from a million, under a prefix of their
# own in each measurement, so nearly every write creates a key on every system. (A blind
# quorumkv put adds a sibling beside what the key holds; rewriting the same keys round
# after round would make quorumkv's values, and its writes, grow from round to round.)
# Reads are YCSB's workload c: zipfian over 10,000 records loaded before the first round.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$repo/target/release
work=$repo/target/bench-run

rounds=5
secs=5
concurrency=50
json_out=
value_bytes=100
read_records=10000
write_records=1000000

# Ports well away from cluster.sh's default 7101, so a developer's cluster keeps running.
redis_port=16379
redis_primary_port=16380
qkv_never_port=17101
qkv_always_port=17201
etcd_client_port=17301
etcd_peer_port=17311
# How long a service may take to answer after it is started.
ready_timeout_secs=60

die() { echo "bench.sh: $*" >&2; exit 1; }
say() { echo "bench.sh: $*" >&2; }

while [ $# -gt 0 ]; do
  case $1 in
    --quick) rounds=3; secs=1.5 ;;
    --json) json_out=${2:?--json needs a file}; shift ;;
    --rounds) rounds=${2:?}; shift ;;
    --secs) secs=${2:?}; shift ;;
    --concurrency) concurrency=${2:?}; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[ "$rounds" -ge 3 ] || die "--rounds must be at least 3 (medians of fewer say little)"
case $json_out in /*|'') ;; *) json_out=$PWD/$json_out ;; esac

# --- what the run needs -------------------------------------------------------------------

install_missing() {
  local missing=() pair command package
  for pair in "$@"; do
    command=${pair%%:*} package=${pair#*:}
    command -v "$command" >/dev/null || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
    >/dev/null || die "could not install ${missing[*]}"
}

install_missing redis-server:redis-server redis-cli:redis-tools etcd:etcd-server python3:python3
(cd "$repo" && cargo build --release --quiet -p quorumkv-node -p quorumkv-client) \
  || die "build failed"

rm -rf "$work"
mkdir -p "$work/pids" "$work/results"

# --- starting and stopping everything -----------------------------------------------------

stop_all() {
  local pid_file home
  for home in "$work/qkv-never" "$work/qkv-always"; do
    [ -f "$home/size" ] && QUORUMKV_HOME=$home "$repo/scripts/cluster.sh" stop >/dev/null 2>&1
  done
  local pids=()
  for pid_file in "$work"/pids/*.pid; do
    [ -f "$pid_file" ] || continue
    pids+=("$(cat "$pid_file")")
    kill "${pids[-1]}" 2>/dev/null
    rm -f "$pid_file"
  done
  # Wait until they are gone (at most 10 s), so that a run started right after this one
  # finds its ports free.
  local deadline=$((SECONDS + 10)) pid
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  done
  return 0
}
trap stop_all EXIT

# Starts a background process, logging to $work/NAME.log, remembering its pid.
spawn() {
  local name=$1
  shift
  nohup "$@" >"$work/$name.log" 2>&1 &
  echo $! >"$work/pids/$name.pid"
}

wait_for() {
  local what=$1 deadline=$((SECONDS + ready_timeout_secs))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what did not come up; see $work/*.log"
    sleep 0.2
  done
}

start_redis() {
  local name=$1 port=$2
  shift 2
  mkdir -p "$work/$name"
  spawn "$name" redis-server --bind 127.0.0.1 --port "$port" --dir "$work/$name" \
    --save '' --appendonly no "$@"
  wait_for "$name" redis-cli -p "$port" ping
}

replicas_online() {
  [ "$(redis-cli -p "$redis_primary_port" info replication | grep -c 'state=online')" -eq 2 ]
}

start_quorumkv() {
  local name=$1 port=$2 sync=$3
  QUORUMKV_HOME=$work/$name QUORUMKV_BASE_PORT=$port QUORUMKV_NODE_ARGS="--sync $sync" \
    "$repo/scripts/cluster.sh" start 3 >/dev/null
}

start_etcd() {
  local i cluster=
  for i in 1 2 3; do
    cluster+=${cluster:+,}e$i=http://127.0.0.1:$((etcd_peer_port + i - 1))
  done
  for i in 1 2 3; do
    local client=http://127.0.0.1:$((etcd_client_port + i - 1))
    local peer=http://127.0.0.1:$((etcd_peer_port + i - 1))
    spawn "etcd$i" etcd --name "e$i" --data-dir "$work/etcd$i" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$cluster" --initial-cluster-token bench --initial-cluster-state new
  done
  for i in 1 2 3; do
    wait_for "etcd member $i" etcd_healthy $((etcd_client_port + i - 1))
  done
}

etcd_healthy() {
  python3 -c 'import json, sys, urllib.request
reply = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1)
sys.exit(0 if json.load(reply).get("health") == "true" else 1)' "$1"
}

nodes() { echo "127.0.0.1:$1,127.0.0.1:$(($1 + 1)),127.0.0.1:$(($1 + 2))"; }

say "starting redis, replicated redis, two quorumkv clusters and etcd"
start_redis redis "$redis_port"
start_redis redis-primary "$redis_primary_port"
start_redis redis-replica1 $((redis_primary_port + 1)) --replicaof 127.0.0.1 "$redis_primary_port"
start_redis redis-replica2 $((redis_primary_port + 2)) --replicaof 127.0.0.1 "$redis_primary_port"
wait_for "redis replication" replicas_online
start_quorumkv qkv-never "$qkv_never_port" never
start_quorumkv qkv-always "$qkv_always_port" always
start_etcd

qkv_never="--nodes $(nodes $qkv_never_port)"
qkv_always="--nodes $(nodes $qkv_always_port)"
redis="--target redis://127.0.0.1:$redis_port"
redis_replicated="--target redis://127.0.0.1:$redis_primary_port --redis-wait 1"
etcd="--target etcd://127.0.0.1:$etcd_client_port"

# --- the measurements ---------------------------------------------------------------------

# One line per measurement: id, system, op, consistency, sync, then `quorumkv bench` flags.
measurements=$(cat <<EOF
echo-w|echo|write|-|-|--target echo
echo-r|echo|read|-|-|--target echo
redis-w|redis|write|-|-|$redis
redis-r|redis|read|-|-|$redis
redisrep-w|redis-replicated|write|wait 1|-|$redis_replicated
qn-w1|quorumkv|write|one|never|$qkv_never --write-consistency one
qn-wq|quorumkv|write|quorum|never|$qkv_never --write-consistency quorum
qn-wa|quorumkv|write|all|never|$qkv_never --write-consistency all
qn-r1|quorumkv|read|one|never|$qkv_never --read-consistency one
qn-rq|quorumkv|read|quorum|never|$qkv_never --read-consistency quorum
qa-w1|quorumkv|write|one|always|$qkv_always --write-consistency one
qa-wq|quorumkv|write|quorum|always|$qkv_always --write-consistency quorum
qa-wa|quorumkv|write|all|always|$qkv_always --write-consistency all
qa-r1|quorumkv|read|one|always|$qkv_always --read-consistency one
qa-rq|quorumkv|read|quorum|always|$qkv_always --read-consistency quorum
etcd-w|etcd|write|-|-|$etcd
etcd-r|etcd|read|serializable|-|$etcd --read-consistency one
EOF
)

common="--concurrency $concurrency --value-bytes $value_bytes"

say "loading $read_records records into each store that is read"
for target in "$redis" "$qkv_never" "$qkv_always" "$etcd"; do
  # shellcheck disable=SC2086 # the target is a list of flags on purpose
  "$bin/quorumkv" bench $target $common --workload load --records "$read_records" --json \
    >/dev/null || die "loading failed: quorumkv bench $target --workload load"
done

# user nice system idle iowait irq softirq steal: prints "steal total" in clock ticks.
cpu_ticks() { awk '/^cpu /{ print $9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }

run_one() {
  local round=$1 id=$2 op=$3 flags=$4 workload
  if [ "$op" = write ]; then
    workload="--workload w --distribution uniform --records $write_records"
    workload+=" --key-prefix r$round-$id-"
  else
    workload="--workload c --distribution zipfian --records $read_records"
  fi
  # shellcheck disable=SC2086 # flags are lists on purpose
  "$bin/quorumkv" bench $flags $common $workload --duration "$secs" --json \
    >"$work/results/$round.$id.json" 2>"$work/results/$round.$id.err" \
    || say "round $round $id: errors, see $work/results/$round.$id.*"
}

count=$(echo "$measurements" | wc -l)
say "$rounds rounds of $count measurements, ${secs}s each, $concurrency client tasks"
for ((round = 1; round <= rounds; round++)); do
  read -r steal_before total_before < <(cpu_ticks)
  while IFS='|' read -r id _system op _consistency _sync flags; do
    run_one "$round" "$id" "$op" "$flags"
  done <<<"$measurements"
  read -r steal_after total_after < <(cpu_ticks)
  echo "$((steal_after - steal_before)) $((total_after - total_before))" \
    >"$work/results/$round.steal"
  say "round $round of $rounds done"
done

# --- the table ----------------------------------------------------------------------------

echo "$measurements" >"$work/measurements"
python3 - "$work/results" "$rounds" "$json_out" "$work/measurements" <<'EOF'
import json, statistics, sys

results, rounds, json_out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(sys.argv[4]) as f:
    rows = [line.split("|")[:5] for line in f.read().splitlines()]
# Writes compare with replicated Redis (a write acknowledged by a second copy), reads with
# one Redis; each with the echo floor of the same operation.
redis_of = {"write": "redisrep-w", "read": "redis-r"}
echo_of = {"write": "echo-w", "read": "echo-r"}

def figures(round_, id_, op):
    try:
        with open(f"{results}/{round_}.{id_}.json") as f:
            side = json.load(f)[op]
        return (side["ops_per_sec"], side["p50_us"], side["p99_us"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

def median_figure(id_, op, k):
    values = [f[k] for r in range(1, rounds + 1) if (f := figures(r, id_, op))]
    return statistics.median(values) if values else None

def median_ratio(id_, base, op, k):
    ratios = []
    for r in range(1, rounds + 1):
        mine, theirs = figures(r, id_, op), figures(r, base, op)
        if mine and theirs and theirs[k]:
            ratios.append(mine[k] / theirs[k])
    return statistics.median(ratios) if ratios else None

table = []
for id_, system, op, consistency, sync in rows:
    row = {"system": system, "op": op, "consistency": consistency, "sync": sync}
    for k, name in enumerate(["ops_per_sec", "p50_us", "p99_us"]):
        row[name] = median_figure(id_, op, k)
        row[name + "_vs_redis"] = median_ratio(id_, redis_of[op], op, k)
        row[name + "_vs_echo"] = median_ratio(id_, echo_of[op], op, k)
    row["id"] = id_
    table.append(row)

def num(v, fmt):
    return "-" if v is None else format(v, fmt)

head = ["system", "op", "consistency", "sync", "ops/s", "p50 µs", "p99 µs",
        "ops/s ÷ redis", "p50 ÷ redis", "p99 ÷ redis", "ops/s ÷ echo", "p50 ÷ echo",
        "p99 ÷ echo"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---" for _ in head) + "|")
for r in table:
    cells = [r["system"], r["op"], r["consistency"], r["sync"], num(r["ops_per_sec"], ",.0f"),
             num(r["p50_us"], ".0f"), num(r["p99_us"], ".0f")]
    for suffix in ["_vs_redis", "_vs_echo"]:
        cells += [num(r[k + suffix], ".2f") for k in ["ops_per_sec", "p50_us", "p99_us"]]
    print("| " + " | ".join(cells) + " |")

steal = []
for r in range(1, rounds + 1):
    with open(f"{results}/{r}.steal") as f:
        ticks, total = map(int, f.read().split())
    steal.append(f"{100 * ticks / max(total, 1):.1f}%")
print(f"\nCPU steal by round: {', '.join(steal)}")

by_id = {r["id"]: r for r in table}
def ratio(id_, k, suffix):
    return by_id[id_][k + suffix]
def check(text, value, wanted, lower_is_better=False):
    if value is None:
        return print(f"target: {text}: not measured")
    met = value <= wanted if lower_is_better else value >= wanted
    print(f"target: {text}: {value:.2f} ({'met' if met else 'NOT met'}, wanted "
          f"{'<=' if lower_is_better else '>='} {wanted})")
check("writes at quorum, sync never: ops/s ÷ redis-replicated", ratio("qn-wq", "ops_per_sec", "_vs_redis"), 1.5)
check("writes at quorum, sync never: p99 ÷ redis-replicated", ratio("qn-wq", "p99_us", "_vs_redis"), 1.0, True)
check("reads at one: ops/s ÷ redis GET", ratio("qn-r1", "ops_per_sec", "_vs_redis"), 1.0)
check("reads at quorum: ops/s ÷ redis GET", ratio("qn-rq", "ops_per_sec", "_vs_redis"), 0.7)
check("writes at quorum, sync never: ops/s ÷ echo", ratio("qn-wq", "ops_per_sec", "_vs_echo"), 0.5)

def etcd_ratio(k):
    values = []
    for r in range(1, rounds + 1):
        mine, theirs = figures(r, "qa-wq", "write"), figures(r, "etcd-w", "write")
        if mine and theirs and theirs[k]:
            values.append(mine[k] / theirs[k])
    return statistics.median(values) if values else None
check("durable writes at quorum: ops/s ÷ etcd put", etcd_ratio(0), 5.0)
check("durable writes at quorum: p99 ÷ etcd put", etcd_ratio(2), 1.0, True)

if json_out:
    keep = ["system", "op", "consistency", "sync", "ops_per_sec", "p50_us", "p99_us",
            "ops_per_sec_vs_redis", "p50_us_vs_redis", "p99_us_vs_redis",
            "ops_per_sec_vs_echo", "p50_us_vs_echo", "p99_us_vs_echo"]
    with open(json_out, "w") as f:
        json.dump([{k: r[k] for k in keep} for r in table], f, indent=2)
        f.write("\n")
EOF
