"""``vitrine cluster``: visual clusters of the catalogue (mini-batch k-means over the vectors,
``pipeline.ingest.clustering``), with a live progress bar and a size table."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from tqdm import tqdm

from pipeline.cli.common import fail, settings, setup_logging


def cluster(
    k: Annotated[
        int | None,
        typer.Option("--k", help="Number of clusters; omitted: the best silhouette on a sample."),
    ] = None,
    k_max: Annotated[int, typer.Option(help="Largest k tried when choosing k.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed (same data and seed: same clusters).")] = 0,
    epochs: Annotated[int, typer.Option(help="Passes of mini-batch k-means over the data.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Vectors per page and per k-means step.")] = 1000,
    sample: Annotated[
        int, typer.Option(help="Vectors sampled for the start and for choosing k.")
    ] = 5000,
    names: Annotated[
        bool, typer.Option(help="Name clusters by the nearest taxonomy category (text encoders).")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print the cluster sizes; store nothing.")
    ] = False,
) -> None:
    """Cluster every product image by its vector; write visual_cluster back to the index."""
    from elasticsearch import Elasticsearch

    from pipeline.encoders import get_encoder
    from pipeline.es.client import make_client
    from pipeline.ingest.clustering import ClusteringError, cluster_catalogue

    setup_logging("WARNING")
    current = settings()
    if k is not None and not 2 <= k <= sample:
        fail(f"--k must be between 2 and --sample ({sample})")
    es: Elasticsearch = make_client(current)
    total = (
        int(es.count(index=current.index_alias)["count"])
        if es.indices.exists(index=current.index_alias)
        else 0
    )
    bars: dict[str, tqdm] = {}

    def show(phase: str, n: int) -> None:
        if phase not in bars:
            for bar in bars.values():  # one bar at a time: the previous phase is over
                bar.close()
            passes = epochs if phase == "fit" else 1
            bars[phase] = tqdm(total=total * passes, unit="vec", desc=phase, file=sys.stderr)
        bars[phase].update(n)

    try:
        run = cluster_catalogue(
            es,
            current,
            k=k,
            encoder=get_encoder(current) if names else None,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            k_range=range(2, k_max + 1),
            sample_size=sample,
            write=not dry_run,
            on_page=show,
        )
    except ClusteringError as exc:
        fail(str(exc))
    finally:
        for bar in bars.values():
            bar.close()
    model = run.model
    chosen = f" (silhouette {run.silhouette[len(model.ids)]:.3f})" if run.silhouette else ""
    typer.echo(
        f"{len(model.ids)} clusters{chosen} of {sum(model.sizes)} vectors in {run.index}; "
        f"{run.updated} documents updated, {run.failed} failed"
    )
    for row in sorted(range(len(model.ids)), key=lambda r: -model.sizes[r]):
        typer.echo(f"  {model.ids[row]}  {model.sizes[row]:>8}  {model.names[row] or ''}")
