#!/usr/bin/env bash
# Production failover benchmark (issue 15): the timeline of each fault of the
# prod topology (DESIGN.md §10), against the real containers.
#
#   bench/prod-faults.sh               # release build, WINDOW=30 s before and after each fault
#
# Runs the ignored test `prod::bench_failover_timelines` of the integration test
# binary (crates/chora/tests/it/prod.rs): `chora bootstrap --environment prod`
# from an empty temp dir (3 etcd containers, 3 Manifest nodes, 13 containers on a
# project network of its own, free ports), then five faults in turn, each repaired
# before the next (`chora bootstrap` restarts what is gone): docker kill of the etcd
# leader; docker network disconnect of the leader (reconnected after); docker pause
# of a Manifest node (unpaused after); docker kill of a Manifest node; the whole
# etcd cluster stopped for 10 s and started again. Around each, for WINDOW seconds
# before and after, a writer registers an instance through the three Manifest nodes
# every 20 ms (one client given all three URLs, as every chora client is) and a
# reader GETs analyzer's /health through the gateway every 20 ms. Per fault it
# prints the longest gap between acknowledged writes, the time from the fault to
# the first acknowledged write after it, the p99 of write latency over the window,
# and the gateway errors; it fails if an acknowledged write is lost or a failed
# one exists (a phantom). Everything it made is removed at the end.
#
# Needs: docker (20.10+), etcd (apt-get install -y etcd-server), cargo.
# Env knobs: WINDOW (30), CARGO_TARGET_DIR.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
export WINDOW="${WINDOW:-30}"
echo "date:     $(date -u +'%Y-%m-%d %H:%M UTC')"
echo "machine:  $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "docker:   $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo 'not reachable')"
echo "etcd:     $(etcd --version 2>/dev/null | head -1 || echo 'not found')"
echo "command:  cargo test --release -p chora --test it prod::bench -- --ignored --nocapture (WINDOW=$WINDOW)"
echo
CHORA_REQUIRE_DOCKER=1 CHORA_REQUIRE_ETCD=1 cargo test --release -q -p chora --test it prod::bench -- \
  --ignored --nocapture --test-threads=1 2>&1 | tee /tmp/chora-bench-prod.log | grep '^BENCH' | sed 's/^BENCH //'
grep -q 'test result: ok. 1 passed' /tmp/chora-bench-prod.log || { echo "the benchmark failed: /tmp/chora-bench-prod.log" >&2; exit 1; }
