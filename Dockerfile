# The gateway image. Kept minimal: the same install and serve commands the tests run outside Docker.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
 && useradd --system --home /data gateway \
 && mkdir -p /data && chown gateway /data

USER gateway
WORKDIR /data
ENV AIGW_HOST=0.0.0.0 \
    AIGW_PORT=8000
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["ai-gateway", "serve"]
