#!/usr/bin/env bash
# Build the GPU image (offline, like scripts/container-build.sh) and check, without a GPU, that
# every library ONNX Runtime's CUDA provider and cuDNN link against resolves inside the image,
# except the driver's libcuda.so.1, which the NVIDIA Container Toolkit mounts from the host.
# Not part of CI (it fetches ~1.5 GB of CUDA wheels and builds a ~2.8 GB image).
#
#   scripts/container-gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${TAG:-localhost/sessionrec:gpu}
scripts/container-build.sh --target gpu --tag "$tag"
ulimits=()
for limit in ${PODMAN_ULIMITS-nofile=20000:20000 nproc=32768:32768}; do
  ulimits+=(--ulimit "$limit")
done
podman run --rm "${ulimits[@]}" --entrypoint sh "$tag" -c '
  set -e
  site=$(python -c "import sysconfig; print(sysconfig.get_paths()[\"purelib\"])")
  libs="$site/onnxruntime/capi/libonnxruntime_providers_cuda.so $(ls "$site"/nvidia/cudnn/lib/libcudnn*.so.9)"
  missing=$(for lib in $libs; do ldd "$lib" | awk "/not found/ {print \$1}"; done | sort -u | grep -vx libcuda.so.1 || true)
  python -c "import onnxruntime as o; assert \"CUDAExecutionProvider\" in o.get_available_providers()"
  if [ -n "$missing" ]; then echo "container-gpu-check: unresolved: $missing" >&2; exit 1; fi
  echo "container-gpu-check: CUDA provider and cuDNN resolve every library but libcuda.so.1"
'
