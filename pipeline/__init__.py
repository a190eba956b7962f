"""Vitrine's library. Imports run one way (checked by the import contract in ``pyproject.toml``):

cli, api                      entry points (and ``workers``, the Celery tasks)
dev                           local services, samples, worker process (not shipped search)
ingest | search | merchants   domains
jobs | es | encoders | storage  the queue, Elasticsearch, models, the image store
settings | documents | images | plugins   the kernel (plugins: entry-point look-up)
"""
