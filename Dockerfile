# Serving image: the gRPC recommender on ONNX Runtime. No torch, no training code.
#
#   docker build --target cpu -t sessionrec:cpu .                       # CPU (default target)
#   docker build --target gpu -t sessionrec:gpu .                       # CUDA 13 + cuDNN 9 wheels
#   docker build --build-context model=runs/demo-export -t sessionrec:cpu-demo .   # model baked in
#   docker run --rm -p 50051:50051 -v "$PWD/runs/demo-export:/models/current:ro" sessionrec:cpu
#
# Optional inputs are named build contexts, empty unless given:
#   model   an export directory (python -m training export); copied to /models/current.
#           Without it the image expects the model mounted there at run time.
#   wheels  a directory of wheels for offline builds (scripts/container-wheels.sh); with
#           --build-arg PIP_NO_INDEX=1 nothing is fetched from an index.
# Podman/buildah: the same flags, plus --format docker to keep the HEALTHCHECK.
# docs/deploy.md has the whole story; scripts/container-build.sh is the offline CI build.

ARG BASE_IMAGE=python:3.11-slim

FROM scratch AS model
FROM scratch AS wheels

# ---- dependencies: one virtualenv per flavour, built before any source is copied ----------
FROM ${BASE_IMAGE} AS deps
# pip reads its options from PIP_* variables: the build argument PIP_NO_INDEX=1 (declared in
# each stage that installs) makes pip use /wheels alone, as CI does with no index reachable.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/wheels
RUN python3 -m venv /opt/venv
COPY --from=wheels / /wheels/
COPY pyproject.toml scripts/container-requirements.py /build/
# the versions of uv.lock, so the image runs what the tests ran (scripts/lock writes them)
COPY constraints/ /build/constraints/

FROM deps AS deps-cpu
ARG PIP_NO_INDEX=0
RUN python3 /build/container-requirements.py /build/pyproject.toml serve-cpu >/build/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --requirement /build/requirements.txt \
      --constraint /build/constraints/serve-cpu.txt

FROM deps AS deps-gpu
# onnxruntime-gpu's own extras pull the CUDA runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN
# wheels that match the build. Empty it when BASE_IMAGE already ships CUDA and cuDNN.
ARG ORT_GPU_EXTRAS=cuda,cudnn
ARG PIP_NO_INDEX=0
RUN python3 /build/container-requirements.py /build/pyproject.toml serve \
      ${ORT_GPU_EXTRAS:+--with-extras onnxruntime-gpu=${ORT_GPU_EXTRAS}} >/build/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --requirement /build/requirements.txt \
      --constraint /build/constraints/serve.txt \
 && (find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' >/build/nvidia-libs.conf || true)

# ---- what both flavours share at run time -------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --gid 10001 recsys \
 && useradd --no-log-init --uid 10001 --gid recsys --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin recsys
# Same names and defaults as service/config.py; the model directory is fixed in the image.
# HOME=/tmp: libraries that keep a file in $HOME (ONNX Runtime does) find a writable one, also
# under Kubernetes' read-only root filesystem, where /tmp is an emptyDir.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    RECSYS_MODEL_DIR=/models/current \
    RECSYS_HOST=0.0.0.0 \
    RECSYS_PORT=50051 \
    RECSYS_METRICS_PORT=9090 \
    RECSYS_DEVICE=auto \
    RECSYS_DRAIN_S=2 \
    RECSYS_GRACE_S=10
WORKDIR /app
EXPOSE 50051 9090
# The server sets SERVING only after the model is loaded and warmed up; start-period covers
# that. Kubernetes ignores this and uses its own grpc probes (k8s/base/deployment.yaml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-m", "service.tools.healthcheck", "--timeout", "3"]
# Exec form: python is PID 1 and receives SIGTERM itself; the server drains for
# RECSYS_DRAIN_S, lets calls in flight finish for at most RECSYS_GRACE_S seconds and exits
# 0, so `docker stop` (10 s) returns before its SIGKILL when calls finish promptly.
ENTRYPOINT ["python", "-m", "service"]

# ---- GPU: docker run --gpus all (NVIDIA Container Toolkit) -------------------------------
FROM runtime AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=deps-gpu /opt/venv /opt/venv
COPY --from=deps-gpu /build/nvidia-libs.conf /etc/ld.so.conf.d/zz-nvidia-wheels.conf
# The CUDA libraries live inside the nvidia-* wheels; register them with the dynamic loader
# so libonnxruntime_providers_cuda.so finds them whatever the Python version in the path.
RUN ldconfig
COPY service /app/service
RUN python -m compileall -q /app/service
COPY --from=model / /models/current/
USER 10001:10001

# ---- CPU: the default target, last so a plain `docker build .` produces it ----------------
FROM runtime AS cpu
COPY --from=deps-cpu /opt/venv /opt/venv
COPY service /app/service
RUN python -m compileall -q /app/service
COPY --from=model / /models/current/
USER 10001:10001
