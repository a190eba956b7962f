"""``vitrine offers`` (the same item at other merchants) and ``vitrine duplicates`` (groups
across the catalogue as CSV, and a contact sheet of the biggest groups for clean-up)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.cli.common import fail, settings
from pipeline.es.client import make_client
from pipeline.fetch import FetchPolicy
from pipeline.images import ImageError, ImageLimits, load_image
from pipeline.search.duplicate_groups import CSV_COLUMNS, Group, iter_groups
from pipeline.search.offers import ProductNotFound, find_offers
from pipeline.settings import VitrineSettings

THUMB = 128
CAPTION = 28
MAX_PER_ROW = 8


def offers(
    merchant_id: Annotated[str, typer.Argument(help="The product's merchant.")],
    product_id: Annotated[str, typer.Argument(help="The merchant's product id.")],
    in_stock: Annotated[bool, typer.Option(help="Only offers in stock.")] = False,
    size: Annotated[int, typer.Option(min=1, max=100, help="Most offers shown.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON.")] = False,
) -> None:
    """The same item at other merchants (near-duplicates), cheapest first."""
    current = settings()
    try:
        result = find_offers(
            make_client(current),
            current.index_alias,
            merchant_id,
            product_id,
            in_stock=in_stock,
            size=size,
        )
    except ProductNotFound as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{merchant_id}/{product_id}: {len(result['offers'])} offer(s) elsewhere")
    row = "{:<24}  {:<24}  {:>12}  {:<5}  {}"
    typer.echo(row.format("merchant", "product", "price", "stock", "title"))
    for offer in result["offers"]:
        price = offer.get("price")
        typer.echo(
            row.format(
                offer["merchant_id"][:24],
                offer["product_id"][:24],
                "-" if price is None else f"{price:.2f} {offer.get('currency') or ''}".strip(),
                "yes" if offer.get("in_stock") else "no",
                (offer.get("title") or "")[:40],
            )
        )


def duplicates(
    csv_path: Annotated[Path, typer.Option("--csv", help="Where to write the CSV.")] = Path(
        "duplicates.csv"
    ),
    sheet: Annotated[
        Path | None, typer.Option(help="Contact-sheet PNG of the biggest groups.")
    ] = Path("duplicates.png"),
    top: Annotated[int, typer.Option(min=1, help="Groups on the contact sheet.")] = 12,
    min_size: Annotated[int, typer.Option(min=2, help="Smallest group reported.")] = 2,
    cross_merchant: Annotated[
        bool, typer.Option(help="Only groups spanning two or more merchants.")
    ] = False,
) -> None:
    """Report near-duplicate groups across the catalogue: CSV (group, merchant, product, price,
    distance) and a contact sheet of the biggest groups."""
    current = settings()
    es = make_client(current)
    total = es.count(index=current.index_alias)["count"]
    biggest: list[Group] = []
    groups = members = 0
    with (
        csv_path.open("w", newline="") as out,
        tqdm(total=total, unit="doc", desc="duplicates", file=sys.stderr) as bar,
    ):
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for group in iter_groups(es, current.index_alias, min_size=min_size, on_page=bar.update):
            if cross_merchant and group.merchants < 2:
                continue
            groups += 1
            members += len(group.members)
            writer.writerows(member.csv_row(group.group_id) for member in group.members)
            biggest = sorted([*biggest, group], key=lambda g: -len(g.members))[:top]
    typer.echo(f"{groups} group(s), {members} document(s) -> {csv_path}")
    if sheet and biggest:
        contact_sheet(biggest, current).save(sheet)
        typer.echo(f"contact sheet of the {len(biggest)} biggest group(s) -> {sheet}")


def contact_sheet(groups: list[Group], current: VitrineSettings) -> Image.Image:
    """One row per group: its members' thumbnails (reference first) with merchant and price."""
    limits = ImageLimits.from_settings(current)
    policy = FetchPolicy.from_settings(current)
    width = MAX_PER_ROW * THUMB
    row_height = THUMB + CAPTION + 16
    sheet = Image.new("RGB", (width, row_height * len(groups)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, group in enumerate(groups):
        top = row * row_height
        draw.text((4, top + 2), f"{group.group_id[:16]}  {len(group.members)} images", fill="black")
        for col, member in enumerate(group.members[:MAX_PER_ROW]):
            x, y = col * THUMB, top + 16
            try:
                thumb = load_image(member.image_url, limits, policy=policy).image
                thumb.thumbnail((THUMB - 4, THUMB - 4))
                sheet.paste(thumb, (x + 2, y))
            except ImageError:
                draw.rectangle([x + 2, y, x + THUMB - 2, y + THUMB - 4], fill=(200, 200, 200))
            price = "-" if member.price is None else f"{member.price:.2f} {member.currency or ''}"
            draw.text((x + 2, y + THUMB), member.merchant_id[:20], fill="black")
            draw.text((x + 2, y + THUMB + 12), f"{price} d={member.distance:.3f}", fill="black")
    return sheet
