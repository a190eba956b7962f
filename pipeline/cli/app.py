"""The ``vitrine`` command line, assembled from its command modules: local services, index
set-up, worker, API server, jobs, keys, search and demo.

Settings come from ``VITRINE_*`` environment variables, read once per command
(``pipeline.cli.common.settings``). Heavy modules (torch, the API) load only in the commands
that need them, so ``vitrine --help`` stays fast.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli import (
    cluster,
    duplicates,
    es_security,
    jobs,
    keys,
    reindex,
    search,
    services,
    taxonomy,
)
from pipeline.cli.common import exec_with_metrics_dir, fail, settings, setup_logging

if TYPE_CHECKING:
    from fastapi import FastAPI

app = typer.Typer(
    help="Vitrine: visual product search for Elasticsearch shops. "
    "Configuration comes from VITRINE_* environment variables (see README).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(services.app, name="services")
app.add_typer(keys.app, name="keys")
app.add_typer(es_security.app, name="es-security")
app.add_typer(taxonomy.app, name="taxonomy")
app.add_typer(reindex.alias_app, name="alias")
app.add_typer(reindex.indices_app, name="indices")
app.command()(reindex.reindex)
app.command()(jobs.ingest)
app.command()(jobs.enqueue)
app.command()(jobs.job)
app.command()(jobs.reconcile)
app.command()(search.search)
app.command()(cluster.cluster)
app.command()(duplicates.offers)
app.command()(duplicates.duplicates)


@app.command("init-index")
def init_index() -> None:
    """Install the index templates and create the product index for the configured model."""
    from pipeline.ingest.ingestor import Ingestor

    setup_logging()
    current = settings()
    ingestor = Ingestor(current)
    ingestor.ensure_index()
    typer.echo(f"alias {current.index_alias} ready for model {ingestor.encoder().model_id}")


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Jobs at once: threads of the one process (threads pool; default: the batch "
            "size) or pool processes, each loading the model (prefork; default 1)."
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(help="prefork, threads or solo (default: VITRINE_WORKER_POOL, prefork)."),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Worker node name.")] = None,
) -> None:
    """Run a Celery worker that embeds and indexes products from the queue (Prometheus
    metrics on VITRINE_WORKER_METRICS_PORT when set). In the threads pool, the images of the
    jobs it runs at once share forward passes."""
    from celery.signals import worker_shutting_down

    from pipeline.encoders import prepare as prepare_encoder
    from pipeline.ingest.ingestor import check_plugins
    from pipeline.jobs import create_celery

    base = settings()
    pool = pool or base.worker_pool
    if pool not in ("threads", "prefork", "solo"):
        fail(f"--pool must be threads, prefork or solo, not {pool!r}")
    jobs = concurrency or (base.batch_size if pool == "threads" else 1)
    processes = jobs if pool == "prefork" else 1
    current = base.for_worker_processes(processes, len(os.sched_getaffinity(0)))
    exec_with_metrics_dir(current)
    check_plugins(current)
    prepare_encoder(current)
    celery_app = create_celery(current, worker=True)
    argv = ["worker", f"--concurrency={jobs}", f"--pool={pool}", f"--loglevel={loglevel}"]
    argv += [f"--queues={celery_app.settings.queue}"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    # Celery's worker_main returns no status; a cold shutdown (SIGQUIT: also how a worker whose
    # model no write index holds stops itself, workers.tasks) announces a failure exit code.
    status = {"exitcode": 0}

    def remember(exitcode: int | None = None, **_: object) -> None:
        status["exitcode"] = exitcode or status["exitcode"]

    worker_shutting_down.connect(remember, weak=False)
    celery_app.worker_main(argv)
    if status["exitcode"]:
        raise typer.Exit(status["exitcode"])


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes (uvicorn workers) sharing the port: one a core for throughput. "
            "Each loads the model; /metrics sums them all.",
        ),
    ] = 1,
) -> None:
    """Run the HTTP API (OpenAPI page at /docs)."""
    from pipeline.encoders import create_encoder, get_encoder

    setup_logging()
    # Missing weights or a broken plugin: one line here, not a traceback from every API
    # process's start-up. One process keeps the model loaded here (cached); with several, each
    # loads its own and this copy is dropped.
    (get_encoder if workers == 1 else create_encoder)(settings())
    if workers > 1:
        # the workers record, any of them serves /metrics: prometheus_client's multiprocess
        # mode, which each picks up when it imports the library (they are spawned, not forked)
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="vitrine-api-"))
    run_workers("pipeline.cli.app:api_from_env", host=host, port=port, workers=workers)


def run_workers(factory: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """``workers`` uvicorn processes of the app ``factory`` ("module:function") on one port;
    ``options`` go to uvicorn (``log_level``...).

    uvicorn binds their shared listener with ``proto`` 0, so asyncio never sets TCP_NODELAY on
    its connections (uvicorn issue #3149) and every keep-alive response waits ~40 ms on the
    client's delayed ACK (measured here, two workers and one client: p50 58 ms, 17 ms with this).
    Set on the listener, Linux gives TCP_NODELAY to every connection it accepts."""
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if workers == 1:  # asyncio binds the listener itself, with TCP_NODELAY on its connections
        uvicorn.run(factory, factory=True, host=host, port=port, **options)
        return
    config = uvicorn.Config(factory, factory=True, host=host, port=port, workers=workers, **options)
    listener = config.bind_socket()
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(config, sockets=[listener]).run()


def api_from_env() -> FastAPI:
    """The API as ``vitrine serve`` runs it, settings from the environment: also the factory
    each uvicorn worker process calls."""
    from pipeline.api.app import create_app

    setup_logging()
    return create_app(settings())


@app.command()
def samples(
    directory: Annotated[Path, typer.Argument(help="Where to write images/ and catalogue.csv.")],
) -> None:
    """(Re)generate the synthetic sample catalogue."""
    from pipeline.dev.samples import write_sample_catalogue

    typer.echo(write_sample_catalogue(directory))


@app.command()
def demo(
    catalogue: Annotated[Path, typer.Option(help="Catalogue to ingest.")] = Path(
        "samples/catalogue/catalogue.csv"
    ),
) -> None:
    """Run the whole path once: services, index, a real worker, the sample catalogue, a query."""
    from pipeline.cli.demo import run_demo

    setup_logging()
    run_demo(settings(), catalogue)


def _summaries_on_one_line(group: typer.Typer) -> None:
    """Typer's rich help lists each command with its docstring's first paragraph, keeping that
    paragraph's line breaks (a command's own page joins them): give every command, here and
    in the sub-groups, that paragraph as one line."""
    for info in group.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if info.short_help is None and doc:
            info.short_help = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _summaries_on_one_line(sub.typer_instance)


_summaries_on_one_line(app)


def main() -> None:
    """Console entry point: known operational errors become one clear line, not a traceback."""
    from elasticsearch import ConnectionError as ESConnectionError
    from kombu.exceptions import OperationalError
    from redis import ConnectionError as RedisConnectionError

    from pipeline.dev.services import ServiceError
    from pipeline.encoders import EncoderError
    from pipeline.es.aliases import AliasError
    from pipeline.es.indexing import IndexModelMismatch, IndexNotReady
    from pipeline.ingest.reindex import ReindexFailed
    from pipeline.plugins import PluginError

    hint = "`vitrine services start` starts local ones"
    known = (EncoderError, IndexModelMismatch, IndexNotReady, ServiceError, PluginError)
    try:
        app()
    except (*known, AliasError, ReindexFailed) as exc:
        message = str(exc)
    except ESConnectionError as exc:
        message = f"Elasticsearch is not reachable ({exc}); {hint}"
    except (RedisConnectionError, OperationalError) as exc:
        message = f"Redis is not reachable ({exc}); {hint}"
    else:
        return
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise SystemExit(1)
