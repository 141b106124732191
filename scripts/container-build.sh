#!/usr/bin/env bash
# Build the serving image with podman, offline: debootstrap base + wheels downloaded on the host.
# This is how CI builds it (no registry is reachable there); with registry access a plain
# `podman build --format docker --target cpu .` does the same from python:3.11-slim.
#
#   scripts/container-build.sh                                   # localhost/sessionrec:cpu, no model
#   scripts/container-build.sh --model runs/demo-export --tag localhost/sessionrec:cpu-demo
#   scripts/container-build.sh --target gpu                      # downloads ~3 GB of CUDA wheels
#
# Environment: BASE_IMAGE (default localhost/sessionrec-base:bookworm, created by
# scripts/container-base.sh when missing), WHEELS (default build/container/wheels),
# PODMAN_ULIMITS (default "nofile=20000:20000 nproc=32768:32768": sandboxes that forbid
# podman's larger defaults).
set -euo pipefail
cd "$(dirname "$0")/.."

target=cpu model="" tag=""
while (($#)); do
  case $1 in
    --target) target=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "usage: $0 [--target cpu|gpu] [--model EXPORT_DIR] [--tag IMAGE]" >&2; exit 2 ;;
  esac
done
tag=${tag:-localhost/sessionrec:$target}
base=${BASE_IMAGE:-localhost/sessionrec-base:bookworm}
wheels=${WHEELS:-build/container/wheels-$target}

if [[ -n $model && ! -f $model/model.onnx ]]; then
  echo "container-build: $model has no model.onnx; give an export dir (python -m training export)" >&2
  exit 2
fi

seconds() { date +%s.%N; }
t0=$(seconds)
if [[ $base == localhost/sessionrec-base:* ]] && ! podman image exists "$base"; then
  BASE_IMAGE=$base scripts/container-base.sh
fi
t1=$(seconds)
if [[ $target == gpu ]]; then
  EXTRAS=onnxruntime-gpu=cuda,cudnn scripts/container-wheels.sh serve "$wheels"
else
  scripts/container-wheels.sh serve-cpu "$wheels"
fi
t2=$(seconds)

ulimits=()
for limit in ${PODMAN_ULIMITS-nofile=20000:20000 nproc=32768:32768}; do
  ulimits+=(--ulimit "$limit")
done
# --network none proves the build needs no index; --format docker keeps the HEALTHCHECK.
podman build --quiet --format docker --network none "${ulimits[@]}" \
  --build-arg BASE_IMAGE="$base" --build-arg PIP_NO_INDEX=1 \
  --build-context wheels="$wheels" ${model:+--build-context model="$model"} \
  --target "$target" --tag "$tag" . >/dev/null
t3=$(seconds)

awk -v tag="$tag" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN {
  printf "container-build: %s built; base %.1fs, wheels %.1fs, build %.1fs\n", tag, b - a, c - b, d - c }'
