#!/usr/bin/env bash
# Image benchmark (issue 14): cold `chora image build` (the image removed before
# each run) of chora itself and, when installed, of /usr/bin/etcd; prints the wall
# time of each run (min / median / max) and the image's size as the engine reports it.
#
#   bench/image.sh                    # N=5 runs each
#   CHORA_BIN=target/debug/chora N=3 bench/image.sh
#
# Without CHORA_BIN it builds `cargo build --release -p chora`. It removes every
# image it made (also on failure or Ctrl-C). Needs: docker (a running engine),
# binutils (objcopy, to strip debug info), etcd-server (optional).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
if [ -z "${CHORA_BIN:-}" ]; then
  cargo build --release -p chora >&2
  CHORA_BIN=${CARGO_TARGET_DIR:-target}/release/chora
fi
TAG_PREFIX="chora-bench-$$"
tags=()
cleanup() { for t in "${tags[@]}"; do docker rmi -f "$t" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT INT TERM

# bench NAME [chora image build args…]
bench() {
  local name=$1; shift
  local tag="$TAG_PREFIX-$name:t" times=() start end
  tags+=("$tag")
  for _ in $(seq "$N"); do
    docker rmi -f "$tag" >/dev/null 2>&1 || true
    start=$(date +%s.%N)
    "$CHORA_BIN" image build "$@" --tag "$tag" >/dev/null
    end=$(date +%s.%N)
    times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')")
  done
  local size
  size=$(docker image inspect --format '{{.Size}}' "$tag")
  printf '%s\n' "${times[@]}" | sort -n | awk -v name="$name" -v n="$N" -v size="$size" '
    { t[NR] = $1 }
    END { printf "%-6s cold build  min %.2f s  median %.2f s  max %.2f s  (%d runs)  image %.1f MiB\n",
          name, t[1], t[int((n + 1) / 2)], t[n], n, size / 1048576 }'
}

echo "binary: $CHORA_BIN ($(stat -c %s "$CHORA_BIN") bytes), engine $(docker version --format '{{.Server.Version}}')"
bench chora
if [ -x /usr/bin/etcd ]; then
  bench etcd --binary /usr/bin/etcd
fi
