#!/usr/bin/env bash
# Dashboard benchmark (issue 17): the page's weight and speed in headless Chromium.
#
#   bench/ui.sh                # release build, WINDOW=5 seconds of status changes per mode
#
# Runs the ignored test `ui::bench::bench_the_dashboard` of the integration test
# binary (crates/chora/tests/it/ui/bench.rs): it bootstraps the dev system on free
# loopback ports in a temp dir (`--skip-validation`), then
#   - opens the one-time login URL in a fresh tab five times (the first with a cold
#     cache) and reads the Navigation / Resource / Paint Timing entries: bytes
#     transferred (page + CSS + JS, the event stream excluded), first contentful
#     paint, and when the first snapshot of the event stream was applied ("live");
#   - reads the size of the event stream's first message (the snapshot, 8 services);
#   - registers 50 more services in the Manifest and has each flip up <-> unhealthy
#     through heartbeats, first 10 times a second each (500 changes/s), then as fast
#     as the Manifest answers, for WINDOW seconds each, and reports the row updates
#     per second the page applied (`window.choraDashboard.events`), its main thread's
#     busy share (CDP Performance.getMetrics TaskDuration / ScriptDuration) and how
#     long after the last change every row showed the final status.
# Everything it started is stopped when the test ends (Site's reset on drop).
#
# Needs: chromium (apt-get install -y chromium), cargo.
# Env knobs: WINDOW (5), CARGO_TARGET_DIR.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
export WINDOW="${WINDOW:-5}"
echo "date:     $(date -u +'%Y-%m-%d %H:%M UTC')"
echo "machine:  $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "browser:  $(chromium --version 2>/dev/null || echo 'chromium not found')"
echo "command:  cargo test --release -p chora --test it ui::bench -- --ignored --nocapture (WINDOW=$WINDOW)"
echo
CHORA_REQUIRE_CHROMIUM=1 cargo test --release -q -p chora --test it ui::bench -- \
  --ignored --nocapture --test-threads=1 2>&1 | tee /tmp/chora-bench-ui.log | grep '^BENCH' | sed 's/^BENCH //'
grep -q 'test result: ok. 1 passed' /tmp/chora-bench-ui.log || { echo "the benchmark failed: /tmp/chora-bench-ui.log" >&2; exit 1; }
