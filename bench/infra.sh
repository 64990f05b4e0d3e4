#!/usr/bin/env bash
# chora infra benchmark (issues 16, 23): `chora infra bootstrap` on three fresh
# test hosts (containers with their own sshd and dockerd on a private Docker
# network, Debian bookworm from debootstrap, one with a non-root sudo user),
# WireGuard mesh, Docker from deb.debian.org, the swarm (three managers):
#
#   cold   every step: Docker and WireGuard installed, keys made, mesh up, a
#          container run on each host, the swarm formed
#   warm   the same inventory again: every step `ok`, nothing changed (the
#          container is run again: that is how `verify` knows Docker works)
#
# each with the hosts in parallel (--parallel 10) and one at a time
# (--parallel 1), on fresh hosts for each mode. The last two columns are the
# slowest host's `verify` and the `swarm` round (one for all hosts). Goals:
# cold < 90 s, warm < 5 s.
#
#   bench/infra.sh                 # ~4 minutes (two cold runs dominate)
#   WARM_RUNS=5 bench/infra.sh     # warm runs per mode (median printed)
#
# The test kit (crates/chora-testkit, infra_host) builds and caches the root
# filesystem on first use (debootstrap, a few minutes, as root) and removes
# every container, network and image tag it made, also on failure. The timing
# is of the whole `chora infra bootstrap` process, as a user sees it; cold runs
# depend on deb.debian.org's speed from here. Needs: Docker, debootstrap, root.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
echo "machine: $(nproc) CPU, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), Docker $(docker version --format '{{.Server.Version}}')"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
cargo test -q -p chora --test it infra::bench_cold_and_warm -- --ignored --nocapture --test-threads 1 2>/dev/null \
  | grep -E '^\|'
echo "goals: cold < 90 s for 3 hosts, warm < 5 s"
