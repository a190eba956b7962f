"""``vitrine es-security``: least-privilege Elasticsearch roles and one API key per process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import settings, setup_logging
from pipeline.es import security
from pipeline.es.client import make_client

app = typer.Typer(help="Least-privilege Elasticsearch roles and API keys (security on).")


@app.command("setup")
def es_security_setup(
    env_dir: Annotated[
        Path | None,
        typer.Option(help="Write es-<role>.env files (mode 0600) here instead of printing."),
    ] = None,
    expiration: Annotated[
        str | None, typer.Option(help="API key lifetime, e.g. 90d (default: no expiry).")
    ] = None,
) -> None:
    """Store the admin, worker and search roles of this deployment and create an API key for
    each; run it with credentials that may manage security (e.g. the elastic user). Give the
    worker its key, the API the search key, `vitrine init-index` the admin key."""
    setup_logging()
    current = settings()
    es = make_client(current)
    keys = security.setup_security(es, current, expiration=expiration)
    for role, key in keys.items():
        name = security.role_name(current.index_alias, role)
        line = f"VITRINE_ES_API_KEY={key.encoded}\n"
        if env_dir is None:
            typer.echo(f"# {name} (API key id {key.id})\n{line}")
            continue
        env_dir.mkdir(parents=True, exist_ok=True)
        path = env_dir / f"es-{role}.env"
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(line)
        typer.echo(f"role {name}: API key {key.id} written to {path}")


@app.command("remove")
def es_security_remove() -> None:
    """Invalidate this deployment's API keys and delete its roles."""
    current = settings()
    security.remove_security(make_client(current), current)
    typer.echo(f"removed roles and API keys of {current.index_alias}")
