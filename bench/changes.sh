#!/usr/bin/env bash
# Changes to a running system (issue 21, DESIGN §14): how long `chora bootstrap`
# takes to apply one changed service, and what clients see meanwhile, beside what
# a Compose user gets for the same change (`docker-compose up -d` recreates the
# container). N rounds each, medians.
#
#   bench/changes.sh            # N=5 (dev processes; with Docker also staging and compose)
#   N=3 SKIP_DOCKER=1 bench/changes.sh
#
# Rows:
#   chora-dev      dev template (processes); the analyzer's env changes each round;
#                  a client POSTs /api/v1/analyzer/analyze through the gateway in a
#                  loop (one connection, keep-alive) from before the run to after it
#   chora-staging  the same on the staging template (every service a container)
#   compose        a compose file with the analyzer container alone (same image and
#                  command, port on 127.0.0.1); its environment changes each round and
#                  `docker-compose up -d` recreates it; the client POSTs /analyze to its
#                  published port (no gateway: compose has none)
# Columns: the apply's wall time, requests made during it, requests that failed, the
# longest gap between two answered requests.
#
# Needs: python3; for the docker rows a Docker engine (>= 20.10) and docker-compose.
# Env knobs: N (5), CHORA_BIN (skip the build), SKIP_DOCKER=1.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$HERE/lib.sh"
N="${N:-5}"
find_chora bench/changes.sh
WORK="$(mktemp -d /tmp/chora-bench-changes.XXXXXX)"
PROJECTS=()
cleanup() {
  for d in "$WORK"/*/; do
    [ -f "$d/.chora/bootstrap-config.yml" ] && CHORA_HOME="$d/.chora" "$CHORA" bootstrap reset --force >/dev/null 2>&1 || true
  done
  for p in "${PROJECTS[@]:-}"; do
    [ -n "$p" ] || continue
    [ -f "$WORK/$p.yml" ] && docker-compose -p "$p" -f "$WORK/$p.yml" down -v >/dev/null 2>&1 || true
    for v in $(docker volume ls -q --filter "name=$p-" 2>/dev/null); do docker volume rm -f "$v" >/dev/null 2>&1 || true; done
    docker rmi -f "$p:bench" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# client URL OUTFILE: POSTs until OUTFILE.stop exists; writes "requests failed max_gap_ms".
CLIENT='
import http.client, json, os, sys, time, urllib.parse
u = urllib.parse.urlparse(sys.argv[1]); out = sys.argv[2]
body = json.dumps({"text": "one two three"})
ok = failed = 0; last = time.monotonic(); gap = 0.0; conn = None
while not os.path.exists(out + ".stop"):
    try:
        if conn is None:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("POST", u.path, body, {"content-type": "application/json"})
        r = conn.getresponse(); r.read()
        if r.status == 200:
            ok += 1; now = time.monotonic(); gap = max(gap, now - last); last = now
        else:
            failed += 1
    except Exception:
        failed += 1; conn = None
open(out, "w").write(f"{ok + failed} {failed} {gap * 1000:.0f}\n")
'

# measure NAME URL CMD...: runs the client through CMD, prints "secs requests failed gap_ms".
measure() {
  local name=$1 url=$2; shift 2
  local out="$WORK/$name.client"
  rm -f "$out" "$out.stop"
  python3 -c "$CLIENT" "$url" "$out" & local cpid=$!
  sleep 0.5   # the client's first requests: a steady state before the change
  local t0; t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || echo "$name: the apply failed" >&2
  local t1; t1=$(date +%s.%N)
  sleep 0.5
  touch "$out.stop"; wait "$cpid" || true
  echo "$(echo "$t1 - $t0" | bc -l) $(cat "$out")"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# A chora home on free ports with the template of $1, analyzer env placeholder.
home_of() {
  local dir="$WORK/$2"; mkdir -p "$dir/.chora"
  CHORA_HOME="$dir/.chora" "$CHORA" bootstrap config init --environment "$1" >/dev/null
  local ports; read -r -a ports <<<"$(free_ports 8)"
  local i=0 cfg="$dir/.chora/bootstrap-config.yml"
  for d in 8500 8600 8700 8800 8900 9000 9100 9200; do sed -i "s/\b$d\b/${ports[$i]}/g" "$cfg"; i=$((i+1)); done
  [ -n "${3:-}" ] && sed -i "s/^project: chora/project: $3/; s/chora:\${CHORA_VERSION}/$3:bench/" "$cfg"
  echo "$dir"
}

set_env() {  # set_env CONFIG VALUE: the analyzer's env GREETING
  python3 - "$1" "$2" <<'PY'
import re, sys
p, v = sys.argv[1], sys.argv[2]; t = open(p).read()
t = re.sub(r"\n    env: \{GREETING: [^}]*\}", "", t)
t = re.sub(r"(\n  analyzer:\n(?:    .*\n)*?    port: \d+\n)", lambda m: m.group(1) + f"    env: {{GREETING: {v}}}\n", t, count=1)
open(p, "w").write(t)
PY
}

row() {  # row NAME FILE: medians of the rounds
  local f=$1 name=$2
  printf '| %s | %s | %s | %s | %s |\n' "$name" \
    "$(cut -d' ' -f1 "$f" | median | xargs printf '%.2f s')" \
    "$(cut -d' ' -f2 "$f" | median | xargs printf '%.0f')" \
    "$(awk '{s += $3} END {print s}' "$f") in $(wc -l <"$f")" \
    "$(cut -d' ' -f4 "$f" | median | xargs printf '%.0f ms')"
}

chora_rounds() {  # chora_rounds ENV NAME [PROJECT]
  local dir; dir=$(home_of "$1" "$2" "${3:-}")
  local cfg="$dir/.chora/bootstrap-config.yml"
  CHORA_HOME="$dir/.chora" "$CHORA" bootstrap --skip-validation >/dev/null
  local gw; gw=$(awk '/^  gateway:/ {g=1} g && /port:/ {print $2; exit}' "$cfg")
  for i in $(seq 1 "$N"); do
    set_env "$cfg" "round$i"
    measure "$2" "http://127.0.0.1:$gw/api/v1/analyzer/analyze" env CHORA_HOME="$dir/.chora" "$CHORA" bootstrap
  done >"$WORK/$2.rows"
  CHORA_HOME="$dir/.chora" "$CHORA" bootstrap reset --force >/dev/null
}

echo "| apply | time (median) | requests during it (median) | failed (all rounds) | longest gap (median) |"
echo "| --- | --- | --- | --- | --- |"
chora_rounds dev chora-dev
row "$WORK/chora-dev.rows" "chora, dev (processes)"
if [ "${SKIP_DOCKER:-0}" != 1 ] && docker info >/dev/null 2>&1; then
  P="chora-bc$(date +%s)"; PROJECTS+=("$P")
  "$CHORA" image build --tag "$P:bench" >/dev/null
  chora_rounds staging chora-staging "$P"
  row "$WORK/chora-staging.rows" "chora, staging (containers)"
  PORT=$(free_port)
  for i in $(seq 1 "$N"); do
    cat >"$WORK/$P.yml" <<YML
services:
  analyzer:
    image: $P:bench
    command: [capability, serve, --name, analyzer, --listen, "0.0.0.0:8800"]
    environment: {GREETING: round$i, MANIFEST_URL: "http://127.0.0.1:1"}
    ports: ["127.0.0.1:$PORT:8800"]
YML
    if [ "$i" = 1 ]; then
      docker-compose -p "$P" -f "$WORK/$P.yml" up -d >/dev/null 2>&1
      until python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; do sleep 0.1; done
      continue
    fi
    measure compose "http://127.0.0.1:$PORT/analyze" docker-compose -p "$P" -f "$WORK/$P.yml" up -d
  done >"$WORK/compose.rows"
  row "$WORK/compose.rows" "docker-compose up -d (recreate)"
fi
echo
echo "machine: $(nproc) cores; $(date -u +%FT%TZ); N=$N"
