# REACT-KD Serve: the inference service on the shipped demo models (or yours, mounted at
# /models). Research use only, not for diagnosis.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Override for a CUDA build of torch, e.g. --build-arg TORCH="torch==2.13.0".
ARG TORCH="torch==2.13.0"
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "$TORCH"
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY app ./app
RUN pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REACTKD_ENVIRONMENT=production \
    REACTKD_STORE_DIR=/data/store
RUN groupadd --gid 10001 reactkd \
    && useradd --create-home --uid 10001 --gid 10001 reactkd \
    && mkdir -p /data/store \
    && chown -R 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
# Numeric, so that Kubernetes' runAsNonRoot can check it. A store mounted from the host must
# be writable by this uid (docs/deployment.md, "The store").
USER 10001:10001
WORKDIR /home/reactkd
EXPOSE 8000
VOLUME ["/data/store"]
# Healthy means ready (/readyz: every served model loaded and warmed), not merely up
# (/healthz, the liveness probe): a container whose models are missing reports unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"
CMD ["reactkd", "serve", "--host", "0.0.0.0", "--port", "8000"]
