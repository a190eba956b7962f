"""``vitrine ingest``, ``enqueue``, ``job`` and ``reconcile``: products in, embedding jobs out,
job status, and lost work sent again."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import TypeAdapter, ValidationError

from pipeline.cli.common import fail, settings, setup_logging
from pipeline.cli.progress import import_with_progress
from pipeline.documents import Product
from pipeline.es.client import make_client
from pipeline.images import ImageLimits
from pipeline.ingest.catalogue import CatalogueError, summarise_rejections, write_reject_report
from pipeline.ingest.importer import indexed_content_hashes, plan_import
from pipeline.jobs import create_celery, job_status, wait_for_jobs
from pipeline.jobs import enqueue as enqueue_jobs
from pipeline.storage import ImageStore


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
    setup_logging("WARNING")
    current = settings()
    lookup = None
    if changed_only:
        es = make_client(current)
        lookup = lambda hashes: indexed_content_hashes(es, current.index_alias, hashes)  # noqa: E731
    try:
        plan = plan_import(
            catalogue,
            store=ImageStore(current.images_dir),
            limits=ImageLimits.from_settings(current),
            indexed_hashes=lookup,
        )
    except CatalogueError as exc:
        fail(str(exc))
    read = plan.catalogue
    typer.echo(
        f"{catalogue}: {read.total_rows} rows, {len(plan.products)} to index, "
        f"{len(plan.rejected)} rejected, {len(plan.unchanged)} unchanged (skipped)"
    )
    if read.ignored_columns:
        typer.secho(f"ignored column(s): {', '.join(read.ignored_columns)}", fg="yellow")

    result = import_with_progress(
        current, plan, batch_size=batch_size, wait=wait, timeout_s=timeout
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


def enqueue(
    products: Annotated[
        Path, typer.Argument(help="JSON file (or - for stdin): one product object or a list.")
    ],
    batch_size: Annotated[int, typer.Option(help="Products per job (one forward pass).")] = 1,
    wait: Annotated[bool, typer.Option(help="Wait for the jobs and print their results.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600,
) -> None:
    """Start embedding jobs for products given as JSON, as an upload path does; prints job ids.

    With --wait, exit status 2 when a job failed or did not finish within --timeout.

    A product: {"product_id", "merchant_id", "title", "image" (URL or path), ...}; see README.
    For catalogue files with validation and a reject report, use `vitrine ingest`.
    """
    raw = sys.stdin.read() if str(products) == "-" else products.read_text()
    try:
        data = json.loads(raw)
        parsed = TypeAdapter(list[Product]).validate_python(
            data if isinstance(data, list) else [data]
        )
    except (ValueError, ValidationError) as exc:
        fail(f"invalid products: {exc}")
    celery_app = create_celery(settings())
    job_ids = enqueue_jobs(celery_app, parsed, batch_size=batch_size)
    if not wait:
        typer.echo("\n".join(job_ids))
        return
    try:
        statuses = wait_for_jobs(celery_app, job_ids, timeout_s=timeout)
    except TimeoutError as exc:  # the jobs stay queued: say how to follow them, no traceback
        typer.secho(
            f"error: {exc}; they stay queued (`vitrine job ID`, `/healthz` for workers): "
            + " ".join(job_ids),
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2) from None
    typer.echo(json.dumps([s.to_dict() for s in statuses.values()], indent=2))
    if any(s.state != "done" for s in statuses.values()):
        raise typer.Exit(2)


def job(
    job_id: Annotated[str, typer.Argument(help="Job id printed by enqueue or ingest.")],
) -> None:
    """Show a job's state (queued, running, retrying, done, failed) and per-product results."""
    typer.echo(json.dumps(job_status(create_celery(settings()), job_id).to_dict(), indent=2))


def reconcile() -> None:
    """Send again accepted work that the queue lost or left unfinished, and write error records
    spooled while Elasticsearch was down (workers also do this at start-up and periodically)."""
    from pipeline.ingest.reconcile import reconcile as run_reconcile

    setup_logging("WARNING")
    current = settings()
    report = run_reconcile(create_celery(current), make_client(current))
    if not report.ran:
        fail("another reconciler is running right now; try again shortly")
    typer.echo(report.summary())
