#!/usr/bin/env bash
# Prometheus variants side by side (issue 25): N=50 analyzers registered in one
# Manifest (as in bench/metrics.sh), then one Prometheus per line of VARIANTS,
# all started at once and all scraping every service every 5 s (discovery
# refreshed every 1 s, the observers' series dropped: what `chora bootstrap`
# writes), so each variant sees the same services and the same neighbours.
# After WARMUP s, over WINDOW s: each one's CPU (% of one core), VmRSS (mean /
# max, sampled every second), RssAnon (mean) and RssFile, its Go heap in use
# and its head series; its /proc/PID/smaps and /metrics are kept in OUT.
#
#   VARIANTS=variants.txt bench/prometheus-variants.sh
#
# A line of VARIANTS: `name|ENV words|flags|scrape config lines`, e.g.
#   base|||
#   gogc10|GOGC=10|--no-storage.tsdb.wal-compression|
#   limits|||    sample_limit: 2000\n    body_size_limit: 1MB\n
# (`#` starts a comment). Env knobs: N (50), WINDOW (60), WARMUP (60),
# ORCH=1 (each variant also gets an orchestrator drawing its charts from it),
# HOLD=SECONDS (keep them running that long after, writing VmRSS, RssAnon and
# CPU ticks of each every 10 s to OUT/hold.txt), KEEP_ALL=1, CHORA_BIN,
# OUT (/tmp/chora-bench-prometheus-<time>).
# Needs: prometheus, python3, curl.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$HERE/lib.sh"

N="${N:-50}"; WINDOW="${WINDOW:-60}"; WARMUP="${WARMUP:-60}"
VARIANTS="${VARIANTS:?VARIANTS=file, one variant a line (see the head of this script)}"
OUT="${OUT:-/tmp/chora-bench-prometheus-$(date +%H%M)}"
find_chora bench/prometheus-variants.sh
mkdir -p "$OUT"; WORK="$(mktemp -d /tmp/chora-bench-prometheus.XXXXXX)"
clean_on_exit
start() { start_logged "$@"; }
wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local limit=$1 what=$2 t0; shift 2; t0=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    [ $(( $(date +%s) - t0 )) -ge "$limit" ] && { echo "bench/prometheus-variants.sh: $what not within ${limit}s" >&2; exit 1; }
    sleep 0.1
  done
}
read -r PM <<< "$(free_ports 1)"
PORTS=($(free_ports $((N + 40))))
start manifest "$CHORA" manifest serve --listen "127.0.0.1:$PM" --storage "sqlite:$WORK/m.db" \
  --no-auth --ttl 10 --heartbeat-interval 1
wait_for 15 "the Manifest" grep -q "listening on http://" "$OUT/manifest.log"
for ((i = 1; i <= N; i++)); do
  port=${PORTS[i - 1]}; mkdir -p "$WORK/svc-$i"
  (cd "$WORK/svc-$i" && exec "$CHORA" capability serve --name analyzer --listen "127.0.0.1:$port" \
     --manifest-url http://127.0.0.1:1 > "$OUT/svc-$i.log" 2>&1) &
  svc=$!; PIDS+=("$svc")
  wait_for 15 "svc-$i" grep -q "listening on http://" "$OUT/svc-$i.log"
  start "keep-$i" "$CHORA" keep-registered --name "svc-$i" --id "svc-$i-bench" --version 1.0.0 \
    --rest "http://127.0.0.1:$port" --health "http://127.0.0.1:$port/health" \
    --manifest-url "http://127.0.0.1:$PM" --unit "process:$svc:$(awk '{print $22}' "/proc/$svc/stat")"
done
echo "# $(date -u +%FT%TZ) $N services up; prometheus: $(prometheus --version 2>&1 | head -1); load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/table.md"

names=(); ppids=(); pports=(); k=0
while IFS='|' read -r name envw args extra; do
  { [ -z "$name" ] || [[ $name == \#* ]]; } && continue
  pp=${PORTS[N + k]}; d="$WORK/p-$name"; mkdir -p "$d"
  { printf 'global:\n  scrape_interval: 5s\n  scrape_timeout: 4s\n  evaluation_interval: 5s\n'
    printf 'scrape_configs:\n  - job_name: chora\n    metrics_path: /metrics\n'
    printf '%b' "$extra"
    printf '    http_sd_configs:\n      - url: http://127.0.0.1:%s/v1/prometheus/targets\n        refresh_interval: 1s\n' "$PM"
    [ "${KEEP_ALL:-0}" = 1 ] || printf '    metric_relabel_configs:\n      - source_labels: [endpoint]\n        regex: /metrics|/v1/metrics|/health|/v1/health\n        action: drop\n'
  } > "$d/prometheus.yml"
  cp "$d/prometheus.yml" "$OUT/$name.yml"
  # shellcheck disable=SC2086 # envw: NAME=VALUE words, args: flags
  start "prometheus-$name" env $envw prometheus --config.file="$d/prometheus.yml" \
    --storage.tsdb.path="$d/data" --web.listen-address="127.0.0.1:$pp" $args
  names+=("$name"); ppids+=("$PID"); pports+=("$pp")
  if [ "${ORCH:-0}" = 1 ]; then
    op=${PORTS[N + 20 + k]}; mkdir -p "$WORK/o-$name/logs"
    start "orchestrator-$name" "$CHORA" orchestrator serve --listen "127.0.0.1:$op" \
      --manifest-url "http://127.0.0.1:$PM" --no-auth --home "$WORK/o-$name" \
      --logs "$WORK/o-$name/logs" --prometheus-url "http://127.0.0.1:$pp"
  fi
  k=$((k + 1))
done < "$VARIANTS"
sleep "$WARMUP"
up() {  # up PORT: targets scraped up
  curl -fsS "127.0.0.1:$1/api/v1/targets?state=active" | python3 -c \
    'import json,sys; print(sum(1 for t in json.load(sys.stdin)["data"]["activeTargets"] if t["health"] == "up"))'
}
for i in "${!names[@]}"; do echo "${names[i]}: $(up "${pports[i]}") targets up"; done
t0=(); sum=(); max=(); anon=()
for i in "${!ppids[@]}"; do
  t0[i]=$(awk '{print $14 + $15}' "/proc/${ppids[i]}/stat"); sum[i]=0; max[i]=0; anon[i]=0
done
for ((s = 0; s < WINDOW; s++)); do
  sleep 1
  for i in "${!ppids[@]}"; do
    read -r kb an <<< "$(awk '/^VmRSS/ {r = $2} /^RssAnon/ {a = $2} END {print r, a}' "/proc/${ppids[i]}/status")"
    sum[i]=$((sum[i] + kb)); anon[i]=$((anon[i] + an)); [ "$kb" -gt "${max[i]}" ] && max[i]=$kb
  done
done
{
  echo "# load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "| variant | CPU, % of one core | RSS mean / max MB | anonymous MB | file MB | Go heap in use MB | series |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
} | tee -a "$OUT/table.md"
for i in "${!ppids[@]}"; do
  p=${ppids[i]}; pp=${pports[i]}; n=${names[i]}
  d=$(( $(awk '{print $14 + $15}' "/proc/$p/stat") - t0[i] ))
  f=$(awk '/^RssFile/ {print $2}' "/proc/$p/status")
  cp "/proc/$p/smaps" "$OUT/$n.smaps"
  curl -fsS "127.0.0.1:$pp/metrics" > "$OUT/$n.metrics"
  hi=$(awk '/^go_memstats_heap_inuse_bytes/ {printf "%.1f", $2 / 1048576}' "$OUT/$n.metrics")
  se=$(curl -fsS "127.0.0.1:$pp/api/v1/status/tsdb" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["headStats"]["numSeries"])')
  awk -v n="$n" -v d="$d" -v hz="$HZ" -v w="$WINDOW" -v s="${sum[i]}" -v m="${max[i]}" -v a="${anon[i]}" -v f="$f" -v hi="$hi" -v se="$se" \
    'BEGIN { printf "| %s | %.2f | %.1f / %.1f | %.1f | %.1f | %s | %s |\n", n, d / hz / w * 100, s / w / 1024, m / 1024, a / w / 1024, f / 1024, hi, se }'
done | tee -a "$OUT/table.md"
if [ -n "${HOLD:-}" ]; then
  end=$(( $(date +%s) + HOLD ))
  while [ "$(date +%s)" -lt "$end" ]; do
    for i in "${!ppids[@]}"; do
      echo "$(date +%s) ${names[i]} $(awk '/^VmRSS/ {r = $2} /^RssAnon/ {a = $2} END {print r, a}' "/proc/${ppids[i]}/status") $(awk '{print $14 + $15}' "/proc/${ppids[i]}/stat")"
    done >> "$OUT/hold.txt"
    sleep 10
  done
fi
echo "raw: $OUT"
