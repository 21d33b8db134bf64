# Stateless services: online-store writer, gRPC serving, and the one-shot topic creation
# and `feast apply`.
#
#   docker build -f docker/Dockerfile.app -t pz-app .      (context: the repo root)
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/app
COPY pyproject.toml README.md ./
COPY personalization ./personalization
COPY feature_repo ./feature_repo
COPY flink_jobs ./flink_jobs
COPY writer ./writer
COPY serving ./serving
COPY ops ./ops
COPY traffic ./traffic
COPY analysis ./analysis
COPY dashboard ./dashboard
COPY bench ./bench
RUN pip install /opt/app

# Run dir (Feast registry) and the feature repo's placeholder data are written at runtime.
RUN useradd --system --uid 10001 --home-dir /opt/app app \
    && mkdir -p /var/lib/pz /opt/app/feature_repo/data \
    && chown -R app /var/lib/pz /opt/app/feature_repo
COPY --chmod=0755 docker/pz-app.sh /usr/local/bin/pz-app

ENV PZ_RUN_DIR=/var/lib/pz \
    PZ_FEAST__REPO_PATH=/opt/app/feature_repo
USER app
EXPOSE 50051
ENTRYPOINT ["pz-app"]
CMD ["serving"]
