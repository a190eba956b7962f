"""``vitrine reindex``, ``vitrine alias`` and ``vitrine indices``: re-embed every product with
another model without downtime, go back, and drop what is no longer needed."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer
from elasticsearch import Elasticsearch
from tqdm import tqdm

from pipeline.cli.common import fail, settings, setup_logging
from pipeline.es import aliases
from pipeline.es.client import IndexInfo, make_client
from pipeline.ingest import reindex as reembed
from pipeline.jobs import VitrineCelery, create_celery
from pipeline.settings import VitrineSettings

alias_app = typer.Typer(help="The read alias: which index serves searches.", no_args_is_help=True)
indices_app = typer.Typer(help="The deployment's concrete product indices.", no_args_is_help=True)


def reindex(
    encoder: Annotated[
        str | None, typer.Option(help="Encoder plugin of the new model (default: the current).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="open_clip architecture.")] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="open_clip pretrained tag or checkpoint path.")
    ] = None,
    queue: Annotated[
        str | None, typer.Option(help="Queue of the new model's workers (default <queue>-reindex).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Products per job.")] = 16,
    worker_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a worker on the re-embed queue.")
    ] = 600,
    abort: Annotated[
        bool, typer.Option("--abort", help="Drop the unfinished re-embed's new index.")
    ] = False,
) -> None:
    """Re-embed every product into a new index for another model while the old one serves,
    then swap the read alias atomically. Run it again to resume after a crash or Ctrl-C."""
    setup_logging("WARNING")
    current = settings()
    es = make_client(current)
    if abort:
        dropped = aliases.abort(es, current.index_alias)
        typer.echo(f"dropped {dropped}" if dropped else "no re-embed in progress")
        return
    update = {"encoder": encoder or current.encoder, "queue": queue or f"{current.queue}-reindex"}
    update |= {"model_arch": model} if model else {}
    update |= {"model_pretrained": pretrained} if pretrained else {}
    target = current.model_copy(update=update)
    from pipeline.ingest.ingestor import Ingestor  # loads the encoder plugin (torch)

    ingestor = Ingestor(target, es=es)
    new = reembed.start(
        es,
        current,
        model_id=ingestor.encoder().model_id,
        dims=ingestor.encoder().dim,
        queue=target.queue,
        extra_fields=ingestor.chain.field_mappings,
        encoder=target.encoder_fields(),  # the API follows the alias to this model
    )
    typer.echo(f"re-embedding into {new.index} (model {new.model_id}) via queue {target.queue}")
    app = create_celery(target)
    _wait_for_worker(app, target, worker_timeout)
    try:
        outcome = _run_with_progress(es, app, current, new, batch_size)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"alias {current.index_alias} now serves {outcome.new_index} ({outcome.documents} "
        f"documents, {outcome.passes} passes, {outcome.catch_up} caught up after the swap) "
        f"instead of {outcome.old_index}.\nRestart the workers of queue {current.queue} and "
        "the API with the new encoder settings; `vitrine alias rollback` goes back until "
        "`vitrine indices prune`."
    )


def _wait_for_worker(app: VitrineCelery, target: VitrineSettings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    hinted = False
    while not _served(app, target.queue):
        if not hinted:
            typer.echo(
                f"waiting for a worker on queue {target.queue}; start some with "
                f"VITRINE_QUEUE={target.queue} VITRINE_ENCODER={target.encoder} "
                f"VITRINE_MODEL_ARCH={target.model_arch} "
                f"VITRINE_MODEL_PRETRAINED={target.model_pretrained} vitrine worker"
            )
            hinted = True
        if time.monotonic() > deadline:
            fail(f"no worker consumes queue {target.queue} after {timeout_s:.0f}s")
        time.sleep(2)


def _served(app: VitrineCelery, queue: str) -> bool:
    replies = app.control.inspect(timeout=1.0).active_queues() or {}
    return any(q.get("name") == queue for queues in replies.values() for q in queues)


def _run_with_progress(
    es: Elasticsearch,
    app: VitrineCelery,
    current: VitrineSettings,
    new: IndexInfo,
    batch_size: int,
) -> reembed.Outcome:
    with tqdm(unit="product", file=sys.stderr, desc="re-embed") as bar:

        def show(progress: reembed.Progress) -> None:
            bar.set_description(f"{progress.phase} (pass {progress.passes})")
            bar.total = progress.total
            bar.n = progress.done
            bar.set_postfix(failed=progress.failed, refresh=False)
            bar.refresh()

        return reembed.run(es, app, current, new, batch_size=batch_size, on_progress=show)


@alias_app.command("show")
def show_alias() -> None:
    """Which index serves searches, which take writes, which are kept for rollback."""
    current = settings()
    for item in aliases.deployment_indices(make_client(current), current.index_alias):
        roles = [r for r, on in (("read", item.serving), ("write", item.writing)) if on]
        typer.echo(f"{item.index}\t{item.info.model_id}\t{','.join(roles) or 'idle'}")


@alias_app.command("rollback")
def rollback() -> None:
    """Serve (and write to) the index the current one replaced, until it is pruned."""
    current = settings()
    before, after = aliases.rollback(make_client(current), current.index_alias)
    typer.echo(f"alias {current.index_alias} now serves {after} instead of {before}")


@indices_app.command("list")
def list_indices() -> None:
    """The deployment's product indices (same as `vitrine alias show`)."""
    show_alias()


@indices_app.command("prune")
def prune() -> None:
    """Delete the deployment's indices that no alias points at (rollback is then gone)."""
    current = settings()
    deleted = aliases.prune(make_client(current), current.index_alias)
    typer.echo("\n".join(f"deleted {i}" for i in deleted) or "nothing to prune")
