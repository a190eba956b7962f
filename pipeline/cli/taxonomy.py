"""``vitrine taxonomy``: the zero-shot taxonomy of the ``auto_tag`` processor (``show``) and what
it would give one image (``explain``), with the configured encoder."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.common import fail, settings, setup_logging
from pipeline.encoders import get_encoder
from pipeline.images import ImageError, ImageLimits, load_image
from pipeline.ingest.enrich.tagging import category_mismatch, label_vectors, tag_vector
from pipeline.ingest.enrich.taxonomy import load_taxonomy

app = typer.Typer(help="Zero-shot taxonomy of the auto_tag processor.", no_args_is_help=True)


@app.command()
def show() -> None:
    """Facets, thresholds, labels and prompt counts of the configured taxonomy."""
    current = settings()
    taxonomy = load_taxonomy(current.taxonomy_path)
    source = current.taxonomy_path or "shipped default"
    typer.echo(f"taxonomy {source}, digest {taxonomy.digest[:12]}, logit scale "
               f"{taxonomy.logit_scale:g}")  # fmt: skip
    for name, facet in taxonomy.facets.items():
        field = "auto_category" if name == "category" else f"auto_tags ({name}:<label>)"
        typer.echo(
            f"\n{name} -> {field}: threshold {facet.threshold:g}, at most {facet.max_labels} "
            f"label(s), {len(facet.templates)} template(s)"
        )
        for label_name, label in facet.labels.items():
            aliases = f"  aliases: {', '.join(label.aliases)}" if label.aliases else ""
            typer.echo(f"  {label_name:<14} {len(facet.prompts(label_name)):>3} prompts{aliases}")


@app.command()
def explain(
    image: Annotated[str, typer.Argument(help="Image path or http(s) URL.")],
    category: Annotated[
        str | None, typer.Option(help="A merchant category, to check category_mismatch.")
    ] = None,
    top: Annotated[int, typer.Option(help="Labels shown per facet.")] = 3,
) -> None:
    """Each facet's best labels for IMAGE, and what auto_tag would write."""
    setup_logging("WARNING")
    current = settings()
    taxonomy = load_taxonomy(current.taxonomy_path)
    try:
        loaded = load_image(image, ImageLimits.from_settings(current))
    except ImageError as exc:
        fail(str(exc))
    encoder = get_encoder(current)
    if not encoder.semantic:
        typer.secho(
            f"warning: {encoder.model_id} has random weights: these scores mean nothing",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if not encoder.supports_text:
        fail(f"encoder {encoder.model_id} embeds images only: zero-shot tagging needs text")
    vectors = label_vectors(encoder, taxonomy, current.home / "labels")
    tagging = tag_vector(encoder.encode_images([loaded.image])[0], taxonomy, vectors)
    for name, facet in taxonomy.facets.items():
        ranked = sorted(tagging.probabilities[name].items(), key=lambda kv: -kv[1])[:top]
        shown = ", ".join(
            f"{label} {p:.3f}{' *' if p >= facet.threshold else ''}" for label, p in ranked
        )
        typer.echo(f"{name:<10} (threshold {facet.threshold:g}): {shown}")
    typer.echo(f"\nauto_category: {tagging.category or '-'} ({tagging.category_score or '-'})")
    typer.echo(f"auto_tags: {', '.join(tagging.tags) or '-'}")
    if category is not None:
        label = taxonomy.category_label(category)
        flagged = category_mismatch(
            tagging, taxonomy, category, max_score=current.category_mismatch_max_score
        )
        typer.echo(
            f"merchant category {category!r} -> label {label or '(not in the taxonomy)'}: "
            f"{'category_mismatch' if flagged else 'no mismatch'}"
        )
