# sidecache: a caching reverse-proxy sidecar. Build: docker build -t sidecache .
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin sidecache
WORKDIR /app

COPY pyproject.toml README.md ./
COPY rules ./rules
COPY proxy ./proxy
# proxy/defaults/a1betting.toml links to rules/a1betting.toml: rules must be there before the build
RUN pip install . && rm -rf /app/proxy /app/build
COPY config ./config

USER sidecache
# 8080: proxy traffic (point the frontend here). 9901: admin, bound to loopback inside the container
# by default; publish it only together with SIDECACHE_ADMIN_TOKEN and --admin 0.0.0.0:9901.
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"]

CMD ["sidecache", "serve", "--config", "/app/config/sidecache.toml", "--rules", "/app/rules", "--listen", "0.0.0.0:8080"]
