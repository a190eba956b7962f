#!/usr/bin/env bash
# Start, stop or show the local Elasticsearch and Redis: scripts/services.sh start|stop|status
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/vitrine services "${1:-status}"
