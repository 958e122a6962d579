# One image for everything bimguard runs in a cluster: the admission webhook
# (`bimguard webhook`), the repair Job (`bimguard scan` / repair) and the short-lived rewriter pod
# (`bimguard rewrite-cfg`, or `python -m bimguard.rewrite_cfg`, which needs only the standard
# library). The chart passes the subcommand as args; ENTRYPOINT is the console script.
#
# Both stages use the same base so the virtualenv's interpreter symlink
# (/opt/venv/bin/python -> /usr/local/bin/python3.11) is valid in the final image.
# For reproducible release builds, append the tag's digest: python:3.11.12-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY bimguard ./bimguard
COPY webhook ./webhook
COPY jobs ./jobs
# A regular (non-editable) install builds a wheel and compiles the bytecode now: the pods run
# with a read-only root filesystem and could not write __pycache__ later.
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/bimguard --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="bimguard" \
      org.opencontainers.image.description="Keeps Longhorn v1 disk UUID prefixes unique (BIM name collisions)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/venv /opt/venv
# Non-root by default (the "nonroot" uid of distroless images; the chart sets the same). Only the
# rewriter pod overrides this with runAsUser 0, because it writes a root-owned file on the host.
USER 65532:65532
ENTRYPOINT ["bimguard"]
CMD ["--help"]
