#!/usr/bin/env bash
# The fleet benchmark (issue 23, DESIGN.md §13): chora's prod topology as a
# Docker Swarm over three test hosts, from this machine over SSH.
#
#   bench/fleet.sh                 # debug build (PROFILE=release for a release one)
#   FIFTY=1 bench/fleet.sh         # 50 capabilities over the 3 hosts instead (fleet/fifty.rs)
#
# Runs the integration test `fleet::three_prepared_hosts_run_prod_as_a_swarm_and_validate`
# (crates/chora/tests/it/fleet/): three fresh debootstrap test hosts, prepared by
# `chora infra bootstrap` itself (Docker, a WireGuard mesh, a swarm of three managers),
# then `chora bootstrap --environment prod --inventory` (cold), a no-op re-run, then a
# hung host (docker pause, 20 s) and a lost host (docker stop) with a writer through the
# three Manifest nodes and a reader through the gateway every 20 ms. It prints one row
# per figure and fails if a bound of the contract is broken (write gap > 3 s, a
# capability not back within 15 s, an acknowledged registration lost). Everything it
# made is removed at the end. One fleet at a time: the machine is shared.
#
# Needs: docker (20.10+), debootstrap and root (the first time: the hosts' root
# filesystem is cached), ssh, etcd (apt-get install -y etcd-server), cargo.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
PROFILE="${PROFILE:-debug}"
flag=""
[ "$PROFILE" = release ] && flag="--release"
echo "date:     $(date -u +'%Y-%m-%d %H:%M UTC')"
echo "machine:  $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "docker:   $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo 'not reachable') (the hosts: Debian's docker.io, overlay2 on a volume)"
filter="fleet::"
extra=""
if [ "${FIFTY:-0}" = 1 ]; then
  filter="fleet::fifty::bench_fifty_services_over_three_hosts"
  extra="--ignored --exact"
fi
echo "command:  cargo test $flag -p chora --test it $filter -- $extra --test-threads=1 --nocapture ($PROFILE build)"
echo
# shellcheck disable=SC2086
CHORA_REQUIRE_DOCKER=1 CHORA_REQUIRE_DEBOOTSTRAP=1 cargo test $flag -q -p chora --test it "$filter" -- \
  $extra --nocapture --test-threads=1 2>&1 | tee /tmp/chora-bench-fleet.log | grep '^BENCH' | sed 's/^BENCH //' \
  | awk -F'|' 'BEGIN { printf "%-52s %10s  %s\n", "what", "measured", "goal" }
               { printf "%-52s %10s  %s\n", $1, $2, $3 }'
grep -q 'test result: ok. 1 passed' /tmp/chora-bench-fleet.log || { echo "the benchmark failed: /tmp/chora-bench-fleet.log" >&2; exit 1; }
