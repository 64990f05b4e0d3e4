#!/usr/bin/env bash
# Registry benchmark (issue 2): chora's Manifest against its peers, in the same run,
# on the same machine, with the same methodology, printed as one combined table.
#
#   bench/registry.sh                 # full run (DUR=15s per test; 6 min idle, up to ~20 with retries)
#   DUR=5s bench/registry.sh          # quick run
#
# What it does:
#   1. cargo build --release -p chora (skip with CHORA_BIN=/path/to/chora).
#   2. Starts `chora manifest serve --no-auth` on a free loopback port (port 0, read back
#      from the readiness line) with a fresh SQLite file in a temp dir.
#   3. Runs the peers' wrk tests against it (read-one c32/c4, heartbeat c32, list-all
#      c32/c4; wrk -t2 -cN -d$DUR --latency), re-seeding 1,000 instances with the peers'
#      seed.py before each run, exactly as measure.sh does for the peers: wait until the
#      machine is idle (<10% CPU busy) before each run and repeat (up to 4 attempts) a
#      run during which other processes used more than MAX_OTHER cores.
#   4. Twice starts a fresh chora, registers 10,000 instances (bench/register_many.py,
#      keep-alive) and reports its VmRSS: as 1,000 services x 10 instances, and as
#      10,000 services x 1 instance.
#   5. Starts a single-member etcd (own data dir, free loopback ports) and runs the same
#      wrk tests and the 10k-service registration against `chora manifest serve
#      --storage etcd:URL` (peer "chora-etcd"); then stops that etcd.
#   6. Runs the peers' measure.sh (seed registry + etcd through its JSON gateway, i.e. a
#      client talking to etcd directly: put with lease, lease keep-alive, range) with the
#      same DUR.
#   7. Prints one combined table and the issue's goals, each met / missed.
#
# Needs: wrk, etcd (apt-get install -y wrk etcd-server), python3 (with venv and pip
# access for the seed registry's venv in /tmp/seed-venv), curl, cargo.
# Env knobs: DUR (15s), PEERS (dir holding measure.sh, seed.py and wrk/; default
#   ../../shared/peers from this script), CHORA_BIN (skip the build), MAX_OTHER (0.10),
#   SKIP_PEERS=1 (chora only), SKIP_ETCD=1 (no chora-etcd rows), OUT (dir for raw output; default /tmp/chora-bench-<date>),
#   QUIET_WAIT (120: seconds to wait for an idle machine before each run),
#   SKIP_ETCD3=1 (no chora-etcd3 rows: the same tests against a 3-member etcd cluster),
#   ONLY=heartbeat (issue 15: only the heartbeat c32 rows of chora-etcd and of etcd's own
#   lease keep-alive, each on a fresh etcd, in the same run; no sqlite, memory or seed-registry rows).
set -Eeuo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$HERE/lib.sh"
PEERS="${PEERS:-$(dirname "$0")/../../shared/peers}"
PEERS="$(cd "$PEERS" && pwd)"
DUR="${DUR:-15s}"
MAX_OTHER="${MAX_OTHER:-0.10}"
OUT="${OUT:-/tmp/chora-bench-$(date +%F)}"
SKIP_PEERS="${SKIP_PEERS:-0}"
SKIP_ETCD="${SKIP_ETCD:-0}"
SKIP_ETCD3="${SKIP_ETCD3:-0}"
QUIET_WAIT="${QUIET_WAIT:-120}"
ONLY="${ONLY:-}"
case "$ONLY" in ""|heartbeat) ;; *) echo "bench/registry.sh: ONLY must be empty or heartbeat" >&2; exit 1 ;; esac
SEED=p1                               # seed.py's mode: p1 (a registry), p2 (etcd's JSON gateway)
PEER=chora                            # the label of chora's rows
STORAGE=sqlite                        # start_chora's backend: sqlite, or etcd:URL

for tool in wrk etcd python3 curl; do
  command -v "$tool" >/dev/null || {
    echo "bench/registry.sh: missing $tool — install with: apt-get install -y wrk etcd-server python3 curl" >&2
    exit 1
  }
done
for f in measure.sh seed.py wrk/p1_get_one.lua wrk/p1_heartbeat.lua wrk/p1_list.lua; do
  [ -r "$PEERS/$f" ] || { echo "bench/registry.sh: $PEERS/$f not found (set PEERS=dir)" >&2; exit 1; }
done

mkdir -p "$OUT"
RESULTS="$OUT/chora-raw.txt"        # raw wrk output of the chora runs
PEER_RESULTS="$OUT/peers-raw.txt"   # raw output of measure.sh
TABLE="$OUT/table.tsv"              # combined table
: > "$RESULTS"
log() { echo "$@" | tee -a "$RESULTS"; }

WORK="$(mktemp -d /tmp/chora-bench.XXXXXX)"
PIDS=()         # chora servers we started
MEASURE_PID=""  # measure.sh (own process group)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$MEASURE_PID" ] && kill -0 "$MEASURE_PID" 2>/dev/null; then
    # measure.sh runs in its own process group: TERM it (its trap stops its peers),
    # then make sure nothing of that group (wrk, uvicorn, etcd) is left.
    kill -TERM -- "-$MEASURE_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 -- "-$MEASURE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$MEASURE_PID" 2>/dev/null || true
    wait "$MEASURE_PID" 2>/dev/null || true
  fi
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  [ -n "${ETCD_PID:-}" ] && stop_pid "$ETCD_PID"
  # keep the servers' logs and wrk outputs next to the raw output
  mkdir -p "$OUT/logs" && cp "$WORK"/*.out "$WORK"/*.err "$WORK"/wrk-*.txt "$OUT/logs/" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench/registry.sh: command failed at line $LINENO (exit $?): $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build
find_chora bench/registry.sh

# ---------------------------------------------------------------- helpers (as in measure.sh)
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
task_jiffies() { awk '/^cpu / {print $2+$3+$4}' /proc/stat; }              # user+nice+system only
steal_jiffies() { awk '/^cpu / {print $9}' /proc/stat; }                    # taken by the hypervisor
# (a process may exit between the glob and the read: cat then fails, which must not
# abort the run under set -e / pipefail)
kthread_jiffies() { { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '($4==2 || $1==2) {s+=$14+$15} END {print s+0}'; }
# a server's CPU includes its storage's processes (EXTRA_PIDS: etcd for chora-etcd)
pid_utime() { local s=0 p; for p in "$1" $EXTRA_PIDS; do s=$((s + $(awk '{print $14}' "/proc/$p/stat"))); done; echo "$s"; }
pid_stime() { local s=0 p; for p in "$1" $EXTRA_PIDS; do s=$((s + $(awk '{print $15}' "/proc/$p/stat"))); done; echo "$s"; }
EXTRA_PIDS=""
# Wait (up to QUIET_WAIT s) until the whole machine is idle: <10% of all cores busy over 1 s.
wait_quiet() {
  local b0 b1 ncpu; ncpu=$(nproc)
  for _ in $(seq 1 "$QUIET_WAIT"); do
    b0=$(busy_jiffies); sleep 1; b1=$(busy_jiffies)
    [ $(( (b1 - b0) * 100 / (HZ * ncpu) )) -lt 10 ] && return 0
  done
  log "WARNING: machine not idle before this run"
}

# start_chora NAME [extra serve args...]: sets CHORA_PID, CHORA_PORT; waits for the
# readiness line on stdout (not a fixed sleep).
start_chora() {
  local name=$1; shift
  local out="$WORK/$name.out" err="$WORK/$name.err" line="" storage="$STORAGE"
  [ "$storage" = sqlite ] && storage="sqlite:$WORK/$name.db"
  "$CHORA" manifest serve --no-auth --listen 127.0.0.1:0 --storage "$storage" "$@" \
    > "$out" 2> "$err" &
  CHORA_PID=$!; PIDS+=("$CHORA_PID")
  for _ in $(seq 1 600); do
    line=$(grep -m1 'listening on http://' "$out" 2>/dev/null || true)
    [ -n "$line" ] && break
    if ! kill -0 "$CHORA_PID" 2>/dev/null; then
      echo "chora manifest serve exited before it was ready:" >&2; cat "$err" >&2; exit 1
    fi
    sleep 0.05
  done
  [ -n "$line" ] || { echo "timeout waiting for chora's readiness line" >&2; cat "$err" >&2; exit 1; }
  CHORA_PORT=$(sed -E 's#.*listening on http://[^ ]*:([0-9]+).*#\1#' <<<"$line")
  log "# $line (pid $CHORA_PID)"
}

printf 'peer\ttest\tconns\treq/s\tp50 ms\tp99 ms\terrors\tRSS MB\tserver CPU\tother CPU\n' > "$WORK/chora.tsv"

# run_test PID PORT LABEL CONNS SCRIPT [WRK_ARG]: as measure.sh's run_test.
run_test() {
  local pid=$1 port=$2 label=$3 conns=$4 script=$5 warg=${6:-}
  local url="http://127.0.0.1:$port" out="$WORK/wrk-$PEER-$label-c$conns.txt"
  local attempt b0 u0 k0 s0 ss0 c0 b1 u1 k1 s1 ss1 c1 st0 st1 t0 t1 cpu ocpu scpu
  for attempt in 1 2 3 4; do
    log ""
    log "=== $PEER | $label | -t2 -c$conns -d$DUR | attempt $attempt ==="
    wait_quiet
    python3 "$PEERS/seed.py" "$SEED" "$port" "$WORK/${PEER}_ids.txt" 2>&1 | tee -a "$RESULTS"
    b0=$(busy_jiffies); u0=$(task_jiffies); k0=$(kthread_jiffies); st0=$(steal_jiffies)
    s0=$(pid_utime "$pid"); ss0=$(pid_stime "$pid"); child_secs_to 0; t0=$(date +%s.%N)
    wrk -t2 -c"$conns" -d"$DUR" --latency -s "$PEERS/wrk/$script" "$url" -- "$warg" > "$out" 2>&1 ||
      { log "wrk exited with status $?:"; cat "$out" >&2; kill -0 "$pid" 2>/dev/null || log "chora (pid $pid) is gone"; exit 1; }
    b1=$(busy_jiffies); u1=$(task_jiffies); k1=$(kthread_jiffies); st1=$(steal_jiffies)
    s1=$(pid_utime "$pid"); ss1=$(pid_stime "$pid"); child_secs_to 1; t1=$(date +%s.%N)
    c0=$(child_secs 0); c1=$(child_secs 1)
    cat "$out" >> "$RESULTS"
    cpu=$(awk -v b=$((b1 - b0)) -v u=$((u1 - u0)) -v k=$((k1 - k0)) -v su=$((s1 - s0)) -v ss=$((ss1 - ss0)) -v st=$((st1 - st0)) \
      -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$HZ" \
      'BEGIN{t=t1-t0; w=c1-c0; s=su+ss; o=u/hz-k/hz-s/hz-w; if(o<0)o=0; kk=k/hz+(b-u)/hz;
             printf "server=%.2f cores (user %.2f, sys %.2f), wrk=%.2f cores, kernel=%.2f cores (of which steal %.2f), other=%.2f cores",
                    s/hz/t, su/hz/t, ss/hz/t, w/t, kk/t, st/hz/t, o/t}')
    log "CPU during run (avg): $cpu"
    log "RSS after: VmRSS=$(rss_kb "$pid") kB VmHWM=$(hwm_kb "$pid") kB (pid $pid)"
    scpu=$(sed -E 's/.*server=([0-9.]+).*/\1/' <<<"$cpu"); ocpu=$(sed -E 's/.*other=([0-9.]+).*/\1/' <<<"$cpu")
    if awk -v o="$ocpu" -v m="$MAX_OTHER" 'BEGIN{exit !(o <= m)}'; then break; fi
    log "DISCARDED: other processes used $ocpu cores (> $MAX_OTHER) during this run"
  done
  local line rps p50 p99 n2 se errs
  line=$(grep '^RESULT' "$out") || { echo "no RESULT line from wrk:" >&2; cat "$out" >&2; exit 1; }
  rps=$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$line")
  p50=$(sed -E 's/.* p50_ms=([0-9.]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.* p99_ms=([0-9.]+).*/\1/' <<<"$line")
  n2=$(sed -E 's/.* non2xx=([0-9]+).*/\1/' <<<"$line")
  se=$(sed -E 's/.* sock_errors=([0-9]+) (\(.*\)).*/\1 \2/' <<<"$line")
  errs="$n2 non-2xx"
  [ "${se%% *}" != "0" ] && errs="$errs, $se socket"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$PEER" "$label" "$conns" "$rps" "$p50" "$p99" \
    "$errs" "$(mb "$(rss_kb "$pid")")" "$scpu" "$ocpu" >> "$WORK/chora.tsv"
}

log "# Registry benchmark — $(date -u +%FT%TZ)"
log "# host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
if [ -n "${CHORA_BIN:-}" ]; then
  log "# chora: $("$CHORA" --version 2>/dev/null | head -1) (CHORA_BIN=$CHORA)"
else
  log "# chora: $("$CHORA" --version 2>/dev/null | head -1) ($CHORA), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && echo ' (working tree dirty)')"
fi
log "# wrk: $(wrk -v 2>&1 | head -1 || true)"
log "# command per test: wrk -t2 -cN -d$DUR --latency -s $PEERS/wrk/<script>.lua <url>"

# ---------------------------------------------------------------- chora: wrk runs
if [ -z "$ONLY" ]; then
log ""
log "## chora manifest serve --no-auth (sqlite in $WORK)"
start_chora bench
BENCH_PID=$CHORA_PID; BENCH_PORT=$CHORA_PORT
log "RSS idle (empty): $(rss_kb "$BENCH_PID") kB"
run_test "$BENCH_PID" "$BENCH_PORT" read-one  32 p1_get_one.lua
run_test "$BENCH_PID" "$BENCH_PORT" read-one   4 p1_get_one.lua
run_test "$BENCH_PID" "$BENCH_PORT" heartbeat 32 p1_heartbeat.lua "$WORK/chora_ids.txt"
run_test "$BENCH_PID" "$BENCH_PORT" list-all  32 p1_list.lua
run_test "$BENCH_PID" "$BENCH_PORT" list-all   4 p1_list.lua
log "server stderr lines: $(wc -l < "$WORK/bench.err"); panics: $(grep -ci panic "$WORK/bench.err" || true); ERROR lines: $(grep -c ERROR "$WORK/bench.err" || true)"
grep -iE 'panic|ERROR' "$WORK/bench.err" | head -20 | tee -a "$RESULTS" || true
stop_pid "$BENCH_PID"

# ---------------------------------------------------------------- chora: memory with 10,000 instances
# mem_test LABEL SERVICES: a fresh chora, 10,000 instances under SERVICES names, VmRSS.
# Sets MEM_RSS (kB). The goal is judged on both shapes.
mem_test() {
  local label=$1 services=$2 reg rate
  log ""
  log "## chora memory: 10,000 instances as $services services, fresh registry (bench/register_many.py, 4 keep-alive connections)"
  wait_quiet
  start_chora "mem-$services"
  log "RSS idle (empty): $(rss_kb "$CHORA_PID") kB"
  reg=$(python3 "$HERE/register_many.py" "$CHORA_PORT" 10000 4 "$services")
  log "$reg"
  sleep 1   # let the last responses go out before reading VmRSS
  MEM_RSS=$(rss_kb "$CHORA_PID")
  log "RSS with 10,000 instances: VmRSS=$MEM_RSS kB VmHWM=$(hwm_kb "$CHORA_PID") kB ($(grep -E '^Rss(Anon|File)' "/proc/$CHORA_PID/status" | tr -s ' \t\n' ' '))"
  curl -sf -o "$WORK/list10k.json" "http://127.0.0.1:$CHORA_PORT/v1/services"
  log "RSS after one GET /v1/services of all 10,000 ($(wc -c < "$WORK/list10k.json") bytes): VmRSS=$(rss_kb "$CHORA_PID") kB VmHWM=$(hwm_kb "$CHORA_PID") kB"
  rate=$(sed -E 's/.* rate=([0-9]+).*/\1/' <<<"$reg")
  printf '%s\t%s\t4\t%s\t-\t-\t0 non-2xx\t%s\t-\t-\n' "$PEER" "$label" "$rate" "$(mb "$MEM_RSS")" >> "$WORK/chora.tsv"
  stop_pid "$CHORA_PID"
}
mem_test "register 1k svc x10" 1000
MEM_RSS_1K=$MEM_RSS
mem_test "register 10k svc x1" 10000
MEM_RSS_10K=$MEM_RSS
fi

# ---------------------------------------------------------------- chora over etcd
# The same tests against a Manifest node whose storage is a real etcd (one member,
# its own data dir and free loopback ports, started here and stopped after).
if [ "$SKIP_ETCD" != 1 ]; then
  # start_etcd: a fresh single-member etcd (new data dir) on free loopback ports
  start_etcd() {
    ETCD_CLIENT=$(free_port); ETCD_PEER=$(free_port)
    rm -rf "$WORK/etcd"
    etcd --name bench --data-dir "$WORK/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
      --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" > "$WORK/etcd.out" 2>> "$WORK/etcd.err" &
    ETCD_PID=$!
    for _ in $(seq 1 200); do
      curl -sf "http://127.0.0.1:$ETCD_CLIENT/health" >/dev/null 2>&1 && break
      kill -0 "$ETCD_PID" 2>/dev/null || { echo "etcd exited:" >&2; tail -20 "$WORK/etcd.err" >&2; exit 1; }
      sleep 0.05
    done
    STORAGE="etcd:http://127.0.0.1:$ETCD_CLIENT"
  }
  # etcd_rows PEER NAME: a Manifest node on $STORAGE (its "server CPU" counts
  # $EXTRA_PIDS, the etcd members, too) through read-one, heartbeat and list-all
  # (heartbeat only with ONLY=heartbeat); leaves it running as E_PID.
  etcd_rows() {
    PEER=$1
    start_chora "$2"
    E_PID=$CHORA_PID; E_PORT=$CHORA_PORT
    if [ -z "$ONLY" ]; then run_test "$E_PID" "$E_PORT" read-one 32 p1_get_one.lua; fi
    run_test "$E_PID" "$E_PORT" heartbeat 32 p1_heartbeat.lua "$WORK/${PEER}_ids.txt"
    if [ -z "$ONLY" ]; then run_test "$E_PID" "$E_PORT" list-all 32 p1_list.lua; fi
  }
  start_etcd
  log ""
  log "## chora manifest serve --no-auth --storage $STORAGE ($(etcd --version | head -1), one member, fresh data dir; server CPU = chora + etcd)"
  EXTRA_PIDS=$ETCD_PID
  etcd_rows chora-etcd bench-etcd
  log "etcd VmRSS after the runs: $(rss_kb "$ETCD_PID") kB"
  stop_pid "$E_PID"; stop_pid "$ETCD_PID"; EXTRA_PIDS=""
  start_etcd   # empty again: the 1,000 seeded instances would still hold their leases
  if [ -z "$ONLY" ]; then
    mem_test "register 10k svc x1" 10000
    log "etcd VmRSS holding 10,000 instances: $(rss_kb "$ETCD_PID") kB"
  else
    # etcd's own lease keep-alive (the peers' p2 test: a client talking to etcd directly
    # through its JSON gateway), on this fresh etcd, right after the chora-etcd row
    log ""
    log "## etcd's own lease keep-alive ($(etcd --version | head -1), one member, fresh data dir; JSON gateway, as measure.sh)"
    PEER=etcd SEED=p2
    run_test "$ETCD_PID" "$ETCD_CLIENT" heartbeat 32 p2_keepalive.lua "$WORK/${PEER}_ids.txt"
    SEED=p1
  fi
  stop_pid "$ETCD_PID"; ETCD_PID=""

  # The same against a 3-member cluster (issue 15: what the prod template runs),
  # local processes on free loopback ports with the prod template's LAN timings.
  if [ "$SKIP_ETCD3" != 1 ]; then
    # start_etcd3: a fresh 3-member cluster (new data dirs) on free loopback ports
    start_etcd3() {
      local i cluster="" urls=""
      ETCD3_PIDS=""
      for i in 1 2 3; do C3[$i]=$(free_port); P3[$i]=$(free_port); cluster+="m$i=http://127.0.0.1:${P3[$i]},"; urls+="http://127.0.0.1:${C3[$i]},"; done
      cluster=${cluster%,}; urls=${urls%,}
      rm -rf "$WORK"/etcd3-*
      for i in 1 2 3; do
        etcd --name "m$i" --data-dir "$WORK/etcd3-$i" \
          --listen-client-urls "http://127.0.0.1:${C3[$i]}" --advertise-client-urls "http://127.0.0.1:${C3[$i]}" \
          --listen-peer-urls "http://127.0.0.1:${P3[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${P3[$i]}" \
          --initial-cluster "$cluster" --initial-cluster-state new --heartbeat-interval 50 --election-timeout 500 --pre-vote \
          > "$WORK/etcd3-$i.out" 2>> "$WORK/etcd3-$i.err" &
        ETCD3_PIDS+="$! "
      done
      ETCD3_PIDS=${ETCD3_PIDS% }
      for _ in $(seq 1 200); do
        curl -sf "http://127.0.0.1:${C3[1]}/health" >/dev/null 2>&1 && break
        sleep 0.05
      done
      STORAGE="etcd:$urls"
    }
    declare -a C3 P3
    start_etcd3
    log ""
    log "## chora manifest serve --no-auth --storage $STORAGE ($(etcd --version | head -1), three members, heartbeat 50 ms, election 500 ms; server CPU = chora + the three etcds)"
    EXTRA_PIDS=$ETCD3_PIDS
    etcd_rows chora-etcd3 bench-etcd3
    stop_pid "$E_PID"; EXTRA_PIDS=""
    for p in $ETCD3_PIDS; do stop_pid "$p"; done
    # etcd's own lease keep-alive on a fresh cluster of the same shape
    start_etcd3
    log ""
    log "## etcd's own lease keep-alive on three members (fresh; JSON gateway of member 1, as measure.sh)"
    first=${ETCD3_PIDS%% *}
    PEER=etcd3 SEED=p2 EXTRA_PIDS=${ETCD3_PIDS#* }
    run_test "$first" "${C3[1]}" heartbeat 32 p2_keepalive.lua "$WORK/${PEER}_ids.txt"
    SEED=p1 EXTRA_PIDS=""
    for p in $ETCD3_PIDS; do stop_pid "$p"; done
  fi
  PEER=chora STORAGE=sqlite
fi

# ---------------------------------------------------------------- peers
if [ "$SKIP_PEERS" != 1 ] && [ -z "$ONLY" ]; then
  log ""
  log "## peers: DUR=$DUR RESULTS=$PEER_RESULTS $PEERS/measure.sh"
  # measure.sh aborts when a process exits while it reads /proc/*/stat (a race on a
  # busy shared box); try it up to 3 times.
  for attempt in 1 2 3; do
    DUR="$DUR" RESULTS="$PEER_RESULTS" setsid "$PEERS/measure.sh" &
    MEASURE_PID=$!
    if wait "$MEASURE_PID"; then MEASURE_PID=""; break; fi
    MEASURE_PID=""
    log "measure.sh failed (attempt $attempt; raw output: $PEER_RESULTS)"
    [ "$attempt" = 3 ] && exit 1
    cp "$PEER_RESULTS" "$PEER_RESULTS.failed-$attempt" 2>/dev/null || true
  done
  cp /tmp/peers-run/table.tsv "$WORK/peers.tsv"
else
  printf 'peer\n' > "$WORK/peers.tsv"
fi

# ---------------------------------------------------------------- combined table
{ cat "$WORK/chora.tsv"; tail -n +2 "$WORK/peers.tsv"; } > "$TABLE"
# the columns the issue asks for, plus the server's CPU (cores) during the run
cut -f1-9 "$TABLE" > "$WORK/show.tsv"
{
  echo ""
  echo "## Combined (DUR=$DUR, wrk -t2; 1,000 instances; RSS = server VmRSS right after the run;"
  echo "##           errors = non-2xx + socket errors; server CPU = cores used by the server during the run;"
  echo "##           register rows: 10,000 instances in a fresh chora, req/s = registration rate"
  echo "##           over 4 keep-alive connections, RSS = VmRSS with the 10,000 registered)"
  column -t -s $'\t' "$WORK/show.tsv"
} | tee -a "$RESULTS"
# the same as a Markdown table
awk -F'\t' 'NR==1 {printf "|"; for(i=1;i<=NF;i++) printf " %s |", $i; printf "\n|"; for(i=1;i<=NF;i++) printf " --- |"; printf "\n"; next}
            {printf "|"; for(i=1;i<=NF;i++) printf " %s |", $i; printf "\n"}' "$WORK/show.tsv" > "$OUT/table.md"

if [ -n "$ONLY" ]; then
  echo ""; echo "raw output: $RESULTS; tables: $TABLE, $OUT/table.md"
  exit 0
fi
# ---------------------------------------------------------------- goals
get() { awk -F'\t' -v p="$1" -v t="$2" -v c="$3" -v col="$4" '$1==p && $2==t && $3==c {print $col}' "$TABLE"; }
verdict() { if awk "BEGIN{exit !($1)}"; then echo met; else echo MISSED; fi; }
R_RPS=$(get chora read-one 32 4);  R_P99=$(get chora read-one 32 6)
H_RPS=$(get chora heartbeat 32 4); H_P99=$(get chora heartbeat 32 6)
L_RPS=$(get chora list-all 32 4);  L4_RPS=$(get chora list-all 4 4)
S_RPS=$(get seed-registry read-one 32 4)
{
  echo ""
  echo "## Goals (issue 2)"
  echo "- reads >= 20,000/s with p99 < 5 ms: $(verdict "$R_RPS >= 20000 && $R_P99 < 5") — read-one c32 $R_RPS req/s, p99 $R_P99 ms"
  echo "- heartbeats >= 10,000/s with p99 < 5 ms: $(verdict "$H_RPS >= 10000 && $H_P99 < 5") — heartbeat c32 $H_RPS req/s, p99 $H_P99 ms"
  echo "- full listings of 1,000 instances >= 500/s: $(verdict "$L_RPS >= 500") — list-all c32 $L_RPS/s (c4 $L4_RPS/s)"
  echo "- RSS < 30 MB with 10,000 instances: $(verdict "$MEM_RSS_10K < 30*1024 && $MEM_RSS_1K < 30*1024") — $(mb "$MEM_RSS_10K") MB as 10,000 services x 1 instance, $(mb "$MEM_RSS_1K") MB as 1,000 services x 10"
  if [ -n "$S_RPS" ]; then
    echo "- read-one >= 10x the seed registry: $(verdict "$R_RPS >= 10*$S_RPS") — $(awk -v a="$R_RPS" -v b="$S_RPS" 'BEGIN{printf "%.1fx", a/b}') ($R_RPS vs $S_RPS req/s, c32)"
  else
    echo "- read-one >= 10x the seed registry: not measured (SKIP_PEERS=1)"
  fi
  echo ""
  echo "raw output: $RESULTS, $PEER_RESULTS; tables: $TABLE, $OUT/table.md"
} | tee -a "$RESULTS" | tee "$OUT/goals.txt"
