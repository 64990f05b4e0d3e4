#!/usr/bin/env bash
# Metrics benchmark (issue 25, DESIGN.md §16): what seeing the metrics of N=50
# services costs, scraped every 5 s, and how long a new service takes to be
# scraped by Prometheus.
#
#   bench/metrics.sh                 # N=50, WINDOW=60 s per measurement, ROUNDS=5
#   BASELINE_BIN=/path/to/chora-of-main bench/metrics.sh   # + an orchestrator without charts
#
# Everything runs on loopback, on free ports, in a temp dir, from the release
# binary (CHORA_BIN skips the build):
#   - a Manifest (`chora manifest serve --no-auth`, SQLite, heartbeats every 1 s and
#     TTL 10 s as in the dev template);
#   - N services: `chora capability serve --name analyzer` processes (the /metrics
#     every chora service serves: request counters and latency histograms), each
#     registered on its behalf as svc-1 … svc-N by `chora keep-registered`, as the
#     bootstrap does for `register: chora` (their own registration points nowhere);
#   - Prometheus (Debian's, PROMETHEUS) discovering them through the Manifest's
#     GET /v1/prometheus/targets (refresh REFRESH s) and scraping every 5 s;
#   - the orchestrator (`chora orchestrator serve --no-auth`), whose dashboard
#     charts every row: from its own sampler of the services' /metrics (every 5 s,
#     15 minutes kept), or from Prometheus (`--prometheus-url`).
# Measured over WINDOW seconds each, from /proc/PID/stat (utime+stime: % of one
# core) and /proc/PID/status (VmRSS sampled every second: mean and max):
#   1. the Manifest alone (its heartbeats); Prometheus with nothing to scrape
#      (its floor, 30 s after WARMUP s); then the Manifest with Prometheus reading
#      its discovery every REFRESH s (after WARMUP s), and Prometheus itself then;
#   2. the discovery request on its own: REQUESTS back-to-back GETs of
#      /v1/prometheus/targets (N targets), the Manifest's CPU per request;
#   3. the orchestrator with its sampler (no Prometheus), with charts from
#      Prometheus, and (with BASELINE_BIN) an orchestrator without charts, each
#      after WARMUP s; Prometheus again while the dashboard asks it;
#   4. discovery latency, ROUNDS times: one more service started and registered
#      on its behalf; from its registration being readable in the Manifest to its
#      target being active in Prometheus' /api/v1/targets and to its first
#      scrape (health up); then it is stopped (deregistered) and the time until
#      its target leaves is measured too; then again with Prometheus restarted
#      with discovery refreshed every REFRESH2 s.
# Everything it started is stopped at the end (and on failure or ^C).
#
# Needs: prometheus (apt-get install -y prometheus), python3, curl.
# Env knobs: N (50), WINDOW (60), WARMUP (30), ROUNDS (5), REQUESTS (500), REFRESH (5), REFRESH2 (1),
#   PROMETHEUS (prometheus), PROMETHEUS_ENV (more of its environment, e.g. "GOMEMLIMIT=40MiB"),
#   UNTUNED=1 (Prometheus without the environment and flags `chora bootstrap` gives it),
#   KEEP_ALL=1 (keep the observers' series `chora bootstrap` drops),
#   CHORA_BIN, BASELINE_BIN, OUT (/tmp/chora-bench-metrics-<date>).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$HERE/lib.sh"

N="${N:-50}"
WINDOW="${WINDOW:-60}"
WARMUP="${WARMUP:-30}"
ROUNDS="${ROUNDS:-5}"
REQUESTS="${REQUESTS:-500}"
REFRESH="${REFRESH:-5}"
REFRESH2="${REFRESH2:-1}"
PROMETHEUS="${PROMETHEUS:-prometheus}"
PROMETHEUS_ENV="${PROMETHEUS_ENV:-}"
OUT="${OUT:-/tmp/chora-bench-metrics-$(date +%F)}"
# What `chora bootstrap` runs Prometheus with (config/units.rs PROMETHEUS_ENV and
# PROMETHEUS_FLAGS: they cut its memory most), unless UNTUNED=1.
if [ "${UNTUNED:-0}" = 1 ]; then TUNED_ENV=""; TUNED_FLAGS=""; else TUNED_ENV="GOGC=10"; TUNED_FLAGS="--no-storage.tsdb.wal-compression"; fi
command -v "$PROMETHEUS" >/dev/null || { echo "bench/metrics.sh: $PROMETHEUS not found (apt-get install -y prometheus)" >&2; exit 1; }
find_chora bench/metrics.sh
if [ -n "${BASELINE_BIN:-}" ]; then
  [ -x "$BASELINE_BIN" ] || { echo "bench/metrics.sh: BASELINE_BIN $BASELINE_BIN is not executable" >&2; exit 1; }
fi

rm -rf "$OUT"; mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/chora-bench-metrics.XXXXXX)"
clean_on_exit

log() { echo "$@" | tee -a "$OUT/raw.txt"; }

start() { start_logged "$@"; }
# stop PID: as stop_pid, and forgets it.
stop() {
  local pid=$1 i
  stop_pid "$pid"
  for i in "${!PIDS[@]}"; do [ "${PIDS[i]}" = "$pid" ] && unset 'PIDS[i]'; done
  PIDS=("${PIDS[@]}")
}
# wait_for SECONDS DESCRIPTION CMD...: until CMD succeeds (every 50 ms).
wait_for() {
  local limit=$1 what=$2; shift 2
  local t0; t0=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if [ $(( $(date +%s) - t0 )) -ge "$limit" ]; then echo "bench/metrics.sh: $what not within ${limit}s" >&2; exit 1; fi
    sleep 0.05
  done
}
ready() { grep -q "listening on http://" "$OUT/$1.log"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
start_time() { awk '{print $22}' "/proc/$1/stat"; }

# measure SECONDS PID...: % of one core and VmRSS (mean, max MB) of each PID
# over SECONDS, and its anonymous part (RssAnon, mean MB: the rest is the
# binary's and libraries' file pages); one line per PID:
# "cpu_pct rss_mean_mb rss_max_mb anon_mean_mb".
measure() {
  local secs=$1; shift
  local p t0=() sum=() max=() anon=() n=0 s i
  for p in "$@"; do t0+=("$(ticks "$p")"); sum+=(0); max+=(0); anon+=(0); done
  for ((s = 0; s < secs; s++)); do
    sleep 1
    i=0
    for p in "$@"; do
      local kb an
      read -r kb an <<< "$(awk '/^VmRSS/ {r = $2} /^RssAnon/ {a = $2} END {print r, a}' "/proc/$p/status")"
      sum[i]=$((sum[i] + kb)); anon[i]=$((anon[i] + an)); [ "$kb" -gt "${max[i]}" ] && max[i]=$kb
      i=$((i + 1))
    done
    n=$((n + 1))
  done
  i=0
  for p in "$@"; do
    awk -v d="$(( $(ticks "$p") - t0[i] ))" -v hz="$HZ" -v secs="$secs" -v sum="${sum[i]}" -v n="$n" -v max="${max[i]}" -v anon="${anon[i]}" \
      'BEGIN { printf "%.2f %.1f %.1f %.1f\n", d / hz / secs * 100, sum / n / 1024, max / 1024, anon / n / 1024 }'
    i=$((i + 1))
  done
}

read -r PM PP PO <<< "$(free_ports 3)"
PORTS=($(free_ports $((N + 2 * ROUNDS))))
MANIFEST="http://127.0.0.1:$PM"
SD="$MANIFEST/v1/prometheus/targets"

log "# Metrics benchmark (issue 25) — $(date -u +%FT%TZ)"
log "# host: $(uname -srm), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "# chora: $("$CHORA" --version) ($CHORA); prometheus: $("$PROMETHEUS" --version 2>&1 | head -1), environment: ${TUNED_ENV:-(none)} $PROMETHEUS_ENV, flags: ${TUNED_FLAGS:-(none)}"
log "# N=$N WINDOW=${WINDOW}s WARMUP=${WARMUP}s ROUNDS=$ROUNDS REQUESTS=$REQUESTS; scrape every 5 s, discovery refresh every ${REFRESH} s (latency also at ${REFRESH2} s)"

start manifest "$CHORA" manifest serve --listen "127.0.0.1:$PM" --storage "sqlite:$WORK/manifest.db" \
  --no-auth --ttl 10 --heartbeat-interval 1
MANIFEST_PID=$PID
wait_for 15 "the Manifest" ready manifest

# service I PORT: an analyzer on PORT, registered on its behalf as svc-I.
service() {
  local i=$1 port=$2 svc kr
  mkdir -p "$WORK/svc-$i"
  (cd "$WORK/svc-$i" && exec "$CHORA" capability serve --name analyzer --listen "127.0.0.1:$port" \
     --manifest-url http://127.0.0.1:1 > "$OUT/svc-$i.log" 2>&1) &
  svc=$!; PIDS+=("$svc")
  wait_for 15 "svc-$i" grep -q "listening on http://" "$OUT/svc-$i.log"
  start "keep-$i" "$CHORA" keep-registered --name "svc-$i" --id "svc-$i-bench" --version 1.0.0 \
    --rest "http://127.0.0.1:$port" --health "http://127.0.0.1:$port/health" \
    --manifest-url "$MANIFEST" --unit "process:$svc:$(start_time "$svc")"
  kr=$PID
  echo "$svc $kr"
}
up_count() { curl -fsS "$MANIFEST/v1/services?status=up" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
at_least() { local n; n=$("$2") && [ "$n" -ge "$1" ]; }   # at_least N COUNTER
for ((i = 1; i <= N; i++)); do service "$i" "${PORTS[i - 1]}" > /dev/null; done
wait_for 60 "$N services registered and up" at_least "$N" up_count
log "# $N services registered and up"

# 1. The Manifest alone, then with Prometheus reading its discovery.
log "## the Manifest alone (${WINDOW}s)"
read -r M0_CPU M0_RSS M0_MAX M0_ANON <<< "$(measure "$WINDOW" "$MANIFEST_PID")"
log "manifest alone: cpu ${M0_CPU}% rss ${M0_RSS} MB (max ${M0_MAX})"

# start_prometheus REFRESH: Prometheus with discovery refreshed every REFRESH s.
start_prometheus() {
  mkdir -p "$WORK/prometheus"
  cat > "$WORK/prometheus/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
  scrape_timeout: 4s
scrape_configs:
  - job_name: chora
    http_sd_configs:
      - url: "$SD"
        refresh_interval: ${1}s
EOF
  # What `chora bootstrap` writes (monitoring.rs OBSERVERS_DROPPED), unless KEEP_ALL=1.
  [ "${KEEP_ALL:-0}" = 1 ] || cat >> "$WORK/prometheus/prometheus.yml" <<EOF
    metric_relabel_configs:
      - source_labels: [endpoint]
        regex: /metrics|/v1/metrics|/health|/v1/health
        action: drop
EOF
  cp "$WORK/prometheus/prometheus.yml" "$OUT/prometheus-refresh-$1s.yml"
  # shellcheck disable=SC2086 # *_ENV are lists of NAME=VALUE words, TUNED_FLAGS of flags
  start "prometheus-$1" env $TUNED_ENV $PROMETHEUS_ENV "$PROMETHEUS" --config.file="$WORK/prometheus/prometheus.yml" \
    --storage.tsdb.path="$WORK/prometheus/data-$1" --web.listen-address="127.0.0.1:$PP" $TUNED_FLAGS
  PROM_PID=$PID
  wait_for 30 "Prometheus" grep -q "Server is ready to receive web requests" "$OUT/prometheus-$1.log"
}
# Prometheus' own floor: the same binary with nothing to scrape.
mkdir -p "$WORK/idle"
printf 'global:\n  scrape_interval: 5s\n' > "$WORK/idle/prometheus.yml"
# shellcheck disable=SC2086
start prometheus-idle env $TUNED_ENV $PROMETHEUS_ENV "$PROMETHEUS" --config.file="$WORK/idle/prometheus.yml" \
  --storage.tsdb.path="$WORK/idle/data" --web.listen-address="127.0.0.1:$PP" $TUNED_FLAGS
wait_for 30 "Prometheus" grep -q "Server is ready to receive web requests" "$OUT/prometheus-idle.log"
sleep "$WARMUP"
read -r PI_CPU PI_RSS PI_MAX PI_ANON <<< "$(measure 30 "$PID")"
log "prometheus with nothing to scrape: cpu ${PI_CPU}% rss ${PI_RSS} MB (max ${PI_MAX}, anonymous ${PI_ANON})"
stop "$PID"
start_prometheus "$REFRESH"
PROM="http://127.0.0.1:$PP"
active_up() {  # active_up: targets of the chora job with health up
  curl -fsS "$PROM/api/v1/targets?state=active" | python3 -c \
    'import json,sys; print(sum(1 for t in json.load(sys.stdin)["data"]["activeTargets"] if t["health"] == "up"))'
}
wait_for 60 "Prometheus scraping $N targets" at_least "$N" active_up
log "# Prometheus scrapes all $N; warming up ${WARMUP}s"
sleep "$WARMUP"
log "## the Manifest and Prometheus, Prometheus scraping $N services every 5 s, discovery every ${REFRESH} s (${WINDOW}s)"
read -r M1_CPU M1_RSS M1_MAX M1_ANON P1_CPU P1_RSS P1_MAX P1_ANON <<< "$(measure "$WINDOW" "$MANIFEST_PID" "$PROM_PID" | paste -sd' ')"
SERIES=$(curl -fsS "$PROM/api/v1/status/tsdb" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["headStats"]["numSeries"])')
log "manifest with SD: cpu ${M1_CPU}% rss ${M1_RSS} MB (max ${M1_MAX}); prometheus: cpu ${P1_CPU}% rss ${P1_RSS} MB (max ${P1_MAX}); head series ${SERIES}"

# 2. The discovery request on its own.
T0=$(ticks "$MANIFEST_PID")
S0=$(date +%s%N)
python3 - "$SD" "$REQUESTS" <<'PY'
import http.client, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
for _ in range(int(sys.argv[2])):
    c.request("GET", u.path)
    r = c.getresponse(); body = r.read()
    assert r.status == 200, r.status
PY
S1=$(date +%s%N)
SD_US=$(awk -v d="$(( $(ticks "$MANIFEST_PID") - T0 ))" -v hz="$HZ" -v n="$REQUESTS" 'BEGIN { printf "%.0f", d / hz / n * 1e6 }')
SD_WALL=$(awk -v d="$(( S1 - S0 ))" -v n="$REQUESTS" 'BEGIN { printf "%.0f", d / n / 1e3 }')
SD_BYTES=$(curl -fsS "$SD" | wc -c)
log "discovery request ($N targets, $SD_BYTES bytes): ${SD_US} µs of Manifest CPU each, ${SD_WALL} µs wall"

# 3. The orchestrator's dashboard.
mkdir -p "$WORK/home/logs"
orchestrator() {  # orchestrator NAME BIN [FLAGS…]: sets ORCH_PID
  local name=$1 bin=$2; shift 2
  start "$name" "$bin" orchestrator serve --listen "127.0.0.1:$PO" --manifest-url "$MANIFEST" \
    --no-auth --home "$WORK/home" --logs "$WORK/home/logs" "$@"
  ORCH_PID=$PID
  wait_for 15 "$name" ready "$name"
}
declare -A O_CPU O_RSS O_MAX O_ANON
run_orchestrator() {  # run_orchestrator LABEL BIN [FLAGS…]
  local label=$1; shift
  orchestrator "orchestrator-$label" "$@"
  sleep "$WARMUP"
  read -r "O_CPU[$label]" "O_RSS[$label]" "O_MAX[$label]" "O_ANON[$label]" \
    "O_CPU[prom-$label]" "O_RSS[prom-$label]" "O_MAX[prom-$label]" "O_ANON[prom-$label]" \
    <<< "$(measure "$WINDOW" "$ORCH_PID" "$PROM_PID" | paste -sd' ')"
  log "orchestrator ($label): cpu ${O_CPU[$label]}% rss ${O_RSS[$label]} MB (max ${O_MAX[$label]}); prometheus meanwhile: cpu ${O_CPU[prom-$label]}% rss ${O_RSS[prom-$label]} MB"
  stop "$ORCH_PID"
}
LABELS=()
if [ -n "${BASELINE_BIN:-}" ]; then
  log "## orchestrator without charts: $BASELINE_BIN ($("$BASELINE_BIN" --version)) (${WARMUP}s + ${WINDOW}s)"
  run_orchestrator baseline "$BASELINE_BIN"; LABELS+=(baseline)
fi
log "## orchestrator, charts from its own sampler (${WARMUP}s + ${WINDOW}s)"
run_orchestrator sampler "$CHORA"; LABELS+=(sampler)
log "## orchestrator, charts from Prometheus (${WARMUP}s + ${WINDOW}s)"
run_orchestrator prometheus "$CHORA" --prometheus-url "$PROM"; LABELS+=(prometheus)

# 4. Discovery latency.
ROUND=0
latency() {  # latency REFRESH: ROUNDS rounds into $OUT/latency-REFRESHs.tsv
  local lat="$OUT/latency-${1}s.tsv" r i port times gone
  log "## discovery latency, discovery refreshed every ${1}s, $ROUNDS rounds"
  printf 'round\tactive_s\tscraped_s\tgone_s\n' > "$lat"
  for ((r = 1; r <= ROUNDS; r++)); do
    ROUND=$((ROUND + 1)); i=$((N + ROUND)); port=${PORTS[i - 1]}
    read -r SVC KEEP <<< "$(service "$i" "$port")"
    # From the registration being readable to the target active, then scraped up.
    wait_for 30 "svc-$i registered" curl -fsS "$MANIFEST/v1/services/svc-$i"
    times=$(python3 - "$PROM" "svc-$i" <<'PY'
import json, sys, time, urllib.request
prom, svc = sys.argv[1:]
t0 = time.monotonic(); active = None
while time.monotonic() - t0 < 60:
    ts = json.load(urllib.request.urlopen(f"{prom}/api/v1/targets?state=active"))["data"]["activeTargets"]
    mine = [t for t in ts if t["labels"].get("service") == svc]
    if mine and active is None:
        active = time.monotonic() - t0
    if mine and mine[0]["health"] == "up":
        print(f"{active:.2f} {time.monotonic() - t0:.2f}"); break
    time.sleep(0.1)
else:
    print("nan nan")
PY
)
    # From the SIGTERM to its keeper (which deregisters it) to the target gone.
    local t_stop; t_stop=$(date +%s.%N)
    stop "$KEEP"
    gone=$(python3 - "$PROM" "svc-$i" "$t_stop" <<'PY'
import json, sys, time, urllib.request
prom, svc, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() - t0 < 60:
    ts = json.load(urllib.request.urlopen(f"{prom}/api/v1/targets?state=active"))["data"]["activeTargets"]
    if not any(t["labels"].get("service") == svc for t in ts):
        print(f"{time.time() - t0:.2f}"); break
    time.sleep(0.1)
else:
    print("nan")
PY
)
    stop "$SVC"
    log "round $r: registered → active ${times% *} s, → scraped up ${times#* } s; deregistered → gone ${gone} s"
    printf '%s\t%s\t%s\t%s\n' "$r" "${times% *}" "${times#* }" "$gone" >> "$lat"
  done
}
latency "$REFRESH"
if [ "$REFRESH2" != "$REFRESH" ]; then
  stop "$PROM_PID"
  start_prometheus "$REFRESH2"
  wait_for 60 "Prometheus scraping $N targets" at_least "$N" active_up
  latency "$REFRESH2"
fi
lat() {  # lat REFRESH COLUMN: "median (max)" over the rounds
  awk -F'\t' -v c="$2" 'NR > 1 {print $c}' "$OUT/latency-${1}s.tsv" | sort -g | awk '{v[NR] = $1} END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f s (max %.1f s)", m, v[NR] }'
}

echo
echo "| what | CPU, % of one core | memory (RSS mean / max; anonymous) |"
echo "| --- | --- | --- |"
echo "| Manifest alone ($N services heartbeating every 1 s) | ${M0_CPU} % | ${M0_RSS} / ${M0_MAX} MB; ${M0_ANON} MB |"
echo "| Manifest with Prometheus' discovery every ${REFRESH} s | ${M1_CPU} % | ${M1_RSS} / ${M1_MAX} MB; ${M1_ANON} MB |"
echo "| one discovery request ($N targets, ${SD_BYTES} B) | ${SD_US} µs CPU (${SD_WALL} µs wall): every ${REFRESH} s $(awk -v u="$SD_US" -v r="$REFRESH" 'BEGIN { printf "%.4f", u / (r * 1e6) * 100 }') %, every ${REFRESH2} s $(awk -v u="$SD_US" -v r="$REFRESH2" 'BEGIN { printf "%.4f", u / (r * 1e6) * 100 }') % | |"
echo "| Prometheus with nothing to scrape | ${PI_CPU} % | ${PI_RSS} / ${PI_MAX} MB; ${PI_ANON} MB |"
echo "| Prometheus scraping $N services every 5 s (${SERIES} series) | ${P1_CPU} % | ${P1_RSS} / ${P1_MAX} MB; ${P1_ANON} MB |"
for l in "${LABELS[@]}"; do
  case $l in
    baseline) what="orchestrator without charts (BASELINE_BIN)" ;;
    sampler) what="orchestrator, charts sampled from $N × /metrics every 5 s" ;;
    prometheus) what="orchestrator, charts from Prometheus (2 range queries / 5 s)" ;;
  esac
  echo "| $what | ${O_CPU[$l]} % | ${O_RSS[$l]} / ${O_MAX[$l]} MB; ${O_ANON[$l]} MB |"
done
echo "| Prometheus while the dashboard queries it | ${O_CPU[prom-prometheus]} % | ${O_RSS[prom-prometheus]} / ${O_MAX[prom-prometheus]} MB; ${O_ANON[prom-prometheus]} MB |"
echo
two() { [ "$REFRESH2" != "$REFRESH" ] && echo " $1 |"; true; }
echo "| discovery latency ($ROUNDS rounds each, median (max)) | discovery every ${REFRESH} s |$(two "discovery every ${REFRESH2} s")"
echo "| --- | --- |$(two ---)"
row() { echo "| $1 | $(lat "$REFRESH" "$2") |$(two "$(lat "$REFRESH2" "$2")")"; }
row "registered → target active in Prometheus" 2
row "registered → first scrape (up)" 3
row "deregistered → target gone" 4
echo
echo "raw numbers and logs: $OUT"
