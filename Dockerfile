# syntax=docker/dockerfile:1
# CPU image: serving dependencies only (no TensorFlow), non-root, data volume, health check.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/venv/bin/pip install --no-compile . \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)"

FROM python:3.11-slim
# ORT_DISABLE_TELEMETRY: onnxruntime's native library otherwise looks up a Microsoft telemetry
# host by DNS while the server is idle (issue 16); app/__init__.py sets it too.
ENV PATH=/opt/venv/bin:$PATH \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_HOST=0.0.0.0 \
    APP_PORT=8000 \
    APP_DATA_DIR=/data \
    APP_WORKERS=1 \
    APP_PROVIDERS=cpu
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /srv --no-create-home app \
    && mkdir -p /data && chown app:app /data && chmod 0700 /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
# Code and models stay root-owned (read-only to the app user); only /data is writable.
COPY app ./app
# The intended-use gate (thresholds and arrays) beside the model: the server refuses to start
# without it.
COPY models/manifest.json models/*.onnx models/*_gate.json models/*_gate.npz ./models/
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# APP_WORKERS and APP_ORT_THREADS come from the environment at run time.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('APP_PORT', '8000')}/health/ready\", timeout=2)"]
CMD ["sh", "-c", "python -m app migrate && exec python -m app serve"]
