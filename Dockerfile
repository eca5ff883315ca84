# One image for every Frontdesk stage; the command picks the stage (see docker-compose.yml).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

WORKDIR /app
# CPU-only torch first: the default PyPI wheel drags in CUDA libraries (gigabytes) the classifier never uses.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.2"
COPY pyproject.toml README.md ./
COPY frontdesk ./frontdesk
COPY ingest ./ingest
COPY classify ./classify
COPY dispatch ./dispatch
COPY config ./config
RUN pip install ".[model]"

RUN useradd --create-home --uid 10001 --user-group frontdesk \
 && mkdir -p /data /var/cache/frontdesk/models \
 && chown frontdesk:frontdesk /data /var/cache/frontdesk/models
USER frontdesk

# Settings that make the image work without docker-compose; compose overrides them.
ENV FRONTDESK_STORAGE_DATA_DIR=/data \
    FRONTDESK_CLASSIFIER_CACHE_DIR=/var/cache/frontdesk/models \
    FRONTDESK_DISPATCH_ROUTING_FILE=/app/config/routing.yaml \
    FRONTDESK_DISPATCH_TEMPLATES_DIR=/app/config/templates \
    FRONTDESK_METRICS_HOST=0.0.0.0 \
    FRONTDESK_METRICS_PORT=9464

# Convert the bundled encoder at build time: a new model-cache volume is filled from the image, so no
# replica converts at start-up (classify/convert.py; offline, about 4 s).
RUN cd /tmp && python -c "from pathlib import Path; from classify.convert import ensure_hf_model; \
ensure_hf_model(Path('/var/cache/frontdesk/models'), verify=True)"

VOLUME ["/data", "/var/cache/frontdesk/models"]
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=4 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FRONTDESK_METRICS_PORT', '9464'), timeout=4)"
CMD ["frontdesk", "--help"]
