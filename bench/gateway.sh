#!/usr/bin/env bash
# Gateway benchmark (issue 3): `POST /analyze` to the analyzer directly, through the
# chora gateway and through nginx (Debian's package, as a reverse proxy to the same
# analyzer), side by side in one run, on the same machine.
#
#   bench/gateway.sh                  # full run (DUR=10s, N=3 rounds; ~6 minutes)
#   DUR=5s N=1 bench/gateway.sh       # quick run
#
# What it does:
#   1. cargo build --release -p chora in this checkout (skip with CHORA_BIN=/path/to/chora);
#      rustc -O bench/loadgen.rs (the fixed-rate load generator, std only).
#   2. In a temp dir, on 127.0.0.1 and free ports: `chora manifest serve --no-auth`
#      (SQLite), `chora capability serve --name analyzer` registered there, `chora gateway
#      serve` following that registry; two nginx instances proxying to the analyzer
#      (worker_processes 1 and auto), upstream keepalive 64, HTTP/1.1 to the upstream,
#      the same X-Forwarded-For / X-Forwarded-Proto / X-Request-Id headers the gateway
#      sets, keepalive_requests raised so that nginx does not close keep-alive
#      connections every 1,000 requests, access_log off.
#   3. Peak: N rounds of `wrk -t2 -c32 -d$DUR --latency -s bench/wrk/post_analyze.lua`
#      against each target (direct, gateway, nginx w1, nginx auto), interleaved.
#   4. Half load: R = 50% of the gateway's median peak req/s; N rounds of
#      `loadgen --rate R --conns 32 --duration DUR` against each target (open loop,
#      latency measured from each request's intended send time, as wrk2 does).
#   5. Prints a markdown table (medians over the N rounds) and the issue's two goals.
#   TLS (issue 24; TLS=0 skips it): the same gateway also serves HTTPS with a self-signed
#   certificate (`--tls-self-signed`, ECDSA P-256, `--http serve` so the plain rows are
#   unchanged), and each nginx serves HTTPS too (`listen … ssl`) with the same
#   certificate and key files, TLSv1.2/1.3, its defaults otherwise. N rounds more of
#   `wrk -t2 -c32` against https on each (gateway-tls, nginx-w1-tls, nginx-auto-tls):
#   keep-alive (requests/s over TLS) and `-H 'Connection: close'` (a new connection and
#   a full handshake per request: handshakes/s). A second table gives both, and the
#   gateway's ratio to the faster nginx.
#   Before every run it waits until no `wrk` runs and the machine is idle (<10% of all
#   cores busy over 1 s; up to QUIET_MAX seconds, then it proceeds and says so), and
#   after every run it reports the CPU used by the analyzer, the proxy, the load
#   generator and everything else; a run during which other processes used more than
#   MAX_OTHER cores is repeated (up to 3 attempts).
#
# Needs: wrk, nginx (apt-get install -y wrk nginx-light), curl, python3, rustc, cargo.
#   6. With SWEEP="0.2 0.3 0.4" (fractions of the gateway's peak), N rounds more of step 4
#      at each of those rates, and a table of p99 and added p99 by load.
#   7. PIN=1 (the default on 2 or more CPUs): the load generator (wrk, loadgen) runs on
#      CPU 0 only and every server (manifest, analyzer, gateway, nginx) on the other CPUs
#      only (taskset), so that the load generator does not queue with the proxy for a
#      core and the added p99 is the proxy's. On a 2-core machine the servers then have
#      one core: the gateway and the analyzer size their runtimes to it, nginx-auto has
#      as many workers as nginx counts CPUs (the table says how many). BENCHMARKS.md's
#      figures of record are pinned. PIN=0 lets everything share all the cores.
# Env knobs: DUR (10s), N (3 rounds), CONNS (32), CHORA_BIN (skip the build), SWEEP (none), PIN (1; 0 on one CPU), TLS (1),
#   HALF (1; 0 skips the half-load runs),
#   MAX_OTHER (0.15 cores), QUIET_MAX (300 s), OUT (dir for raw output; default
#   /tmp/chora-bench-gateway-<date>).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$HERE/lib.sh"
DUR="${DUR:-10s}"
N="${N:-3}"
CONNS="${CONNS:-32}"
MAX_OTHER="${MAX_OTHER:-0.15}"
QUIET_MAX="${QUIET_MAX:-300}"
OUT="${OUT:-/tmp/chora-bench-gateway-$(date +%F)}"
SWEEP="${SWEEP:-}"
TLS="${TLS:-1}"
HALF="${HALF:-1}"
NCPU=$(nproc)
PIN="${PIN:-$([ "$NCPU" -ge 2 ] && command -v taskset >/dev/null && echo 1 || echo 0)}"
BODY='{"text":"the quick brown fox jumps over the lazy dog"}'
DUR_S="${DUR%s}"

for tool in wrk nginx curl python3 rustc; do
  command -v "$tool" >/dev/null || {
    echo "bench/gateway.sh: missing $tool — install with: apt-get install -y wrk nginx-light curl python3 (rustc: rustup)" >&2
    exit 1
  }
done

mkdir -p "$OUT"
RESULTS="$OUT/raw.txt"
: > "$RESULTS"
log() { echo "$@" | tee -a "$RESULTS"; }

WORK="$(mktemp -d /tmp/chora-bench-gw.XXXXXX)"
PIDS=()      # servers we started, stopped in reverse order
LOAD_PID=""  # the running wrk / loadgen
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$LOAD_PID" ] && stop_pid "$LOAD_PID"
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
  # keep the servers' logs next to the raw output
  cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build
find_chora bench/gateway.sh
LOADGEN="$WORK/loadgen"
rustc -O --edition 2024 "$HERE/loadgen.rs" -o "$LOADGEN"

# ---------------------------------------------------------------- helpers
# PIN=1: prefixes that put the load generator on CPU 0 and the servers on the rest
LOADP=(); SRVP=()
PIN_NOTE="PIN=0: the load generator and every server share all $NCPU CPUs."
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || { echo "bench/gateway.sh: PIN=1 needs taskset (util-linux)" >&2; exit 1; }
  [ "$NCPU" -ge 2 ] || { echo "bench/gateway.sh: PIN=1 needs at least 2 CPUs" >&2; exit 1; }
  LOADP=(taskset -c 0); SRVP=(taskset -c "1-$((NCPU - 1))")
  PIN_NOTE="PIN=1: the load generator on CPU 0, every server on CPUs 1-$((NCPU - 1))."
fi
pids_jiffies() { local s=0 p; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$s"; }
QUIET_NOTES=0
wait_quiet() {
  local b0 b1 waited=0
  while :; do
    if ! pgrep -x wrk >/dev/null; then
      b0=$(busy_jiffies); sleep 1; b1=$(busy_jiffies)
      [ $(( (b1 - b0) * 100 / (HZ * NCPU) )) -lt 10 ] && return 0
    else
      sleep 1
    fi
    waited=$((waited + 1))
    if [ "$waited" -ge "$QUIET_MAX" ]; then
      log "WARNING: machine not idle (or another wrk running) after ${QUIET_MAX}s; proceeding anyway"
      QUIET_NOTES=$((QUIET_NOTES + 1))
      return 0
    fi
  done
}
# start NAME CMD...: runs CMD in the background (stdout NAME.out, stderr NAME.log),
# waits for the readiness line `listening on http://ADDR`, sets ADDR.
start() {
  local name=$1; shift
  "$@" > "$WORK/$name.out" 2> "$WORK/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 300); do
    if grep -q 'listening on http://' "$WORK/$name.out" 2>/dev/null; then
      ADDR=$(sed -nE 's|.*listening on http://([^ ]+).*|\1|p' "$WORK/$name.out" | head -1)
      LAST_PID=$pid
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "bench/gateway.sh: $name exited:" >&2; cat "$WORK/$name.out" "$WORK/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench/gateway.sh: $name did not print its readiness line in 30 s" >&2; exit 1
}

# ---------------------------------------------------------------- start the pieces
cd "$WORK"
start manifest "${SRVP[@]}" "$CHORA" manifest serve --no-auth --listen 127.0.0.1:0 --storage "sqlite:$WORK/m.db"
MANIFEST="http://$ADDR"
MANIFEST_URL="$MANIFEST" start analyzer "${SRVP[@]}" "$CHORA" capability serve --name analyzer --listen 127.0.0.1:0
ANALYZER_ADDR=$ADDR; ANALYZER_PID=$LAST_PID
GW_TLS_ARGS=()
[ "$TLS" = 1 ] && GW_TLS_ARGS=(--tls-self-signed "$WORK/tls" --tls-listen 127.0.0.1:0 --http serve)
start gateway "${SRVP[@]}" "$CHORA" gateway serve --listen 127.0.0.1:0 --manifest-url "$MANIFEST" "${GW_TLS_ARGS[@]}"
GATEWAY_ADDR=$ADDR; GATEWAY_PID=$LAST_PID
# the readiness line: … (https://ADDR, CA PATH)
GATEWAY_TLS_ADDR=$(sed -nE 's|.*\(https://([^,)]+).*|\1|p' "$WORK/gateway.out" | head -1)
[ "$TLS" = 1 ] && [ -z "$GATEWAY_TLS_ADDR" ] && { echo "bench/gateway.sh: no https address in the gateway's readiness line" >&2; cat "$WORK/gateway.out" >&2; exit 1; }
ok=0
for _ in $(seq 1 300); do
  if curl -sf -o /dev/null -XPOST -H 'Content-Type: application/json' \
       "http://$GATEWAY_ADDR/api/v1/analyzer/analyze" -d '{"text":"x"}'; then ok=1; break; fi
  sleep 0.1
done
[ "$ok" = 1 ] || { echo "bench/gateway.sh: the gateway never routed to the analyzer (30 s)" >&2; exit 1; }

mkdir -p "$WORK/nginx-tmp"
start_nginx() {  # start_nginx LABEL WORKERS PORT [TLS_PORT]
  local label=$1 workers=$2 port=$3 tls_port=${4:-} conf="$WORK/nginx-$1.conf" tls_server=""
  # HTTPS with the gateway's own certificate and key files, the same routes
  [ -n "$tls_port" ] && tls_server="
  server {
    listen 127.0.0.1:$tls_port ssl;
    ssl_certificate $WORK/tls/gateway.pem;
    ssl_certificate_key $WORK/tls/gateway-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://analyzer;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id;
    }
  }"
  cat > "$conf" <<EOF
daemon off;
worker_processes $workers;
pid $WORK/nginx-$label.pid;
error_log $WORK/nginx-$label.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-tmp/body-$label;
  proxy_temp_path $WORK/nginx-tmp/proxy-$label;
  fastcgi_temp_path $WORK/nginx-tmp/fastcgi-$label;
  uwsgi_temp_path $WORK/nginx-tmp/uwsgi-$label;
  scgi_temp_path $WORK/nginx-tmp/scgi-$label;
  keepalive_requests 1000000;
  upstream analyzer {
    server $ANALYZER_ADDR;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://analyzer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id;
    }
  }$tls_server
}
EOF
  nginx -t -q -c "$conf" -p "$WORK" -e "$WORK/nginx-$label.log"
  "${SRVP[@]}" nginx -c "$conf" -p "$WORK" -e "$WORK/nginx-$label.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null -XPOST -H 'Content-Type: application/json' "http://127.0.0.1:$port/analyze" -d '{"text":"x"}' && { LAST_PID=$pid; return 0; }
    kill -0 "$pid" 2>/dev/null || { echo "bench/gateway.sh: nginx ($label) exited:" >&2; cat "$WORK/nginx-$label.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench/gateway.sh: nginx ($label) does not answer" >&2; exit 1
}
NGINX1_TLS_PORT=""; NGINXA_TLS_PORT=""
if [ "$TLS" = 1 ]; then read -r NGINX1_TLS_PORT NGINXA_TLS_PORT <<<"$(free_ports 2)"; fi
NGINX1_PORT=$(free_port); start_nginx w1 1 "$NGINX1_PORT" "$NGINX1_TLS_PORT"; NGINX1_PID=$LAST_PID
NGINXA_PORT=$(free_port); start_nginx auto auto "$NGINXA_PORT" "$NGINXA_TLS_PORT"; NGINXA_PID=$LAST_PID

TARGETS=(direct gateway nginx-w1 nginx-auto)
declare -A URL PROXY_PIDS
URL[direct]="http://$ANALYZER_ADDR/analyze"
URL[gateway]="http://$GATEWAY_ADDR/api/v1/analyzer/analyze"
URL[nginx-w1]="http://127.0.0.1:$NGINX1_PORT/analyze"
URL[nginx-auto]="http://127.0.0.1:$NGINXA_PORT/analyze"
TLS_TARGETS=()
if [ "$TLS" = 1 ]; then
  TLS_TARGETS=(gateway-tls nginx-w1-tls nginx-auto-tls)
  URL[gateway-tls]="https://$GATEWAY_TLS_ADDR/api/v1/analyzer/analyze"
  URL[nginx-w1-tls]="https://127.0.0.1:$NGINX1_TLS_PORT/analyze"
  URL[nginx-auto-tls]="https://127.0.0.1:$NGINXA_TLS_PORT/analyze"
fi
proxy_pids() {  # the proxy's processes (nginx: master + workers)
  case ${1%-tls} in
    direct) ;;
    gateway) echo "$GATEWAY_PID" ;;
    nginx-w1) echo "$NGINX1_PID" $(pgrep -P "$NGINX1_PID") ;;
    nginx-auto) echo "$NGINXA_PID" $(pgrep -P "$NGINXA_PID") ;;
  esac
}

log "# Gateway benchmark — $(date -u +%FT%TZ)"
log "# host: $(uname -srm), $NCPU cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "# chora: $("$CHORA" --version 2>/dev/null || echo '?') ($CHORA)"
log "# wrk: $(wrk -v 2>&1 | head -1)"
log "# nginx: $(nginx -v 2>&1) (nginx-w1: worker_processes 1; nginx-auto: worker_processes auto = $NCPU)"
log "# analyzer $ANALYZER_ADDR, gateway $GATEWAY_ADDR, manifest $MANIFEST, nginx-w1 :$NGINX1_PORT, nginx-auto :$NGINXA_PORT"
log "# nginx workers: w1 $(pgrep -P "$NGINX1_PID" | wc -l), auto $(pgrep -P "$NGINXA_PID" | wc -l)"
log "# $PIN_NOTE"
[ "$PIN" = 1 ] && log "# gateway affinity: $(taskset -pc "$GATEWAY_PID" | sed 's/.*: //')"
log ""
log "## Sanity: one request to each target"
CACERT=(); [ "$TLS" = 1 ] && CACERT=(--cacert "$WORK/tls/ca.pem")
for t in "${TARGETS[@]}" "${TLS_TARGETS[@]}"; do
  log "$t: $(curl -s "${CACERT[@]}" -XPOST -H 'Content-Type: application/json' -w ' -> %{http_code}' "${URL[$t]}" -d "$BODY")"
done
[ "$TLS" = 1 ] && log "# TLS: $(openssl x509 -in "$WORK/tls/gateway.pem" -noout -text 2>/dev/null | grep -m1 'Public Key Algorithm' | sed 's/^ *//'), $(echo | openssl s_client -connect "$GATEWAY_TLS_ADDR" -CAfile "$WORK/tls/ca.pem" 2>/dev/null | grep -m1 -E '^New,' || echo '?') (gateway); $(echo | openssl s_client -connect "127.0.0.1:$NGINX1_TLS_PORT" -CAfile "$WORK/tls/ca.pem" 2>/dev/null | grep -m1 -E '^New,' || echo '?') (nginx)"

# ---------------------------------------------------------------- runs
# run KIND TARGET ROUND [RATE]: KIND=peak (wrk), tls-ka (wrk, keep-alive), tls-hs (wrk,
# Connection: close: a handshake per request), or half / sweep-F (loadgen at RATE,
# default $HALF_RATE). Appends a line to $OUT/KIND.tsv: target round rps p50 p99 non2xx errors proxy_cpu analyzer_cpu load_cpu other_cpu note
: > "$OUT/peak.tsv"; : > "$OUT/half.tsv"; : > "$OUT/tls-ka.tsv"; : > "$OUT/tls-hs.tsv"
run() {
  local kind=$1 t=$2 round=$3 rate=${4:-${HALF_RATE:-}} attempt out pp b0 b1 a0 a1 p0 p1 c0 c1 t0 t1 cpu other line rc
  pp=$(proxy_pids "$t")
  for attempt in 1 2 3; do
    out="$OUT/$kind-$t-r$round-a$attempt.txt"
    log ""
    log "=== $kind | $t | round $round | attempt $attempt ==="
    wait_quiet
    b0=$(busy_jiffies); a0=$(pids_jiffies "$ANALYZER_PID"); p0=$(pids_jiffies $pp); child_secs_to 0; c0=$(child_secs 0); t0=$(date +%s.%N)
    if [ "$kind" = peak ] || [ "$kind" = tls-ka ]; then
      "${LOADP[@]}" wrk -t2 -c"$CONNS" -d"$DUR" --latency -s "$HERE/wrk/post_analyze.lua" "${URL[$t]}" > "$out" 2>&1 &
    elif [ "$kind" = tls-hs ]; then
      "${LOADP[@]}" wrk -t2 -c"$CONNS" -d"$DUR" --latency -H 'Connection: close' -s "$HERE/wrk/post_analyze.lua" "${URL[$t]}" > "$out" 2>&1 &
    else
      "${LOADP[@]}" "$LOADGEN" --url "${URL[$t]}" --body "$BODY" --rate "$rate" --conns "$CONNS" --duration "$DUR_S" --warmup 2 > "$out" 2>&1 &
    fi
    LOAD_PID=$!
    rc=0; wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    b1=$(busy_jiffies); a1=$(pids_jiffies "$ANALYZER_PID"); p1=$(pids_jiffies $pp); child_secs_to 1; c1=$(child_secs 1); t1=$(date +%s.%N)
    cat "$out" >> "$RESULTS"
    [ "$rc" = 0 ] || { log "load generator failed (exit $rc)"; exit 1; }
    cpu=$(awk -v b=$((b1 - b0)) -v a=$((a1 - a0)) -v p=$((p1 - p0)) -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$HZ" \
      'BEGIN{t=t1-t0; w=c1-c0; o=b/hz-a/hz-p/hz-w; if(o<0)o=0;
             printf "%.2f %.2f %.2f %.2f", p/hz/t, a/hz/t, w/t, o/t}')
    read -r pc ac lc other <<<"$cpu"
    log "CPU during run (avg cores): proxy=$pc analyzer=$ac load-generator=$lc other(incl. kernel)=$other"
    if awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN{exit !(o <= m)}' || [ "$attempt" = 3 ]; then break; fi
    log "DISCARDED: other processes used $other cores (> $MAX_OTHER) during this run"
  done
  local note=""
  awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN{exit !(o > m)}' && note="noisy (other=$other)"
  line=$(grep '^RESULT' "$out")
  field() { sed -nE "s/.* $1=([0-9.a-z]+).*/\1/p" <<<"$line"; }
  local errs
  case $kind in peak|tls-*) errs=$(field sock_errors) ;; *) errs=$(field errors) ;; esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$round" "$(field rps)" "$(field p50_ms)" "$(field p99_ms)" \
    "$(field non2xx)" "$errs" "$pc" "$ac" "$lc" "$other" "$note" >> "$OUT/$kind.tsv"
}

for r in $(seq 1 "$N"); do
  for t in "${TARGETS[@]}"; do run peak "$t" "$r"; done
done
for r in $(seq 1 "$N"); do
  for t in "${TLS_TARGETS[@]}"; do run tls-ka "$t" "$r"; run tls-hs "$t" "$r"; done
done
# median of column COL over the rounds of TARGET in FILE
# (over the clean rounds only, when there is one: a round kept after 3 noisy attempts counts only if all are noisy)
med() { awk -F'\t' -v t="$2" -v c="$3" '$1==t {n++; v[n]=$c; clean[n]=($12=="")} END {k=0; for(i=1;i<=n;i++) if(clean[i]) k++; for(i=1;i<=n;i++) if(clean[i] || k==0) print v[i]}' "$1" | sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2}'; }
sum() { awk -F'\t' -v t="$2" -v c="$3" '$1==t {s+=$c} END {print s+0}' "$1"; }
GW_PEAK=$(med "$OUT/peak.tsv" gateway 3)
HALF_RATE=$(awk -v r="$GW_PEAK" 'BEGIN{printf "%.0f", r/2}')
log ""
log "## Half load: $HALF_RATE req/s (50% of the gateway's median peak $GW_PEAK req/s)"
if [ "$HALF" = 1 ]; then
  for r in $(seq 1 "$N"); do
    for t in "${TARGETS[@]}"; do run half "$t" "$r"; done
  done
fi
# The sweep: the same fixed-rate runs at other fractions of the gateway's peak, to
# show where each proxy's added p99 crosses the 1 ms of the goal.
declare -A SWEEP_RATE
for f in $SWEEP; do
  SWEEP_RATE[$f]=$(awk -v r="$GW_PEAK" -v f="$f" 'BEGIN{printf "%.0f", r*f}')
  log ""
  log "## Sweep: ${SWEEP_RATE[$f]} req/s ($f of the gateway's median peak)"
  : > "$OUT/sweep-$f.tsv"
  for r in $(seq 1 "$N"); do
    for t in "${TARGETS[@]}"; do run "sweep-$f" "$t" "$r" "${SWEEP_RATE[$f]}"; done
  done
done

# ---------------------------------------------------------------- report
log ""
log "## Server-side checks"
log "gateway stderr: $(wc -l < "$WORK/gateway.log") lines, $(grep -ciE 'warn|error' "$WORK/gateway.log" || true) with warn/error"
log "analyzer stderr: $(wc -l < "$WORK/analyzer.log") lines, $(grep -ciE 'warn|error' "$WORK/analyzer.log" || true) with warn/error"
log "nginx error logs: w1 $(grep -c . "$WORK/nginx-w1.log" || true) lines, auto $(grep -c . "$WORK/nginx-auto.log" || true) lines"
log "gateway /metrics (gateway_requests):"
curl -s "http://$GATEWAY_ADDR/metrics" | grep '^gateway_requests' | tee -a "$RESULTS" || true
log "RSS after: gateway $(awk '/^VmRSS/ {print $2}' /proc/$GATEWAY_PID/status) kB, analyzer $(awk '/^VmRSS/ {print $2}' /proc/$ANALYZER_PID/status) kB, nginx-auto workers $(for p in $(pgrep -P "$NGINXA_PID"); do awk '/^VmRSS/ {printf "%s ", $2}' /proc/$p/status; done)kB"

TABLE="$OUT/table.md"
{
  echo "$PIN_NOTE nginx-auto ran $(pgrep -P "$NGINXA_PID" | wc -l) worker(s)."
  echo "Medians over $N round(s); peak = \`wrk -t2 -c$CONNS -d$DUR --latency\`; half load = \`loadgen --rate $HALF_RATE --conns $CONNS --duration $DUR_S\` (fixed rate, latency from the intended send time)."
  echo ""
  echo "| target | peak req/s | peak p50 ms | peak p99 ms | proxy CPU at peak (cores) | half-load req/s | half-load p50 ms | half-load p99 ms | non-2xx / errors (all runs) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for t in "${TARGETS[@]}"; do
    pcpu=$(med "$OUT/peak.tsv" "$t" 8); [ "$t" = direct ] && pcpu="-"
    printf '| %s | %.0f | %s | %s | %s | %.0f | %s | %s | %s / %s |\n' "$t" \
      "$(med "$OUT/peak.tsv" "$t" 3)" "$(med "$OUT/peak.tsv" "$t" 4)" "$(med "$OUT/peak.tsv" "$t" 5)" "$pcpu" \
      "$(med "$OUT/half.tsv" "$t" 3)" "$(med "$OUT/half.tsv" "$t" 4)" "$(med "$OUT/half.tsv" "$t" 5)" \
      "$(( $(sum "$OUT/peak.tsv" "$t" 6) + $(sum "$OUT/half.tsv" "$t" 6) ))" \
      "$(( $(sum "$OUT/peak.tsv" "$t" 7) + $(sum "$OUT/half.tsv" "$t" 7) ))"
  done
  echo ""
  NG1=$(med "$OUT/peak.tsv" nginx-w1 3); NGA=$(med "$OUT/peak.tsv" nginx-auto 3)
  NGBEST=$(awk -v a="$NG1" -v b="$NGA" 'BEGIN{print (a>b)?a:b}')
  NGBEST_NAME=$(awk -v a="$NG1" -v b="$NGA" 'BEGIN{print (a>b)?"nginx-w1":"nginx-auto"}')
  R1=$(awk -v g="$GW_PEAK" -v n="$NG1" 'BEGIN{printf "%.0f", 100*g/n}')
  RA=$(awk -v g="$GW_PEAK" -v n="$NGA" 'BEGIN{printf "%.0f", 100*g/n}')
  RB=$(awk -v g="$GW_PEAK" -v n="$NGBEST" 'BEGIN{printf "%.0f", 100*g/n}')
  D99=$(med "$OUT/half.tsv" direct 5); G99=$(med "$OUT/half.tsv" gateway 5)
  ADD=$(awk -v g="$G99" -v d="$D99" 'BEGIN{printf "%.3f", g-d}')
  G1=$(awk -v r="$RB" 'BEGIN{print (r>=80)?"met":"missed"}')
  G2=$(awk -v a="$ADD" 'BEGIN{print (a<=1.0)?"met":"missed"}')
  echo "- Throughput: gateway / nginx = $R1% (vs nginx-w1), $RA% (vs nginx-auto); goal >= 80% of the faster nginx ($NGBEST_NAME): **$G1** ($RB%)."
  [ "$HALF" = 1 ] && echo "- Added p99 at half load ($HALF_RATE req/s): gateway p99 $G99 ms - direct p99 $D99 ms = **$ADD ms**; goal <= 1 ms: **$G2**."
  [ "$QUIET_NOTES" = 0 ] || echo "- $QUIET_NOTES run(s) started without the machine being idle (see raw output)."
  if [ -n "$SWEEP" ]; then
    echo ""
    echo "Added p99 by load (\`loadgen --conns $CONNS\`, medians over $N round(s); the 0.5 row is the half-load run above):"
    echo ""
    echo "| fraction of gateway peak | req/s | direct p99 ms | gateway p99 ms (added) | nginx-w1 p99 ms (added) | nginx-auto p99 ms (added) | CPU µs/req gateway / nginx-auto / analyzer / load generator |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for f in $(printf '%s\n' $SWEEP 0.5 | sort -gu); do
      if [ "$f" = 0.5 ]; then file="$OUT/half.tsv"; rate=$HALF_RATE; else file="$OUT/sweep-$f.tsv"; rate=${SWEEP_RATE[$f]}; fi
      d=$(med "$file" direct 5)
      cell() { local v; v=$(med "$file" "$1" 5); awk -v v="$v" -v d="$d" 'BEGIN{printf "%s (%+.2f)", v, v-d}'; }
      us() { awk -v c="$(med "$file" "$1" "$2")" -v r="$rate" 'BEGIN{printf "%.0f", c*1e6/r}'; }
      printf '| %s | %s | %s | %s | %s | %s | %s / %s / %s / %s |\n' "$f" "$rate" "$d" "$(cell gateway)" "$(cell nginx-w1)" "$(cell nginx-auto)" \
        "$(us gateway 8)" "$(us nginx-auto 8)" "$(us gateway 9)" "$(us gateway 10)"
    done
  fi
  if [ "$TLS" = 1 ]; then
    echo ""
    echo "TLS (medians over $N round(s), \`wrk -t2 -c$CONNS -d$DUR\`; handshakes: the same with \`-H 'Connection: close'\`, a new connection and a full handshake per request):"
    echo ""
    echo "| target | TLS keep-alive req/s | p99 ms | proxy CPU µs/req | TLS handshakes/s | p99 ms | proxy CPU µs/handshake | load generator CPU (cores) | non-2xx / errors (all runs) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    per() { awk -v c="$(med "$1" "$2" 8)" -v r="$(med "$1" "$2" 3)" 'BEGIN{printf "%.1f", c*1e6/r}'; }
    for t in "${TLS_TARGETS[@]}"; do
      printf '| %s | %.0f | %s | %s | %.0f | %s | %s | %s | %s / %s |\n' "$t" \
        "$(med "$OUT/tls-ka.tsv" "$t" 3)" "$(med "$OUT/tls-ka.tsv" "$t" 5)" "$(per "$OUT/tls-ka.tsv" "$t")" \
        "$(med "$OUT/tls-hs.tsv" "$t" 3)" "$(med "$OUT/tls-hs.tsv" "$t" 5)" "$(per "$OUT/tls-hs.tsv" "$t")" "$(med "$OUT/tls-hs.tsv" "$t" 10)" \
        "$(( $(sum "$OUT/tls-ka.tsv" "$t" 6) + $(sum "$OUT/tls-hs.tsv" "$t" 6) ))" \
        "$(( $(sum "$OUT/tls-ka.tsv" "$t" 7) + $(sum "$OUT/tls-hs.tsv" "$t" 7) ))"
    done
    echo ""
    for kind in tls-ka tls-hs; do
      g=$(med "$OUT/$kind.tsv" gateway-tls 3); a=$(med "$OUT/$kind.tsv" nginx-w1-tls 3); b=$(med "$OUT/$kind.tsv" nginx-auto-tls 3)
      best=$(awk -v a="$a" -v b="$b" 'BEGIN{print (a>b)?a:b}'); bestn=$(awk -v a="$a" -v b="$b" 'BEGIN{print (a>b)?"nginx-w1-tls":"nginx-auto-tls"}')
      r=$(awk -v g="$g" -v n="$best" 'BEGIN{printf "%.0f", 100*g/n}')
      what=$([ "$kind" = tls-ka ] && echo "TLS keep-alive req/s" || echo "TLS handshakes/s")
      echo "- $what: gateway / faster nginx ($bestn) = $r%; goal >= 100%: **$(awk -v r="$r" 'BEGIN{print (r>=100)?"met":"missed"}')**."
    done
    echo "- With a new connection per request the load generator's own handshakes (one core) may be the limit; then CPU per handshake compares the servers."
  fi
  noisy=$(cat "$OUT/peak.tsv" "$OUT/half.tsv" "$OUT/tls-ka.tsv" "$OUT/tls-hs.tsv" | awk -F'\t' '$12!=""' | wc -l)
  [ "$noisy" = 0 ] || echo "- $noisy run(s) kept although other processes used > $MAX_OTHER cores (3 attempts exhausted); medians leave them out where a clean round exists."
} > "$TABLE"
log ""
log "## Per-run rows (target round rps p50 p99 non2xx errors proxy_cpu analyzer_cpu load_cpu other_cpu note)"
log "### peak"; cat "$OUT/peak.tsv" | tee -a "$RESULTS"
log "### half"; cat "$OUT/half.tsv" | tee -a "$RESULTS"
log "### tls-ka"; cat "$OUT/tls-ka.tsv" | tee -a "$RESULTS"
log "### tls-hs"; cat "$OUT/tls-hs.tsv" | tee -a "$RESULTS"
log ""
log "## Result"
tee -a "$RESULTS" < "$TABLE"
echo "(raw output: $OUT)" >&2
