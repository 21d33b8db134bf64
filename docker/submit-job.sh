#!/usr/bin/env bash
# One-shot submit of the user-feature job to the JobManager (pz-flink image).
# Settings reach the job through the PZ_* environment of this container (the Python
# driver inherits it). Restores from the newest retained checkpoint under
# PZ_FLINK__CHECKPOINT_DIR unless PZ_RESTORE is "none" or a checkpoint path.
# Does nothing if a job of the same name is already running.
set -euo pipefail
rest="http://${JOBMANAGER_HOST:-jobmanager}:${JOBMANAGER_REST_PORT:-8081}"
job_name="${PZ_FLINK__JOB_NAME:-pz-user-features}"

for _ in $(seq 1 90); do
  if wget -qO- "$rest/overview" 2>/dev/null \
      | python -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["taskmanagers"] > 0 else 1)'
  then
    break
  fi
  echo "waiting for the JobManager at $rest and a TaskManager"
  sleep 2
done

if wget -qO- "$rest/jobs/overview" | JOB_NAME="$job_name" python -c '
import json, os, sys
jobs = json.load(sys.stdin)["jobs"]
live = {"CREATED", "INITIALIZING", "RUNNING", "RESTARTING"}
sys.exit(0 if any(j["name"] == os.environ["JOB_NAME"] and j["state"] in live for j in jobs) else 1)
'; then
  echo "job '$job_name' is already running; nothing to submit"
  exit 0
fi

exec flink run --detached \
  --python /opt/app/flink_jobs/user_features_job.py \
  --pyClientExecutable /opt/venv/bin/python \
  --pyExecutable /opt/venv/bin/python \
  --jarfile "${PZ_FLINK__KAFKA_CONNECTOR_JAR}" \
  -- --restore "${PZ_RESTORE:-latest}"
