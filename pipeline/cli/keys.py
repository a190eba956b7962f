"""``vitrine keys``: merchant API keys for the upload API (stored hashed in Redis)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from redis import Redis

from pipeline.cli.common import fail, settings
from pipeline.merchants.apikeys import ApiKeyStore

app = typer.Typer(help="Merchant API keys for the upload API (stored hashed in Redis).")


def _key_store() -> ApiKeyStore:
    current = settings()
    return ApiKeyStore(Redis.from_url(current.redis_url), current.redis_prefix)


@app.command("create")
def keys_create(
    merchant: Annotated[str, typer.Option(help="Merchant id the key belongs to.")],
    name: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
) -> None:
    """Create a key for a merchant and print it (shown once: only its hash is stored)."""
    try:
        new = _key_store().create(merchant, name=name)
    except ValueError as exc:
        fail(str(exc))
    typer.secho(f"key id {new.info.key_id} for merchant {merchant}; store this key now:", err=True)
    typer.echo(new.key)


@app.command("revoke")
def keys_revoke(
    key_or_id: Annotated[str, typer.Argument(help="The key itself, or its 8-character key id.")],
) -> None:
    """Revoke a key at once (every API process checks Redis on each request)."""
    revoked = _key_store().revoke(key_or_id)
    if revoked is None:
        fail("no such key")
    typer.echo(f"revoked key {revoked.key_id} of merchant {revoked.merchant_id}")


@app.command("list")
def keys_list(
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's keys.")] = None,
) -> None:
    """List keys (key id, merchant, creation time, name); secrets cannot be shown."""
    for info in _key_store().list(merchant):
        typer.echo(f"{info.key_id}  {info.merchant_id:<24} {info.created_at}  {info.name}")


@app.command("export")
def keys_export(
    path: Annotated[Path, typer.Argument(help="JSON file to write (hashes only, no secrets).")],
) -> None:
    """Write every key's record to a file, to restore keys into a Redis that lost them."""
    records = _key_store().export()
    path.write_text(json.dumps(records, indent=1) + "\n")
    typer.echo(f"exported {len(records)} key(s) to {path}")


@app.command("import")
def keys_import(
    path: Annotated[Path, typer.Argument(help="A file written by `vitrine keys export`.")],
) -> None:
    """Restore keys from an export: the merchants' existing keys work again."""
    try:
        count = _key_store().restore(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"cannot import {path}: {exc}")
    typer.echo(f"restored {count} key(s)")
