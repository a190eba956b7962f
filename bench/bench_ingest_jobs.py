"""End-to-end ingest through the real queue and worker: one product per job (baseline) vs
several products per job (one forward pass, one bulk request, one refresh per job).

Needs the local services (`vitrine services start`). Uses its own alias and queue and removes
its indices afterwards.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import harness
from pipeline.dev.samples import COLOURS, product_image
from pipeline.dev.worker_process import worker_process
from pipeline.documents import Product
from pipeline.encoders.open_clip_encoder import create_random_checkpoint
from pipeline.es.client import make_client
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.settings import VitrineSettings


def products(directory: Path, count: int, run: str) -> list[Product]:
    out = []
    for i in range(count):
        path = directory / f"{run}-{i}.jpg"
        product_image("bags", list(COLOURS)[i % len(COLOURS)], seed=1000 + i).save(path)
        out.append(
            Product(
                product_id=f"{run}-{i}", merchant_id="bench", title=f"Bag {i}", images=[str(path)]
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--products", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.quick:
        args.products = min(args.products, 16)

    run_id = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        checkpoint = create_random_checkpoint(args.arch, directory / "random.pt")
        settings = VitrineSettings(
            index_alias=f"bench-{run_id}",
            errors_index=f"bench-errors-{run_id}",
            queue=f"bench-{run_id}",
            model_arch=args.arch, model_pretrained=str(checkpoint),
        )  # fmt: skip
        es = make_client(settings)
        rates = {}
        try:
            with worker_process(settings, output=open(directory / "worker.log", "w")) as app:
                warm = products(directory, 2, "warm")
                wait_for_jobs(app, enqueue(app, warm, batch_size=2), timeout_s=300)
                for batch_size in (1, args.batch_size):
                    batch = products(directory, args.products, f"b{batch_size}")
                    start = time.perf_counter()
                    statuses = wait_for_jobs(
                        app, enqueue(app, batch, batch_size=batch_size), timeout_s=900
                    )
                    elapsed = time.perf_counter() - start
                    assert all(s.state == "done" for s in statuses.values()), statuses
                    rates[batch_size] = args.products / elapsed
        finally:
            for index in es.indices.get(index=f"{settings.index_alias}-*,{settings.errors_index}"):
                es.indices.delete(index=index)
    print(
        f"{args.arch}, random weights, 1 worker process (prefork, concurrency 1), "
        f"{args.products} products"
    )
    print(f"  1 product per job:  {rates[1]:6.1f} products/s  (baseline)")
    b = args.batch_size
    print(
        f"  {b} products per job: {rates[b]:6.1f} products/s  "
        f"x{rates[b] / rates[1]:.2f} vs baseline"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
