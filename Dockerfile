# The servefleet image: the in-cluster reconciler (`servefleet install-manifests`)
# and the model-staging init container (`python -m servefleet.stage`) both run it.
#   docker build -t ghcr.io/servefleet/servefleet:0.1.0 .
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY servefleet ./servefleet
RUN pip install --no-cache-dir . && rm -rf /src

# The uid the rendered Deployment runs as (runAsNonRoot, read-only root file system).
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "servefleet"]
