#!/usr/bin/env bash
# Any-program benchmark (issue 14, benchmark b): `chora bootstrap` of the dev system
# plus 10, 20 and 50 programs that know nothing of chora, as phase-3 services deployed
# through the orchestrator (local processes, `register: chora`: the orchestrator
# registers each one on its behalf once its health check passes), sequential and with
# `--parallel`; time to a completed bootstrap.
#
#   bench/anyprogram.sh                       # N=3 rounds of each cell (about 5 minutes)
#   N=1 COUNTS="50" PROGRAMS=busybox bench/anyprogram.sh
#
# The programs (PROGRAMS, default "busybox python"):
#   busybox  `busybox httpd -f -p 127.0.0.1:PORT -h DIR` (Debian's busybox-static, which
#            CI installs for the container tests; a 2 MB static binary, ~1 ms to start):
#            what the orchestrator's own cost looks like when the program costs nothing
#   python   `python3 -m http.server PORT --bind 127.0.0.1 --directory DIR` (on every
#            machine here; ~50-100 ms and ~20 MB each to start): a typical small
#            program. The interpreter is called by its real path (PYTHON, default
#            /usr/bin/python3), not through a pyenv shim.
# Each service: `deploy_via: orchestrator`, `dependencies: [orchestrator]` (so all of
# them are one dependency wave), `health_endpoint: http://127.0.0.1:PORT/` (an
# index.html, answered 200), timeout 30 s.
#
# Each run: a fresh temp dir holding only `.chora/bootstrap-config.yml` = the dev
# template this binary writes (`chora bootstrap config show`) on free ports, plus the
# COUNT services on free ports; timed: `chora bootstrap [--parallel] --format json`
# from its start to its exit, validation included (phase 4's discovery check covers
# every one of the COUNT services, and its health-dashboard check says none is
# unhealthy); phase 3 and 4 times come from the JSON document. Then
# `chora bootstrap reset --force`, and a check that no program of that run is left
# and its ports are free. Cells run in the order program > count > round > mode
# (sequential and parallel alternate). Before each run the load average is recorded
# and the script waits (bench/quiet.sh, up to QUIET_MAX s) for an idle machine.
#
# Needs: python3, busybox (apt-get install -y busybox-static) for PROGRAMS=busybox.
# Env knobs: N (3), COUNTS ("10 20 50"), PROGRAMS ("busybox python"), PYTHON,
#   CHORA_BIN (skip the build), QUIET_MAX (30), OUT (/tmp/chora-bench-anyprogram-<date>).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$HERE/lib.sh"

N="${N:-3}"
COUNTS="${COUNTS:-10 20 50}"
PROGRAMS="${PROGRAMS:-busybox python}"
export QUIET_MAX="${QUIET_MAX:-30}"
OUT="${OUT:-/tmp/chora-bench-anyprogram-$(date +%F)}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3
  else PYTHON=$(python3 -c 'import sys; print(sys.executable)'); fi
fi
BUSYBOX=$(command -v busybox || true)
for p in $PROGRAMS; do
  case $p in
    busybox) [ -n "$BUSYBOX" ] || { echo "bench/anyprogram.sh: missing busybox (apt-get install -y busybox-static)" >&2; exit 1; } ;;
    python) [ -x "$PYTHON" ] || { echo "bench/anyprogram.sh: $PYTHON is not executable" >&2; exit 1; } ;;
    *) echo "bench/anyprogram.sh: unknown program $p (busybox, python)" >&2; exit 1 ;;
  esac
done

find_chora bench/anyprogram.sh

rm -rf "$OUT"; mkdir -p "$OUT/json" "$OUT/logs"
: > "$OUT/problems.txt"
WORK="$(mktemp -d /tmp/chora-bench-anyprogram.XXXXXX)"
WORK="$(cd "$WORK" && pwd -P)"
RESULTS="$OUT/raw.txt"; : > "$RESULTS"
TSV="$OUT/runs.tsv"
printf 'program\tcount\tmode\tround\tseconds\tphase3\tphase4\texit\tloadavg_before\tbusy_pct_before\n' > "$TSV"
DIRS="$WORK/dirs"; : > "$DIRS"

log() { echo "$@" | tee -a "$RESULTS"; }
problem() { echo "$(date -u +%T) $*" | tee -a "$OUT/problems.txt" >&2; }
now_ns() { date +%s%N; }

# Processes of a run: anything whose command line names the run's dir (the programs
# serve DIR/www; chora's services have DIR/.chora in theirs).
run_procs() { pgrep -f -- "$1/" || true; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local d left=""
  while read -r d; do
    [ -n "$d" ] || continue
    if [ -d "$d/.chora" ]; then
      (cd "$d" && CHORA_HOME="$d/.chora" "$CHORA" bootstrap reset --force) >> "$OUT/reset.log" 2>&1 || true
    fi
    left+=$(run_procs "$d")
  done < "$DIRS"
  if [ -n "$left" ]; then log "PROBLEM: processes left after the final reset: $left"
  else log "cleanup: no process of this run left"; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

before_measure() {  # sets LOAD and BUSY
  "$HERE/quiet.sh" "$OUT/problems.txt"
  LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
  # % of all cores busy over 0.5 s (busy and total jiffies from /proc/stat)
  local s0 s1; s0=$(awk '/^cpu / {b=$2+$3+$4+$7+$8+$9; t=0; for (i=2;i<=9;i++) t+=$i; print b, t}' /proc/stat)
  sleep 0.5
  s1=$(awk '/^cpu / {b=$2+$3+$4+$7+$8+$9; t=0; for (i=2;i<=9;i++) t+=$i; print b, t}' /proc/stat)
  BUSY=$(echo "$s0 $s1" | awk '{ if ($4 > $2) printf "%d", ($3 - $1) * 100 / ($4 - $2); else print 0 }')
}

log "# Any-program benchmark (issue 14 b) — $(date -u +%FT%TZ)"
log "# host: $(uname -srm), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "# chora: $("$CHORA" --version) ($CHORA); N=$N; COUNTS=$COUNTS; PROGRAMS=$PROGRAMS"
log "# busybox: ${BUSYBOX:-none} ($("${BUSYBOX:-false}" 2>&1 | head -1 || true)); python: $PYTHON ($("$PYTHON" --version 2>&1))"

# The dev template this binary writes.
mkdir -p "$WORK/template"
(cd "$WORK/template" && CHORA_HOME="$WORK/template/.chora" "$CHORA" bootstrap config show 2>/dev/null) > "$OUT/dev-template.yml"
grep -q '^environment: dev' "$OUT/dev-template.yml" || { echo "bench/anyprogram.sh: could not get the dev template" >&2; exit 1; }

write_config() {  # write_config DIR PROGRAM COUNT PORTS...
  python3 - "$OUT/dev-template.yml" "$BUSYBOX" "$PYTHON" "$@" <<'PY'
import os, sys
tpl, busybox, python, d, program, count, *ports = sys.argv[1:]
count = int(count)
base, extra = ports[:8], ports[8:]
t = open(tpl).read()
for dflt, p in zip([8500, 8600, 8700, 8800, 8900, 9000, 9100, 9200], base):
    t = t.replace(str(dflt), p)
www = os.path.join(d, "www")
os.makedirs(www, exist_ok=True)
open(os.path.join(www, "index.html"), "w").write("hello\n")
svcs = []
for i in range(count):
    port = extra[i]
    if program == "busybox":
        cmd = f'[{busybox}, httpd, -f, -p, "127.0.0.1:{port}", -h, "{www}"]'
    else:
        cmd = f'[{python}, -m, http.server, "{port}", --bind, 127.0.0.1, --directory, "{www}"]'
    svcs.append(f"""
  web-{i + 1}:
    phase: 3
    deploy_via: orchestrator
    command: {cmd}
    port: {port}
    health_endpoint: http://127.0.0.1:{port}/
    timeout: 30
    dependencies: [orchestrator]
""")
t = t.replace("\ntimeouts:", "".join(svcs) + "\ntimeouts:", 1)
os.makedirs(os.path.join(d, ".chora"), exist_ok=True)
open(os.path.join(d, ".chora", "bootstrap-config.yml"), "w").write(t)
PY
}

one_run() {  # one_run PROGRAM COUNT MODE ROUND
  local program=$1 count=$2 mode=$3 round=$4
  local name="$program-$count-$mode-$round"
  local dir="$WORK/$name"; mkdir -p "$dir"
  echo "$dir" >> "$DIRS"
  local ports; ports=$(free_ports $((8 + count)))
  # shellcheck disable=SC2086
  write_config "$dir" "$program" "$count" $ports
  local args=(bootstrap --format json)
  [ "$mode" = parallel ] && args+=(--parallel)
  before_measure
  local t rc=0 secs
  t=$(now_ns)
  (cd "$dir" && CHORA_HOME="$dir/.chora" NO_COLOR=1 "$CHORA" "${args[@]}" \
     > "$OUT/json/$name.json" 2> "$OUT/logs/$name.stderr") || rc=$?
  secs=$(python3 -c "print(f'{($(now_ns) - $t) / 1e9:.3f}')")
  local p3 p4 st
  read -r p3 p4 st < <(python3 - "$OUT/json/$name.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    ph = {str(p["phase"]): p["duration_seconds"] for p in d.get("phases", [])}
    print(f'{ph.get("3", "nan")} {ph.get("4", "nan")} {d.get("status", "?")}')
except Exception:
    print("nan nan unparseable")
PY
)
  [ "$rc" = 0 ] && [ "$st" = completed ] || problem "$name: exit $rc, status $st (see $OUT/logs/$name.stderr)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$program" "$count" "$mode" "$round" "$secs" "$p3" "$p4" "$rc" "$LOAD" "$BUSY" >> "$TSV"
  log "$name: $secs s (phase 3 $p3 s, phase 4 $p4 s, exit $rc, $st; load before: $LOAD; CPU busy before: $BUSY %)"
  cp "$dir/.chora/logs/orchestrator.log" "$OUT/logs/$name.orchestrator.log" 2>/dev/null || true
  (cd "$dir" && CHORA_HOME="$dir/.chora" "$CHORA" bootstrap reset --force) >> "$OUT/reset.log" 2>&1 \
    || problem "$name: reset --force exited $?"
  local left; left=$(run_procs "$dir")
  [ -z "$left" ] || problem "$name: after reset --force, processes left: $(echo $left)"
  local p busy=""
  for p in $ports; do [ -n "$(ss -ltnH "sport = :$p" 2>/dev/null)" ] && busy+=" $p"; done
  [ -z "$busy" ] || problem "$name: after reset --force, ports still bound:$busy"
  rm -rf "$dir"
}

for program in $PROGRAMS; do
  for count in $COUNTS; do
    for round in $(seq 1 "$N"); do
      if [ $((round % 2)) = 1 ]; then modes="sequential parallel"; else modes="parallel sequential"; fi
      for mode in $modes; do one_run "$program" "$count" "$mode" "$round"; done
    done
  done
done

# ---------------------------------------------------------------- report
python3 - "$OUT" "$N" <<'PY' | tee -a "$RESULTS" | tee "$OUT/table.md"
import csv, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(f"{out}/runs.tsv"), delimiter="\t"))
def med(x): return statistics.median(x) if x else float("nan")
def f(r, k):
    try: return float(r[k])
    except ValueError: return float("nan")
cells = {}
for r in rows:
    cells.setdefault((r["program"], int(r["count"]), r["mode"]), []).append(r)
print(f"Time to a completed `chora bootstrap` (validation included), seconds; medians of {n} runs\n")
print("| program | services | mode | wall median s | wall min-max s | phase 3 median s | phase 4 median s | exit codes |")
print("| --- | ---: | --- | ---: | --- | ---: | ---: | --- |")
for (prog, count, mode), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "sequential")):
    w = [f(r, "seconds") for r in rs]
    print(f"| {prog} | {count} | {mode} | {med(w):.3f} | {min(w):.3f}-{max(w):.3f} | "
          f"{med([f(r, 'phase3') for r in rs]):.3f} | {med([f(r, 'phase4') for r in rs]):.3f} | "
          f"{','.join(r['exit'] for r in rs)} |")
print("\nLoad average (1/5/15 min) and CPU busy % (0.5 s) before each run:\n")
for r in rows:
    print(f"- {r['program']} {r['count']} {r['mode']} #{r['round']}: load {r['loadavg_before']}, busy {r['busy_pct_before']} %")
print("\nGoal (issue 14 b): 50 services under 3 s with --parallel (median wall time)\n")
for prog in sorted({k[0] for k in cells}):
    rs = cells.get((prog, 50, "parallel"))
    if rs:
        m = med([f(r, "seconds") for r in rs])
        print(f"- {prog}: {'**met**' if m < 3 else '**missed**'} ({m:.3f} s; worst {max(f(r, 'seconds') for r in rs):.3f} s)")
probs = open(f"{out}/problems.txt").read().strip()
print("\nProblems noted during the run: " + ("none" if not probs else "\n" + probs))
PY
