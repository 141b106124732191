#!/usr/bin/env bash
# Download, on the host, every wheel the serving image needs, so the image can be built with
# no network (`pip install --no-index --find-links`). The wheels are for the base image's
# interpreter, not the host's: CPython 3.11 on glibc x86_64 (Debian bookworm has glibc 2.36).
#
#   scripts/container-wheels.sh [GROUP] [DEST]      # defaults: serve-cpu build/container/wheels
#   PY_VERSION=3.12 scripts/container-wheels.sh     # for a base image with another Python
#   EXTRAS=onnxruntime-gpu=cuda,cudnn scripts/container-wheels.sh serve   # GPU image (~3 GB)
#
# The directory is then handed to the build as `--build-context wheels=DEST`.
set -euo pipefail
cd "$(dirname "$0")/.."

group=${1:-serve-cpu}
dest=${2:-build/container/wheels}
py_version=${PY_VERSION:-3.11}
glibc_minor=${GLIBC_MINOR:-36}
python=${PYTHON:-.venv/bin/python}
[[ -x $python ]] || python=python3

mkdir -p "$dest"
reqs="$dest/requirements-$group.txt"
"$python" scripts/container-requirements.py pyproject.toml "$group" \
  ${EXTRAS:+--with-extras "$EXTRAS"} >"$reqs"

# pip only accepts a foreign platform with explicit tags: list every manylinux level the
# target glibc can load, newest first, plus the legacy aliases.
platforms=()
for ((minor = glibc_minor; minor >= 17; minor--)); do
  platforms+=(--platform "manylinux_2_${minor}_x86_64")
done
platforms+=(--platform manylinux2014_x86_64 --platform linux_x86_64)
abi="cp${py_version/./}"

"$python" -m pip download --quiet --disable-pip-version-check \
  --only-binary=:all: --implementation cp --python-version "$py_version" \
  --abi "$abi" --abi abi3 --abi none "${platforms[@]}" \
  --dest "$dest" --requirement "$reqs" --constraint "constraints/$group.txt"
echo "container-wheels: $(find "$dest" -name '*.whl' | wc -l) wheels for $group (CPython $py_version) in $dest"
