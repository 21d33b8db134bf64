#!/bin/sh
# Entry point of the pz-app image; every setting comes from PZ_* environment variables.
#   topics       create the Kafka topics (settings.kafka.all_topics, kafka.partitions each)
#   feast-apply  register the feature definitions (registry under PZ_RUN_DIR)
#   writer       online-store writer: feature_updates -> Feast's Redis store
#   serving      gRPC server (recommendations, event collection, health)
#   <anything>   run as a command
set -eu
cmd="${1:-serving}"
[ $# -gt 0 ] && shift
case "$cmd" in
  topics)
    exec python - "$@" <<'PY'
import time

from ops.infra.kafka_broker import ensure_topics
from personalization.settings import load_settings

settings = load_settings()
for attempt in range(30):
    try:
        print("created:", ensure_topics(settings) or "nothing (all exist)")
        break
    except Exception as exc:  # broker still starting
        print(f"kafka not ready ({exc}); retrying")
        time.sleep(2)
else:
    raise SystemExit("could not create the Kafka topics")
PY
    ;;
  feast-apply) exec personalize feast-apply "$@" ;;
  writer) exec python -m writer.process "$@" ;;
  serving) exec python -m serving.server "$@" ;;
  *) exec "$cmd" "$@" ;;
esac
