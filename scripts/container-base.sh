#!/usr/bin/env bash
# Build a Debian bookworm base image (Python 3.11) with debootstrap and import it into podman,
# for machines that cannot pull python:3.11-slim from a registry. Needs root.
#
#   scripts/container-base.sh            # -> localhost/sessionrec-base:bookworm (skips if present)
#   FORCE=1 scripts/container-base.sh    # rebuild
#   MIRROR=http://deb.debian.org/debian scripts/container-base.sh
#
# The root filesystem is cached as build/container/rootfs-bookworm.tar (git-ignored), so a
# second import on the same machine skips debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${BASE_IMAGE:-localhost/sessionrec-base:bookworm}
suite=${SUITE:-bookworm}
cache=build/container/rootfs-$suite.tar

if [[ -z ${FORCE:-} ]] && podman image exists "$image"; then
  echo "container-base: $image already present"
  exit 0
fi

# The mirror apt already uses here, so debootstrap needs no other network access.
mirror=${MIRROR:-$(
  { grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hoE '^deb[[:space:]]+\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'
  } | grep -v security | head -n1 || true
)}
mirror=${mirror:-http://deb.debian.org/debian}

if [[ -n ${FORCE:-} || ! -s $cache ]]; then
  mkdir -p build/container
  rootfs=$(mktemp -d build/container/rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  echo "container-base: debootstrap $suite from $mirror"
  # minbase + python3-venv: the image builds a virtualenv; nothing else is needed to serve.
  debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$rootfs" "$mirror" \
    >build/container/debootstrap.log 2>&1 \
    || { tail -n 20 build/container/debootstrap.log; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar --numeric-owner -C "$rootfs" -cf "$cache" .
fi

podman import --quiet --change 'CMD ["/usr/bin/python3"]' "$cache" "$image" >/dev/null
echo "container-base: imported $image ($(du -h "$cache" | cut -f1) root filesystem)"
