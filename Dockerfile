# Vitrine image: CLI (`vitrine`), Celery worker and HTTP API. CPU-only torch.
# Used by docker-compose.yml (services setup, worker, api); build context is the repository root.
FROM python:3.11-slim

# Caches live under /root/.cache; docker-compose.yml mounts named volumes there
# (models -> $VITRINE_HOME/models, hfcache -> $HF_HOME). The containers run as root so that these
# paths and the volumes' ownership stay simple; keep both files in sync if that changes.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VITRINE_HOME=/root/.cache/vitrine \
    HF_HOME=/root/.cache/huggingface

WORKDIR /app

# 1. CPU-only torch wheels first (own layer, ~cached): from the PyTorch CPU index, so that
#    `pip install .` below finds torch==2.14.1 / torchvision==0.29.1 (as 2.14.1+cpu, which
#    satisfies the == pins in pyproject.toml) already installed and does not pull CUDA wheels.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# 2. The project: distribution vitrine-search (packages pipeline, workers, es_mappings).
#    Add the offline-image extra (`pip install ".[offline-image]"`) for the EfficientNet encoder.
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY workers/ workers/
COPY es_mappings/ es_mappings/
RUN pip install . \
    && python -c "import torch; assert torch.version.cuda is None, 'CUDA torch was installed'" \
    && mkdir -p "$VITRINE_HOME/models" "$HF_HOME"

CMD ["vitrine", "--help"]
