#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite: unit tests and integration tests against
# a real Elasticsearch, Redis and Celery worker (started by the test session's fixtures).
# Without arguments, the integration tests then run a second time against a local Elasticsearch
# with security and TLS on (a second node of the same install, VITRINE_SECURE_ES_URL, default
# https://127.0.0.1:9201), the worker holding a least-privilege API key. That pass leaves out the
# four modules that test Vitrine's own input handling and runtimes, not its access to
# Elasticsearch (the API's hostile-input limits and fuzzing, the demo page in a browser, the
# int8 encoder in a worker): the first pass runs them, and each costs 20-50 s.
# With arguments, a single pytest run with them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if (($#)); then
  exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest
echo "==> integration tests against Elasticsearch with security and TLS"
export VITRINE_ES_URL=${VITRINE_SECURE_ES_URL:-https://127.0.0.1:9201}
.venv/bin/vitrine services start
set -a
eval "$(.venv/bin/vitrine services client-env)"
set +a
exec .venv/bin/python -m pytest tests/integration \
  --ignore=tests/integration/test_api_fuzz.py --ignore=tests/integration/test_api_limits.py \
  --ignore=tests/integration/test_demo_page.py --ignore=tests/integration/test_onnx_worker.py
