#!/usr/bin/env bash
# Staging benchmark (issue 14, benchmark a): a cold `chora bootstrap --environment
# staging` (8 services, every one a container of the chora image) against
# `docker-compose -p <project> up -d` of an equivalent compose file, each timed from
# its start until all 8 containers are healthy; N rounds, medians.
#
#   bench/staging.sh                 # N=3 rounds (about 2-3 minutes)
#   N=5 bench/staging.sh
#
# The image is built once, before the rounds, under a tag of this run
# (`chora image build --tag chora-bench-<id>:bench`), so every bootstrap below starts
# with the image present; the image build is timed separately (N builds under tags of
# their own, removed at the end).
#
# Each round, in a fresh temp dir holding only `.chora/bootstrap-config.yml` (the
# staging template this binary writes, with `project:` set to a project name of its
# own, the image tag of this run and the ports 8500-9200 replaced by free ones, as the
# integration tests do), and with no container, network or volume of that project:
#
#   chora        `chora bootstrap --skip-validation --format json`: returns once the
#                8 services are up and healthy (phase 3 waits for each one) = the
#                time to all 8 healthy
#   chora-par    the same with `--parallel` (phases 2 and 3 start a wave at once)
#   chora-full   `chora bootstrap --format json`, validation (phase 4) included: what
#                a user types
#   compose      `docker-compose -p <project> -f staging-compose.yml up -d` of the
#                compose file this script writes (same image, commands, environment,
#                ports on 127.0.0.1, volumes; `depends_on` with
#                `condition: service_healthy` as the template's `dependencies`;
#                healthchecks `chora probe http://127.0.0.1:PORT/health` every 1 s),
#                then `docker inspect` polled every 50 ms until all 8 are healthy.
#                The capability services are plain containers running
#                `chora capability serve --name X --listen 0.0.0.0:PORT` with
#                MANIFEST_URL=http://manifest:PORT and their API keys (CHORA_API_KEY)
#                from a credentials file made for the run; the Manifest and the
#                orchestrator get the whole document in CHORA_CREDENTIALS_JSON, as
#                chora passes them (env files, mode 0600). After each compose run
#                the script checks that all 8 registered in its Manifest.
#
# Each chora run is followed by `chora bootstrap reset --force` and the removal of its
# volumes; each compose run by `docker-compose down -v`. On exit (also on failure or
# Ctrl-C) every container, network and volume of this run's projects and every image
# tag it made are removed. Before each measurement the load average is recorded and
# the script waits (bench/quiet.sh, up to QUIET_MAX s) for an idle machine.
#
# Needs: docker (engine >= 20.10), docker-compose (v1; `docker compose` v2 works as
# well), python3. Env knobs: N (3), CHORA_BIN (skip the build), QUIET_MAX (30),
#   OUT (raw output; default /tmp/chora-bench-staging-<date>).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
. "$HERE/lib.sh"

N="${N:-3}"
export QUIET_MAX="${QUIET_MAX:-30}"
OUT="${OUT:-/tmp/chora-bench-staging-$(date +%F)}"
for tool in docker python3; do
  command -v "$tool" >/dev/null || { echo "bench/staging.sh: missing $tool" >&2; exit 1; }
done
if command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
else echo "bench/staging.sh: missing docker-compose (apt-get install -y docker-compose)" >&2; exit 1; fi
docker info >/dev/null 2>&1 || { echo "bench/staging.sh: the Docker daemon does not answer (docker info)" >&2; exit 1; }

find_chora bench/staging.sh

rm -rf "$OUT"; mkdir -p "$OUT/json" "$OUT/logs"
: > "$OUT/problems.txt"
WORK="$(mktemp -d /tmp/chora-bench-staging.XXXXXX)"
WORK="$(cd "$WORK" && pwd -P)"
RUN_ID="$(python3 -c 'import secrets; print(secrets.token_hex(3))')"
TAG="chora-bench-$RUN_ID:bench"
VERSION="$("$CHORA" --version | awk '{print $2}')"
DEFAULT_TAG="chora:$VERSION"
RESULTS="$OUT/raw.txt"; : > "$RESULTS"
TSV="$OUT/runs.tsv"; printf 'round\tvariant\tseconds\tloadavg_before\tbusy_pct_before\tnote\n' > "$TSV"
PROJECTS="$WORK/projects"; : > "$PROJECTS"     # chora projects: "<project> <dir>"
CPROJECTS="$WORK/compose-projects"; : > "$CPROJECTS"
IMAGES="$WORK/images"; echo "$TAG" > "$IMAGES"
# Phase 0 of a staging run also makes sure `chora:<version>` exists (and builds it when
# missing) even though the rewritten template runs $TAG; if it is missing now, the tag
# that phase 0 makes is this run's to remove.
default_tag_existed=yes
docker image inspect "$DEFAULT_TAG" >/dev/null 2>&1 || default_tag_existed=no

log() { echo "$@" | tee -a "$RESULTS"; }
problem() { echo "$(date -u +%T) $*" | tee -a "$OUT/problems.txt" >&2; }
now_ns() { date +%s%N; }
secs_since() { python3 -c "print(f'{($(now_ns) - $1) / 1e9:.3f}')"; }

remove_project() {  # remove_project PROJECT [DIR]: what a chora run of PROJECT left
  local p=$1 d=${2:-}
  if [ -n "$d" ] && [ -d "$d/.chora" ]; then
    (cd "$d" && CHORA_HOME="$d/.chora" "$CHORA" bootstrap reset --force) >> "$OUT/reset.log" 2>&1 || true
  fi
  local ids
  ids=$(docker ps -aq --filter "label=io.chora.project=$p")
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  docker network rm "$p" >/dev/null 2>&1 || true
  local vols
  vols=$(docker volume ls -q --filter "name=$p-")
  [ -z "$vols" ] || docker volume rm -f $vols >/dev/null 2>&1 || true
}
remove_compose() {  # remove_compose PROJECT DIR
  (cd "$2" && "${COMPOSE[@]}" -p "$1" -f staging-compose.yml down -v --remove-orphans -t 2) >> "$OUT/compose-down.log" 2>&1 || true
  local ids
  ids=$(docker ps -aq --filter "label=com.docker.compose.project=$1")
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  docker network rm "${1}_default" >/dev/null 2>&1 || true
  local vols
  vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$1")
  [ -z "$vols" ] || docker volume rm -f $vols >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p d
  while read -r p d; do [ -n "$p" ] && remove_project "$p" "$d"; done < "$PROJECTS"
  while read -r p d; do [ -n "$p" ] && remove_compose "$p" "$d"; done < "$CPROJECTS"
  while read -r i; do [ -n "$i" ] && docker rmi -f "$i" >/dev/null 2>&1 || true; done < "$IMAGES"
  if [ "$default_tag_existed" = no ] && docker image inspect "$DEFAULT_TAG" >/dev/null 2>&1; then
    docker rmi "$DEFAULT_TAG" >/dev/null 2>&1 || true
    log "removed $DEFAULT_TAG, which phase 0 built during this run"
  fi
  # Leftovers check: nothing labelled with one of this run's projects.
  local left=""
  while read -r p d; do
    [ -z "$p" ] && continue
    left+=$(docker ps -aq --filter "label=io.chora.project=$p")
    docker network inspect "$p" >/dev/null 2>&1 && left+=" network:$p"
    left+=$(docker volume ls -q --filter "name=$p-")
  done < "$PROJECTS"
  while read -r p d; do
    [ -z "$p" ] && continue
    left+=$(docker ps -aq --filter "label=com.docker.compose.project=$p")
    left+=$(docker volume ls -q --filter "label=com.docker.compose.project=$p")
  done < "$CPROJECTS"
  left+=$(docker images -q "chora-bench-$RUN_ID*")
  if [ -n "$left" ]; then log "PROBLEM: left behind after cleanup: $left"
  else log "cleanup: no container, network, volume or image tag of this run left"; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

before_measure() {  # before_measure: wait for a quiet machine; sets LOAD and BUSY
  "$HERE/quiet.sh" "$OUT/problems.txt"
  LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
  # % of all cores busy over 0.5 s (busy and total jiffies from /proc/stat)
  local s0 s1; s0=$(awk '/^cpu / {b=$2+$3+$4+$7+$8+$9; t=0; for (i=2;i<=9;i++) t+=$i; print b, t}' /proc/stat)
  sleep 0.5
  s1=$(awk '/^cpu / {b=$2+$3+$4+$7+$8+$9; t=0; for (i=2;i<=9;i++) t+=$i; print b, t}' /proc/stat)
  BUSY=$(echo "$s0 $s1" | awk '{ if ($4 > $2) printf "%d", ($3 - $1) * 100 / ($4 - $2); else print 0 }')
}

record() {  # record ROUND VARIANT SECONDS NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$LOAD" "$BUSY" "$4" >> "$TSV"
  log "round $1 $2: $3 s (load before: $LOAD; CPU busy before: $BUSY %) $4"
}

log "# Staging benchmark (issue 14 a) — $(date -u +%FT%TZ)"
log "# host: $(uname -srm), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "# docker engine $(docker version --format '{{.Server.Version}}'), $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -1)"
log "# chora: $("$CHORA" --version) ($CHORA); N=$N; work dir $WORK; run id $RUN_ID"

# ---------------------------------------------------------------- the staging template
# The template this binary writes: a staging run against an engine address nobody
# answers at stops in phase 0, after writing the config.
TPL_DIR="$WORK/template"; mkdir -p "$TPL_DIR"
(cd "$TPL_DIR" && CHORA_HOME="$TPL_DIR/.chora" DOCKER_HOST=unix:///nonexistent/docker.sock \
  "$CHORA" bootstrap --environment staging > /dev/null 2>&1) || true
[ -s "$TPL_DIR/.chora/bootstrap-config.yml" ] || { echo "bench/staging.sh: could not get the staging template" >&2; exit 1; }
cp "$TPL_DIR/.chora/bootstrap-config.yml" "$OUT/staging-template.yml"

# rewrite_template OUTFILE PROJECT P1..P8
rewrite_template() {
  python3 - "$OUT/staging-template.yml" "$TAG" "$@" <<'PY'
import sys
src, tag, out, project, *ports = sys.argv[1:]
t = open(src).read()
t = t.replace("project: chora", f"project: {project}").replace("chora:${CHORA_VERSION}", tag)
for d, p in zip([8500, 8600, 8700, 8800, 8900, 9000, 9100, 9200], ports):
    t = t.replace(str(d), p)
open(out, "w").write(t)
PY
}

# ---------------------------------------------------------------- the image
log ""
log "=== image: chora image build --tag $TAG ==="
"$CHORA" image build --tag "$TAG" > "$OUT/image-build.log" 2>&1
cat "$OUT/image-build.log" | tee -a "$RESULTS"
for i in $(seq 1 "$N"); do
  before_measure
  t=$(now_ns)
  "$CHORA" image build --tag "chora-bench-$RUN_ID-b$i:bench" >> "$OUT/image-build.log" 2>&1
  echo "chora-bench-$RUN_ID-b$i:bench" >> "$IMAGES"
  record "$i" image-build "$(secs_since "$t")" ""
  docker rmi "chora-bench-$RUN_ID-b$i:bench" >/dev/null 2>&1 || true
done
log "image size: $(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.1f MB", $1/1e6}')"

# ---------------------------------------------------------------- one chora run
chora_run() {  # chora_run ROUND VARIANT ARGS...
  local round=$1 variant=$2; shift 2
  local project="cb$RUN_ID-$variant-$round"
  local dir="$WORK/$project"; mkdir -p "$dir/.chora"
  echo "$project $dir" >> "$PROJECTS"
  local ports; ports=$(free_ports 8)
  # shellcheck disable=SC2086
  rewrite_template "$dir/.chora/bootstrap-config.yml" "$project" $ports
  before_measure
  local t rc=0 secs
  t=$(now_ns)
  (cd "$dir" && CHORA_HOME="$dir/.chora" NO_COLOR=1 "$CHORA" bootstrap "$@" --format json \
     > "$OUT/json/$variant-$round.json" 2> "$OUT/logs/$variant-$round.stderr") || rc=$?
  secs=$(secs_since "$t")
  local n; n=$(docker ps -q --filter "label=io.chora.project=$project" | wc -l)
  local note="exit $rc, $n containers running"
  [ "$rc" = 0 ] || problem "round $round $variant: chora bootstrap exited $rc (see $OUT/logs/$variant-$round.stderr)"
  [ "$n" = 8 ] || problem "round $round $variant: $n containers running, not 8"
  record "$round" "$variant" "$secs" "$note"
  cp -r "$dir/.chora/logs" "$OUT/logs/$variant-$round" 2>/dev/null || true
  remove_project "$project" "$dir"
}

# ---------------------------------------------------------------- one compose run
compose_file() {  # compose_file DIR PROJECT P1..P8: writes DIR/staging-compose.yml and env files
  python3 - "$TAG" "$@" <<'PY'
import json, os, secrets, sys
tag, d, project, *ports = sys.argv[1:]
names = ["manifest", "orchestrator", "gateway", "analyzer", "executor", "storage", "monitor", "logger"]
P = dict(zip(names, ports))
home = os.path.join(d, "home")
os.makedirs(os.path.join(home, "logs"), exist_ok=True)
# Credentials made for the run, as chora's phase 0 makes them.
creds = {"jwt_secret": secrets.token_hex(32)}
for n in names:
    creds[f"api_key_{n}"] = secrets.token_urlsafe(32)
with open(os.path.join(home, "credentials.json"), "w") as f:
    json.dump(creds, f, indent=2)
os.chmod(os.path.join(home, "credentials.json"), 0o600)
os.makedirs(os.path.join(d, "env"), exist_ok=True)
murl = f"http://manifest:{P['manifest']}"
def env_file(name, extra):
    path = os.path.join(d, "env", f"{name}.env")
    with open(path, "w") as f:
        os.chmod(path, 0o600)
        f.write(f"CHORA_API_KEY={creds['api_key_' + name]}\n")
        for k, v in extra.items():
            f.write(f"{k}='{v}'\n")
    return f"env/{name}.env"
creds_json = json.dumps(creds, separators=(",", ":"))
def health(port):
    return {"test": ["CMD", "/usr/local/bin/chora", "probe", f"http://127.0.0.1:{port}/health"],
            "interval": "1s", "timeout": "2s", "retries": 60}
def healthy(*deps):
    return {x: {"condition": "service_healthy"} for x in deps}
common = {"CHORA_HOME": home, "CHORA_PROJECT": project}
svc = {}
p = P["manifest"]
svc["manifest"] = {
    "image": tag,
    "command": ["manifest", "serve", "--listen", f"0.0.0.0:{p}", "--storage", "sqlite:/data/manifest.db",
                "--ttl", "10", "--heartbeat-interval", "1", "--register-self"],
    "ports": [f"127.0.0.1:{p}:{p}"], "volumes": ["manifest-data:/data"],
    "env_file": [env_file("manifest", {"CHORA_CREDENTIALS_JSON": creds_json})],
    "environment": dict(common), "healthcheck": health(p)}
p = P["orchestrator"]
svc["orchestrator"] = {
    "image": tag,
    "command": ["orchestrator", "serve", "--listen", f"0.0.0.0:{p}", "--manifest-url", murl,
                "--runtime", "docker", "--chora-image", tag, "--logs", f"{home}/logs"],
    "ports": [f"127.0.0.1:{p}:{p}"],
    "volumes": ["/var/run/docker.sock:/var/run/docker.sock", f"{home}/logs:{home}/logs"],
    "env_file": [env_file("orchestrator", {"CHORA_CREDENTIALS_JSON": creds_json})],
    "environment": dict(common, MANIFEST_URL=murl), "healthcheck": health(p),
    "depends_on": healthy("manifest")}
p = P["gateway"]
svc["gateway"] = {
    "image": tag,
    "command": ["gateway", "serve", "--listen", f"0.0.0.0:{p}", "--manifest-url", murl],
    "ports": [f"127.0.0.1:{p}:{p}"],
    "env_file": [env_file("gateway", {})],
    "environment": dict(common, MANIFEST_URL=murl), "healthcheck": health(p),
    "depends_on": healthy("manifest")}
deps = {"analyzer": ["manifest", "orchestrator"], "executor": ["manifest", "orchestrator", "analyzer"],
        "storage": ["manifest", "orchestrator"], "monitor": ["manifest", "orchestrator"],
        "logger": ["manifest", "orchestrator"]}
for n, dl in deps.items():
    p = P[n]
    s = {"image": tag,
         "command": ["capability", "serve", "--name", n, "--listen", f"0.0.0.0:{p}"],
         "ports": [f"127.0.0.1:{p}:{p}"],
         "env_file": [env_file(n, {})],
         # what chora's orchestrator gives a capability container
         "environment": dict(CHORA_PROJECT=project, MANIFEST_URL=murl, CHORA_SERVICE_NAME=n,
                             CHORA_SERVICE_VERSION="1.0.0", PORT=p, CHORA_ADVERTISE_URL=f"http://{n}:{p}"),
         "healthcheck": health(p), "depends_on": healthy(*dl)}
    if n in ("storage", "logger"):
        s["volumes"] = [f"{n}-data:/data"]
        s["environment"]["CHORA_DATA_DIR"] = "/data"
    svc[n] = s
doc = {"version": "2.4", "services": svc,
       "volumes": {"manifest-data": {}, "storage-data": {}, "logger-data": {}}}
# JSON is YAML
with open(os.path.join(d, "staging-compose.yml"), "w") as f:
    json.dump(doc, f, indent=2)
PY
}

compose_run() {  # compose_run ROUND
  local round=$1
  local project="cb${RUN_ID}compose$round"
  local dir="$WORK/$project"; mkdir -p "$dir"
  echo "$project $dir" >> "$CPROJECTS"
  local ports; ports=$(free_ports 8)
  # shellcheck disable=SC2086
  compose_file "$dir" "$project" $ports
  cp "$dir/staging-compose.yml" "$OUT/staging-compose.yml"   # the last one, for reading (no secrets in it)
  before_measure
  local t rc=0 up_secs secs="" ids states
  t=$(now_ns)
  (cd "$dir" && "${COMPOSE[@]}" -p "$project" -f staging-compose.yml up -d) > "$OUT/logs/compose-$round.log" 2>&1 || rc=$?
  up_secs=$(secs_since "$t")
  if [ "$rc" = 0 ]; then
    ids=$(cd "$dir" && "${COMPOSE[@]}" -p "$project" -f staging-compose.yml ps -q)
    while :; do
      # shellcheck disable=SC2086
      states=$(docker inspect --format '{{.State.Health.Status}}' $ids 2>/dev/null | sort | uniq -c | tr -s ' \n' ' ')
      if [ "$(docker inspect --format '{{.State.Health.Status}}' $ids 2>/dev/null | grep -c '^healthy$')" = 8 ]; then
        secs=$(secs_since "$t"); break
      fi
      if [ "$(( ($(now_ns) - t) / 1000000000 ))" -ge 120 ]; then
        problem "round $round compose: not all healthy after 120 s: $states"; break
      fi
      sleep 0.05
    done
  else
    problem "round $round compose: up -d exited $rc (see $OUT/logs/compose-$round.log)"
  fi
  # Equivalence check (not timed): all 8 registered in this compose Manifest.
  local mport; mport=$(cut -d' ' -f1 <<<"$ports")
  local reg
  sleep 1.2
  reg=$(CHORA_CREDENTIALS="$dir/home/credentials.json" "$CHORA" manifest list --url "http://127.0.0.1:$mport" --format json 2>"$OUT/logs/compose-$round.list.err" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d if isinstance(d,list) else d.get("services",d); print(len(d))' 2>/dev/null || echo "?")
  [ "$reg" = 8 ] || problem "round $round compose: $reg services registered in its Manifest, not 8"
  record "$round" compose "${secs:-nan}" "up -d returned after $up_secs s; $reg services registered"
  record "$round" compose-up-d "$up_secs" "docker-compose up -d alone (it waits for the dependencies' health, not for the last services')"
  (cd "$dir" && "${COMPOSE[@]}" -p "$project" -f staging-compose.yml logs --no-color) > "$OUT/logs/compose-$round.services.log" 2>&1 || true
  remove_compose "$project" "$dir"
}

# ---------------------------------------------------------------- rounds
for r in $(seq 1 "$N"); do
  log ""
  log "=== round $r of $N ==="
  # Alternate the order so that neither side always runs right after the other's cleanup.
  if [ $((r % 2)) = 1 ]; then
    chora_run "$r" chora --skip-validation
    compose_run "$r"
    chora_run "$r" chora-par --skip-validation --parallel
    chora_run "$r" chora-full
  else
    compose_run "$r"
    chora_run "$r" chora-full
    chora_run "$r" chora-par --skip-validation --parallel
    chora_run "$r" chora --skip-validation
  fi
done

# ---------------------------------------------------------------- report
python3 - "$OUT" "$N" "$CHORA" <<'PY' | tee -a "$RESULTS" | tee "$OUT/table.md"
import csv, glob, json, os, re, statistics, sys
out, n, chora = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = list(csv.DictReader(open(f"{out}/runs.tsv"), delimiter="\t"))
def vals(v):  # runs that failed (exit != 0) are listed per round but not in the medians
    return [float(r["seconds"]) for r in rows if r["variant"] == v and r["seconds"] not in ("", "nan")
            and not re.match(r"exit [1-9]", r["note"])]
def med(x): return statistics.median(x) if x else float("nan")
labels = [
    ("chora", "`chora bootstrap --skip-validation` (until all 8 healthy)"),
    ("chora-par", "`chora bootstrap --skip-validation --parallel`"),
    ("chora-full", "`chora bootstrap` (validation included)"),
    ("compose", "`docker-compose up -d` until all 8 healthy"),
    ("compose-up-d", "`docker-compose up -d` returns"),
    ("image-build", "`chora image build` (separately)"),
]
rounds = sorted({int(r["round"]) for r in rows})
print(f"Wall time, seconds ({n} rounds; median, min, max; then each round)\n")
print("| measurement | median s | min s | max s | " + " | ".join(f"round {i}" for i in rounds) + " |")
print("| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in rounds) + " |")
for k, label in labels:
    v = vals(k)
    per = {int(r["round"]): r["seconds"] for r in rows if r["variant"] == k}
    print(f"| {label} | {med(v):.3f} | {min(v) if v else float('nan'):.3f} | {max(v) if v else float('nan'):.3f} | "
          + " | ".join(f"{float(per[i]):.3f}" if i in per and per[i] != "nan" else "-" for i in rounds) + " |")
print("\nLoad average (1/5/15 min) and CPU busy % (0.5 s) before each measurement:\n")
for r in rows:
    if r["variant"] != "compose-up-d":
        print(f"- round {r['round']} {r['variant']}: load {r['loadavg_before']}, busy {r['busy_pct_before']} %"
              + (f"; {r['note']}" if r["note"] else ""))
# Phases and slowest steps of the chora runs
for variant in ("chora", "chora-par", "chora-full"):
    docs = []
    for f in sorted(f for f in glob.glob(f"{out}/json/*.json")
                    if re.fullmatch(re.escape(variant) + r"-\d+\.json", os.path.basename(f))):
        try: docs.append(json.load(open(f)))
        except Exception as e: print(f"\n{f}: unparseable ({e})")
    if not docs: continue
    per, steps = {}, {}
    for d in docs:
        for p in d.get("phases", []):
            per.setdefault((p["phase"], p.get("name", "")), []).append(float(p["duration_seconds"]))
            for st in p.get("steps", []):
                if st.get("duration_ms") is not None:
                    name = re.sub(r" \((pid \d+|container [0-9a-f]+)\)", "", st["name"])
                    steps.setdefault((p["phase"], name), []).append(st["duration_ms"])
    print(f"\n`{variant}` phases (median s of {len(docs)} runs): "
          + ", ".join(f"{ph} {nm} {med(v):.3f}" for (ph, nm), v in sorted(per.items())))
    print(f"`{variant}` steps (median ms): "
          + ", ".join(f"{ph}:{nm} {med(v):.0f}" for (ph, nm), v in sorted(steps.items())))
c, cp, cf, k = med(vals("chora")), med(vals("chora-par")), med(vals("chora-full")), med(vals("compose"))
def goal(ok): return "**met**" if ok else "**missed**"
print("\nGoals (issue 14 a; medians)\n")
print(f"- chora < 5 s to all 8 healthy: {goal(c < 5)} ({c:.3f} s; with --parallel {cp:.3f} s; with validation {cf:.3f} s)")
print(f"- chora >= 3x faster than compose: {goal(k / c >= 3)} (compose {k:.3f} s / chora {c:.3f} s = {k / c:.2f}x; with --parallel {k / cp:.2f}x)")
probs = open(f"{out}/problems.txt").read().strip()
print("\nProblems noted during the run: " + ("none" if not probs else "\n" + probs))
PY
