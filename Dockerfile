# One image for everything bimguard runs in a cluster: the admission webhook
# (`bimguard webhook`), the repair and scan Jobs, and the short-lived on-node pods
# (`bimguard rewrite-cfg`, `bimguard inspect-disk`). The chart passes the subcommand as args;
# ENTRYPOINT is the console script.
#
# Reproducible and reviewable (docs/security.md "The image"):
# - the base is pinned by digest (the multi-arch index of python:3.11.12-slim-bookworm; check it
#   with `docker buildx imagetools inspect python:3.11.12-slim-bookworm` when bumping);
# - every dependency comes from requirements.lock with its sha256 (pip --require-hashes, wheels
#   only), the build backend from requirements-build.lock; tests/chart/test_image.py keeps the
#   lock in step with pyproject.toml;
# - the final stage has no pip, no setuptools and no compiler: nothing in a pod can install;
# - the cluster emulator (bimguard/sim: a fake API server that takes any token as an admin, and
#   cel-python) is left out: it never runs in a cluster, and code that is not there cannot be
#   turned against it. `bimguard demo` and `bimguard sim serve` say so and exit 2 here.
#
# Both stages use the same base so the virtualenv's interpreter symlink
# (/opt/venv/bin/python -> /usr/local/bin/python3.11) is valid in the final image.
ARG PYTHON_IMAGE=python:3.11.12-slim-bookworm@sha256:dbf1de478a55d6763afaa39c2f3d7b54b25230614980276de5cacdde79529d0c

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock requirements-build.lock pyproject.toml README.md ./
COPY bimguard ./bimguard
COPY webhook ./webhook
COPY jobs ./jobs
# The virtualenv gets no pip of its own: the builder's pip installs into it (--python). Wheels only
# (no source build runs a dependency's code at build time). A regular, non-editable install
# compiles the bytecode now: the pods run with a read-only root filesystem.
RUN pip install --require-hashes --no-deps -r requirements-build.lock \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --require-hashes --no-deps --only-binary=:all: -r requirements.lock \
 && pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && pip --python /opt/venv/bin/python install --no-deps --no-index /tmp/wheels/bimguard-*.whl \
 && rm -rf /opt/venv/lib/python3.11/site-packages/bimguard/sim \
 && /opt/venv/bin/bimguard --help > /dev/null \
 && /opt/venv/bin/bimguard webhook --help > /dev/null \
 && /opt/venv/bin/python -m bimguard.rewrite_cfg --help > /dev/null

FROM ${PYTHON_IMAGE}
# Set by the release build: --build-arg VERSION=<tag> --build-arg REVISION=$(git rev-parse HEAD)
# --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ). The defaults say "not a release build".
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="bimguard" \
      org.opencontainers.image.description="Keeps Longhorn v1 disk UUID prefixes unique (BIM name collisions)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/bimguard/bimguard" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The base image ships pip, setuptools and wheel for its own interpreter: remove them (only
# deletions, nothing is built here), so that no installer is left for anyone in a pod.
RUN rm -rf /usr/local/bin/pip /usr/local/bin/pip3 /usr/local/bin/pip3.11 /usr/local/bin/wheel \
           /usr/local/lib/python3.11/site-packages/pip /usr/local/lib/python3.11/site-packages/pip-* \
           /usr/local/lib/python3.11/site-packages/setuptools /usr/local/lib/python3.11/site-packages/setuptools-* \
           /usr/local/lib/python3.11/site-packages/_distutils_hack /usr/local/lib/python3.11/site-packages/distutils-precedence.pth \
           /usr/local/lib/python3.11/site-packages/pkg_resources \
           /usr/local/lib/python3.11/site-packages/wheel /usr/local/lib/python3.11/site-packages/wheel-* \
           /usr/local/lib/python3.11/ensurepip
COPY --from=builder /opt/venv /opt/venv
# Non-root by default (the "nonroot" uid of distroless images; the chart sets the same). Only the
# rewriter pod overrides this with runAsUser 0, because it writes a root-owned file on the host.
USER 65532:65532
ENTRYPOINT ["bimguard"]
CMD ["--help"]
