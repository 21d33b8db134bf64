#!/usr/bin/env bash
# The two commands of this project, each doing all set-up on a fresh machine first:
#
#   ./dev.sh up [personalize up options]   the whole pipeline locally + live traffic
#   ./dev.sh test [pytest options]         lint, type check, unit/integration/e2e tests
#
# and a few helpers:  ./dev.sh down | status | bootstrap
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
cd "$root"

bootstrap() { bash scripts/bootstrap.sh; }
venv() { "$root/.venv/bin/$1" "${@:2}"; }

cmd="${1:-help}"
shift || true
case "$cmd" in
  up)
    bootstrap
    venv personalize up "$@"
    ;;
  down)
    venv personalize down
    ;;
  status)
    venv personalize status
    ;;
  test)
    bash scripts/bootstrap.sh --tests   # also the test-only tools (headless Chromium)
    venv ruff check .
    venv ruff format --check .
    venv mypy
    # Unit tests need no services; integration and e2e tests start real Redis, Kafka,
    # the Flink job (MiniCluster and a standalone cluster) and the gRPC server.
    venv pytest "$@"
    ;;
  bootstrap)
    bootstrap
    ;;
  *)
    sed -n '2,9p' "$0"
    exit 2
    ;;
esac
