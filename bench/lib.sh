# bench/lib.sh: helpers shared by the bench scripts (sourced; needs ROOT, and WORK
# before child_secs_to is called).

# find_chora NAME: sets CHORA to CHORA_BIN, or builds the release binary here.
find_chora() {
  if [ -n "${CHORA_BIN:-}" ]; then
    CHORA="$CHORA_BIN"
  else
    echo "building: cargo build --release -p chora" >&2
    (cd "$ROOT" && cargo build --release -p chora) >&2
    CHORA="${CARGO_TARGET_DIR:-$ROOT/target}/release/chora"
  fi
  [ -x "$CHORA" ] || { echo "$1: $CHORA is not executable" >&2; exit 1; }
  CHORA="$(cd "$(dirname "$CHORA")" && pwd)/$(basename "$CHORA")"
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s; reaps it.
stop_pid() {
  local pid=$1
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# The processes a bench started (start_logged adds to it): clean_on_exit makes
# sure that, however the script ends, they are stopped in reverse order and
# $WORK is removed.
PIDS=()
clean_on_exit() {
  trap _clean_up EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
_clean_up() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  rm -rf "$WORK"
  exit "$rc"
}
# start_logged NAME CMD...: CMD in the background, its output in $OUT/NAME.log,
# stopped on exit; sets PID.
start_logged() {
  local name=$1; shift
  "$@" > "$OUT/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_ports() {  # free_ports N: N distinct free loopback ports, one line
  python3 - "$1" <<'PY'
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

HZ=$(getconf CLK_TCK)
busy_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }   # incl. irq, softirq, steal
# CPU seconds of this shell's waited-for children (the load generator): `times` must
# run in this shell, not in $(...), hence the file
child_secs_to() { times > "$WORK/times.$1"; }
child_secs() { awk 'NR==2 {split($1,u,"m"); split($2,s,"m"); print u[1]*60+u[2]+s[1]*60+s[2]}' "$WORK/times.$1"; }
