#!/usr/bin/env bash
# Set everything up, then run the main job end to end: local Elasticsearch and Redis, the index,
# a real Celery worker, the bundled sample catalogue through the queue, and real kNN queries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/vitrine demo "$@"
