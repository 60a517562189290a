# The engine's image: `docker build -t crm-engine:0.1.0 .` (deploy/docker-compose.yml builds it).
# Runs `python run.py live` with metrics on port 9100 (Bytewax cluster traffic: 2101); the same
# image runs `run.py dashboard`, `run.py alert-bridge`, `run.py produce` and the tools
# (`audit`, `snooze`, `replay`, `simulate`). Not in it: bench/ (so not `run.py evaluate`, an
# offline tool to run from a checkout) and tests/.
#
# Two stages: the builder installs the pinned requirements into a virtual environment; the
# runtime stage copies that environment and the code onto the same slim base, without pip's
# caches or build tools. The base is pinned by version (pin its digest too where your
# registry policy asks for it: FROM python:3.11.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
# LightGBM (the gradient-boosted challenger) links OpenMP's runtime, which slim images lack.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --no-create-home engine \
    && mkdir -p /var/lib/crm-engine && chown engine /var/lib/crm-engine
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY pyproject.toml run.py ./
COPY config config
COPY schemas schemas
COPY detectors detectors
COPY engine engine
COPY flows flows
COPY sinks sinks
COPY simulator simulator
COPY ops ops
COPY dashboard dashboard
USER 10001
EXPOSE 9100 2101 8000 9095
ENTRYPOINT ["python", "run.py"]
CMD ["live", "--quiet", "--metrics-port", "9100", "--metrics-host", "0.0.0.0"]
