#!/usr/bin/env bash
# bench/quiet.sh [NOTE_FILE]: wait until no `wrk` process runs and the machine is idle
# (< 10% of all cores busy over 1 s, from /proc/stat), up to QUIET_MAX seconds (120).
# If it has to give up it appends a line to NOTE_FILE (if given) and exits 0 anyway,
# so that it can serve as (part of) a hyperfine --prepare command.
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
QUIET_MAX="${QUIET_MAX:-120}"
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }   # incl. irq, softirq, steal
waited=0
while :; do
  if ! pgrep -x wrk >/dev/null; then
    b0=$(busy); sleep 1; b1=$(busy)
    [ $(( (b1 - b0) * 100 / (HZ * NCPU) )) -lt 10 ] && exit 0
  else
    sleep 1
  fi
  waited=$((waited + 1))
  if [ "$waited" -ge "$QUIET_MAX" ]; then
    [ -n "${1:-}" ] && echo "$(date -u +%T) not idle after ${QUIET_MAX}s (wrk running: $(pgrep -x wrk >/dev/null && echo yes || echo no)); proceeded anyway" >> "$1"
    exit 0
  fi
done
