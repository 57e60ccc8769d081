# scopegate container image: `scripts/build-image` builds and smoke-tests it (podman; see the README).
#   build stage  a virtualenv with scopegate[speed] (uvloop) installed from the source tree; wheels only, no compiler
#   final stage  the same slim base, the virtualenv copied in, a non-root user, nothing written at run time
# The build and final stages must share one base image: the virtualenv's python is a symlink into it.

FROM python:3.11-slim AS build
# pip trusts the system CA store rather than its own bundle, so a build behind a TLS-inspecting proxy can bind-mount
# the host's store (scripts/build-image does). Build stage only: nothing of it reaches the final image.
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/scopegate
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# --only-binary: every dependency has a wheel for this platform; never fall back to compiling one.
# Then pip and setuptools leave the virtualenv: the final image needs neither.
RUN /opt/scopegate/bin/pip install --no-cache-dir --only-binary=:all: ".[speed]" \
    && /opt/scopegate/bin/pip uninstall --yes pip setuptools \
    && /opt/scopegate/bin/scopegate --version

FROM python:3.11-slim
LABEL org.opencontainers.image.title="scopegate" \
      org.opencontainers.image.description="Policy enforcement proxy for Logto / RFC 9068 access tokens" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 scopegate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin scopegate
COPY --from=build /opt/scopegate /opt/scopegate
# A default config so the image starts on its own; Kubernetes mounts the real one over /etc/scopegate.
COPY config/example.yaml /etc/scopegate/config.yaml
# Bytecode was compiled at install time; never try to write it (the root filesystem is read-only in the chart).
ENV PATH=/opt/scopegate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 9090
# No curl in slim images: the image's own python asks the admin port. SCOPEGATE_HEALTHZ_URL follows a moved admin_listen.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('SCOPEGATE_HEALTHZ_URL', 'http://127.0.0.1:9090/healthz'), timeout=2)"]
ENTRYPOINT ["scopegate"]
CMD ["run", "--config", "/etc/scopegate/config.yaml"]
