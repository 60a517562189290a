# The engine's image: `docker build -t crm-engine:0.1.0 .` (deploy/docker-compose.yml builds it).
# Runs `python run.py live` with metrics on port 9100; Bytewax cluster traffic uses 2101.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# LightGBM (the gradient-boosted challenger) links OpenMP's runtime, which slim images lack.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
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
COPY bench bench
RUN useradd --uid 10001 --no-create-home engine && mkdir -p /var/lib/crm-engine && chown engine /var/lib/crm-engine
USER 10001
EXPOSE 9100 2101
ENTRYPOINT ["python", "run.py"]
CMD ["live", "--quiet", "--metrics-port", "9100", "--metrics-host", "0.0.0.0"]
