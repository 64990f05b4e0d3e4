#!/bin/sh
# The root filesystem of chora's infra test hosts: Debian bookworm, minbase, with
# what a freshly provisioned cloud host has (sshd, sudo, iproute2, ping, procps,
# CA certificates) and nothing chora installs itself. Writes a tarball to $1.
# The test kit caches the tarball under the SHA-256 of this file: edit this
# recipe and the next test run builds a new one.
set -eu
out=$1
dir=$(mktemp -d /var/tmp/chora-rootfs.XXXXXX)
trap 'rm -rf "$dir"' EXIT
debootstrap --variant=minbase \
  --include=openssh-server,sudo,iproute2,ca-certificates,iputils-ping,procps \
  bookworm "$dir" http://deb.debian.org/debian
# Every host makes its own host keys when it starts.
rm -f "$dir"/etc/ssh/ssh_host_*
# A fresh host has no package lists: chora runs `apt-get update` itself.
chroot "$dir" apt-get clean
rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin
tar -C "$dir" --numeric-owner -cf "$out.part" .
mv "$out.part" "$out"
