#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite: unit tests and integration tests against
# a real Elasticsearch, Redis and Celery worker (started by the test session's fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
