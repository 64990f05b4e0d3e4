#!/usr/bin/env bash
# Bootstrap benchmark (issue 4): cold `chora bootstrap` of the default (dev) system,
# phase by phase, plus a no-op re-run, resume after a killed service, rollback,
# re-bootstrap after the rollback, and reset.
#
#   bench/bootstrap.sh                # N=5 repetitions of each measurement (~3 minutes)
#   N=3 bench/bootstrap.sh            # quicker
#
# The default system listens on the fixed ports 8500-9200: the script refuses to run
# when one of them is taken. It works in a fresh temp dir (cwd, so `.chora/` lands
# there; CHORA_HOME is unset). Timing: hyperfine (--runs N, shell-spawn corrected),
# each measurement prepared by this script (`bootstrap.sh __prepare STEP`), which also
# waits (bench/quiet.sh) until no wrk runs and the machine is idle (<10% CPU busy over
# 1 s) and notes it if it had to proceed anyway. Per-phase times come from the JSON
# document of `chora bootstrap --format json` (`phases[].duration_seconds`).
#
#   cold     `chora bootstrap --format json` after `chora bootstrap reset --force`
#   noop     `chora bootstrap --format json` on a completed system
#   resume   `chora bootstrap --format json` after kill -9 of the gateway (pid from
#            .chora/run/gateway.pid); checked afterwards: the gateway is healthy again
#   rollback `chora bootstrap rollback --to-phase 2 --force` from a completed system;
#            checked afterwards: ports 8800-9200 free, 8500-8700 still serving
#   rerun    `chora bootstrap --format json` right after that rollback (phases 3-4)
#   reset    `chora bootstrap reset --force` from a completed system; checked
#            afterwards: all ports free, no chora service process left
# It always ends with `chora bootstrap reset --force` (also on failure or Ctrl-C) and
# checks that no `chora (manifest|orchestrator|gateway|capability) serve` process it
# started is left and that the ports are free.
#
# Needs: hyperfine (apt-get install -y hyperfine), python3, curl, ss, cargo.
# Env knobs: N (5), CHORA_BIN (skip the build), QUIET_MAX (120 s per wait),
#   OUT (raw output dir; default /tmp/chora-bench-bootstrap-<date>).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$HERE/lib.sh"
PORTS=(8500 8600 8700 8800 8900 9000 9100 9200)
SERVICE_RE='chora (manifest|orchestrator|gateway|capability) serve'

port_busy() { [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }
busy_ports() { local p out=""; for p in "$@"; do port_busy "$p" && out="$out $p"; done; echo "${out# }"; }
# service processes whose cwd is our work dir (what this run started)
our_procs() {
  local p
  for p in $(pgrep -f "$SERVICE_RE" || true); do
    [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$WORK" ] && echo "$p"
  done
  return 0
}
problem() { echo "$(date -u +%T) $*" >> "$OUT/problems.txt"; }

# ---------------------------------------------------------------- prepare hooks (run by hyperfine)
if [ "${1:-}" = __prepare ]; then
  step=$2
  cd "$WORK"
  save_last() {  # keep the previous run's JSON document
    [ -s "$WORK/last.json" ] && mv "$WORK/last.json" "$OUT/json/$1-$(date +%s%N).json"
    rm -f "$WORK/last.json"
  }
  complete() { "$CHORA" bootstrap > "$OUT/prepare.log" 2>&1 || problem "prepare $step: chora bootstrap exited $?"; }
  case $step in
    cold)
      save_last cold
      "$CHORA" bootstrap reset --force >> "$OUT/prepare.log" 2>&1 || problem "prepare cold: reset exited $?"
      left=$(our_procs); [ -z "$left" ] || problem "after reset --force: processes left: $(echo $left)"
      b=$(busy_ports "${PORTS[@]}"); [ -z "$b" ] || problem "after reset --force: ports still bound: $b"
      ;;
    noop)
      save_last noop
      ;;
    resume)
      save_last resume
      curl -sf -o /dev/null --max-time 2 http://127.0.0.1:8700/health || problem "before a resume run: gateway not healthy on :8700"
      pid=$(cut -d' ' -f1 .chora/run/gateway.pid 2>/dev/null || true)
      if [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; then
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      else
        problem "prepare resume: no live gateway pid in .chora/run/gateway.pid ('$pid')"
      fi
      ;;
    rollback)
      if [ -e "$WORK/.measured-rollback" ]; then  # check what the previous repetition did
        b=$(busy_ports 8800 8900 9000 9100 9200); [ -z "$b" ] || problem "after rollback --to-phase 2: phase-3 ports still bound: $b"
      fi
      complete
      touch "$WORK/.measured-rollback"
      ;;
    rerun)
      save_last rerun
      complete
      "$CHORA" bootstrap rollback --to-phase 2 --force >> "$OUT/prepare.log" 2>&1 || problem "prepare rerun: rollback exited $?"
      ;;
    reset)
      if [ -e "$WORK/.measured-reset" ]; then  # check what the previous repetition did
        left=$(our_procs); [ -z "$left" ] || problem "after reset --force: processes left: $(echo $left)"
        b=$(busy_ports "${PORTS[@]}"); [ -z "$b" ] || problem "after reset --force: ports still bound: $b"
      fi
      complete
      touch "$WORK/.measured-reset"
      ;;
  esac
  "$HERE/quiet.sh" "$OUT/problems.txt"
  exit 0
fi

# ---------------------------------------------------------------- main
N="${N:-5}"
OUT="${OUT:-/tmp/chora-bench-bootstrap-$(date +%F)}"
export QUIET_MAX="${QUIET_MAX:-120}"
for tool in hyperfine python3 curl ss; do
  command -v "$tool" >/dev/null || {
    echo "bench/bootstrap.sh: missing $tool — install with: apt-get install -y hyperfine python3 curl iproute2" >&2
    exit 1
  }
done
taken=$(busy_ports "${PORTS[@]}")
if [ -n "$taken" ]; then
  echo "bench/bootstrap.sh: the default system needs ports ${PORTS[*]}, but these are in use: $taken" >&2
  echo "  (see who holds them: ss -ltnp; stop that first, e.g. \`chora bootstrap reset --force\` where it was started)" >&2
  exit 1
fi

find_chora bench/bootstrap.sh

rm -rf "$OUT"; mkdir -p "$OUT/json"
: > "$OUT/problems.txt"
WORK="$(mktemp -d /tmp/chora-bench-bs.XXXXXX)"
WORK="$(cd "$WORK" && pwd -P)"
export CHORA WORK OUT
unset CHORA_HOME
cd "$WORK"
RESULTS="$OUT/raw.txt"
: > "$RESULTS"
log() { echo "$@" | tee -a "$RESULTS"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  cd "$WORK" 2>/dev/null || true
  "$CHORA" bootstrap reset --force >> "$OUT/final-reset.log" 2>&1 || log "final reset --force exited $?"
  local left b
  left=$(our_procs)
  if [ -n "$left" ]; then
    log "PROBLEM: after the final reset these service processes are left: $left"
    ps -o pid,ppid,args -p "$(tr '\n' ',' <<<"$left" | sed 's/,$//')" | tee -a "$RESULTS" || true
  fi
  b=$(busy_ports "${PORTS[@]}"); [ -z "$b" ] || log "PROBLEM: after the final reset these ports are still bound: $b"
  [ -z "$left" ] && [ -z "$b" ] && log "final reset: no chora service process left, ports ${PORTS[0]}-${PORTS[-1]} free"
  cp -r "$WORK/.chora/logs" "$OUT/last-logs" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "# Bootstrap benchmark — $(date -u +%FT%TZ)"
log "# host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "# chora: $("$CHORA" --version 2>/dev/null || echo '?') ($CHORA)"
log "# $(hyperfine --version); N=$N; work dir $WORK"

SELF="$HERE/bootstrap.sh"
bench() {  # bench NAME COMMAND
  local name=$1 cmd=$2
  log ""
  log "=== $name: $cmd ==="
  hyperfine --runs "$N" --ignore-failure --style basic --export-json "$OUT/$name.hf.json" \
    --prepare "bash '$SELF' __prepare $name" --command-name "$name" "$cmd" 2>&1 | tee -a "$RESULTS"
}
J="> '$WORK/last.json' 2>> '$OUT/stderr.log'"
collect() { [ -s last.json ] && mv last.json "$OUT/json/$1-$(date +%s%N).json"; rm -f last.json; }
# The first cold run of all starts from a directory without .chora/ at all.
bench cold   "'$CHORA' bootstrap --format json $J"; collect cold
bench noop   "'$CHORA' bootstrap --format json $J"; collect noop
bench resume "'$CHORA' bootstrap --format json $J"; collect resume
curl -sf -o /dev/null --max-time 2 http://127.0.0.1:8700/health || problem "after the last resume run: gateway not healthy on :8700"
# The killed gateway's registry instance is not deregistered by anyone: it turns
# `unhealthy` after 2 heartbeat intervals and is removed at the TTL (dev template: 1 s
# and 10 s). Poll `chora bootstrap validate` every 0.5 s for 14 s after the last resume
# and record when it fails; this also lets the stale instance expire before going on.
t0=$(date +%s%N); fails=0; first=""; last=""
while [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 14000 ]; do
  now=$(( ($(date +%s%N) - t0) / 1000000 ))
  if ! "$CHORA" bootstrap validate > "$OUT/validate-after-resume.log" 2>&1; then
    fails=$((fails + 1)); last=$now
    [ -n "$first" ] || { first=$now; cp "$OUT/validate-after-resume.log" "$OUT/validate-after-resume.first-failure.log"; }
  fi
  sleep 0.5
done
log ""
if [ "$fails" = 0 ]; then
  log "validate after the last resume: passed at every poll for 14 s"
else
  why=$(grep -m1 '✗' "$OUT/validate-after-resume.first-failure.log" | sed 's/^ *//')
  log "validate after the last resume: failed $fails time(s), from +${first} ms to +${last} ms ($why)"
  problem "after resume (gateway killed with -9, restarted): \`chora bootstrap validate\` failed from +${first} ms to +${last} ms after the resume ended: $why"
fi
bench rollback "'$CHORA' bootstrap rollback --to-phase 2 --force >> '$OUT/rollback.log' 2>&1"
b=$(busy_ports 8800 8900 9000 9100 9200); [ -z "$b" ] || problem "after rollback --to-phase 2: phase-3 ports still bound: $b"
bench rerun  "'$CHORA' bootstrap --format json $J"; collect rerun
bench reset  "'$CHORA' bootstrap reset --force >> '$OUT/reset.log' 2>&1"
left=$(our_procs); [ -z "$left" ] || problem "after reset --force: processes left: $left"
b=$(busy_ports "${PORTS[@]}"); [ -z "$b" ] || problem "after reset --force: ports still bound: $b"

# ---------------------------------------------------------------- report
python3 - "$OUT" "$N" <<'PY' | tee -a "$RESULTS" | tee "$OUT/table.md"
import glob, json, os, re, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])

def hf(name):
    d = json.load(open(f"{out}/{name}.hf.json"))["results"][0]
    return d["times"], d.get("exit_codes", [])

def docs(name):
    res = []
    for f in sorted(glob.glob(f"{out}/json/{name}-*.json")):
        try:
            res.append(json.load(open(f)))
        except Exception as e:
            res.append({"_error": f"{os.path.basename(f)}: {e}"})
    return res

def med(v): return statistics.median(v) if v else float("nan")
def fmt(v): return f"{v:.3f}" if v == v else "n/a"

rows = {}
print(f"Wall time (hyperfine, {n} runs each; seconds)\n")
print("| measurement | median s | max s | min s | exit codes |")
print("| --- | ---: | ---: | ---: | --- |")
labels = {
    "cold": "cold `chora bootstrap` (0-4, after reset)",
    "noop": "re-run on a completed system (no-op)",
    "resume": "resume after kill -9 of the gateway",
    "rollback": "`rollback --to-phase 2 --force`",
    "rerun": "`chora bootstrap` after that rollback (3-4)",
    "reset": "`reset --force`",
}
for k, label in labels.items():
    t, codes = hf(k)
    rows[k] = t
    print(f"| {label} | {fmt(med(t))} | {fmt(max(t))} | {fmt(min(t))} | {','.join(map(str, codes)) or '?'} |")

cold = docs("cold")
print(f"\nPhases of the cold runs (from `--format json`, {len(cold)} documents; seconds)\n")
bad = [d["_error"] for d in cold if "_error" in d]
cold = [d for d in cold if "_error" not in d]
phase_times = {}
names = {}
for d in cold:
    for p in d.get("phases", []):
        key = p.get("phase", p.get("number", p.get("id")))
        names[key] = p.get("name", str(key))
        phase_times.setdefault(key, []).append(float(p["duration_seconds"]))
print("| phase | median s | max s |")
print("| --- | ---: | ---: |")
for key in sorted(phase_times, key=lambda k: (str(type(k)), k)):
    v = phase_times[key]
    print(f"| {key} {names[key]} | {fmt(med(v))} | {fmt(max(v))} |")
p03 = [sum(float(p["duration_seconds"]) for p in d.get("phases", [])
           if str(p.get("phase", p.get("number"))) in ("0", "1", "2", "3")) for d in cold]
tot = [float(d["duration_seconds"]) for d in cold if "duration_seconds" in d]
print(f"| phases 0-3 together | {fmt(med(p03))} | {fmt(max(p03)) if p03 else 'n/a'} |")
print(f"| whole run, self-reported `duration_seconds` | {fmt(med(tot))} | {fmt(max(tot)) if tot else 'n/a'} |")
statuses = sorted({str(d.get("status")) for d in cold})
steps = {}
for d in cold:
    for p in d.get("phases", []):
        for st in p.get("steps", []):
            if st.get("duration_ms") is not None:
                name = re.sub(r" \(pid \d+\)", "", st["name"])
                steps.setdefault((p["phase"], name), []).append(st["duration_ms"])
print("\nSlowest steps of the cold runs (median ms, max ms)\n")
print("| phase | step | median ms | max ms |")
print("| --- | --- | ---: | ---: |")
for (ph, name), v in sorted(steps.items(), key=lambda kv: -med(kv[1]))[:10]:
    print(f"| {ph} | {name} | {med(v):.0f} | {max(v)} |")
for k in ("resume", "rerun"):
    ds = [d for d in docs(k) if "_error" not in d]
    per = {}
    for d in ds:
        for p in d.get("phases", []):
            per.setdefault(f"{p['phase']} {p.get('name','')}", []).append(float(p["duration_seconds"]))
    sts = sorted({str(d.get("status")) for d in ds})
    print(f"\n`{k}` runs ({len(ds)} documents, statuses {sts}): " +
          (", ".join(f"phase {ph} median {med(v):.3f} s" for ph, v in per.items()) or "no phases reported"))
if bad:
    print(f"\nunparseable documents: {bad}")

def goal(ok): return "**met**" if ok else "**missed**"
res_over = med(rows["resume"]) - med(rows["noop"])
print("\nGoals (worst of the runs counts; medians in brackets)\n")
print(f"- phases 0-3 under 2 s: {goal(p03 and max(p03) < 2)} (max {fmt(max(p03)) if p03 else 'n/a'} s, median {fmt(med(p03))} s)")
print(f"- whole run with validation under 5 s: {goal(max(rows['cold']) < 5)} (max {fmt(max(rows['cold']))} s wall, median {fmt(med(rows['cold']))} s)")
print(f"- resume overhead under 1 s: {goal(max(rows['resume']) < 1)} (resume run max {fmt(max(rows['resume']))} s, median {fmt(med(rows['resume']))} s; minus the no-op run: {fmt(res_over)} s)")
print(f"- rollback under 2 s: {goal(max(rows['rollback']) < 2)} (max {fmt(max(rows['rollback']))} s)")
print(f"- reset under 2 s: {goal(max(rows['reset']) < 2)} (max {fmt(max(rows['reset']))} s)")
print(f"\ncold run statuses: {statuses}")
probs = open(f"{out}/problems.txt").read().strip()
print("\nProblems noted during the run: " + ("none" if not probs else "\n" + probs))
PY
