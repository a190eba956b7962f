"""End-to-end ingest (issue 9, benchmarks 2 and 4): the naive one-at-a-time loop vs Vitrine's
queue path (enqueue as `vitrine ingest` does, one real worker, until searchable), in the same
run (the naive loop first and again last: "x naive" is against the mean of both, since this
machine's speed drifts by up to 2x over minutes), on the same photo-like 640x480 JPEGs,
ViT-B-32 with random weights (same FLOPs as real ones; the vectors carry no meaning), the same
Elasticsearch.

Prints the worker's per-stage profile (where a product's time goes) beside the same stages in
the chain's in-process runs (how much slower each runs beside the queue and Elasticsearch), the
path's own embedding-only throughput (decoded images through the same encoder, same batch size),
each worker's processor chain run in-process on its settings just before it and again just after
(its threads sharing forward passes, or as many processes as its prefork pool; no queue, no
writes, no near-duplicate searches: the mean of both runs is what queue + Elasticsearch overhead
is measured against; the worker's run at the chain's products per job comes first, so that the
two chain runs bracket it closely, and every measured run starts once Elasticsearch has gone
quiet, so that the merges one run leaves behind do not slow the next), what JPEG draft decoding
saves and how close its vectors stay, and a sweep over worker configurations (threads pool
sharing forward passes between jobs, prefork processes; torch or ONNX Runtime int8) x products
per job: one product per job is how small uploads arrive.

Needs the local services (`vitrine services start`). Uses its own aliases and queue; removes its
indices afterwards.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from bench import harness
from pipeline.documents import Product, build_document
from pipeline.encoders import Encoder, create_encoder
from pipeline.encoders import prepare as prepare_encoder
from pipeline.encoders.open_clip_encoder import OpenClipEncoder, create_random_checkpoint
from pipeline.es import indexing
from pipeline.es.client import make_client
from pipeline.images import DecodeSize, load_image
from pipeline.jobs import enqueue, wait_for_jobs
from pipeline.profile import StageProfile, active
from pipeline.settings import VitrineSettings

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "cat")


def photos(directory: Path, count: int) -> list[Path]:
    """``count`` distinct 640x480 JPEGs cut from scikit-image's photos (crops, flips, tints)."""
    from skimage import data

    sources = []
    for name in PHOTOS:
        try:
            sources.append(Image.fromarray(getattr(data, name)()).convert("RGB"))
        except Exception:  # noqa: BLE001 - a photo missing from this scikit-image: use the others
            continue
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        scale = rng.uniform(1.0, 1.6)
        big = src.resize((round(640 * scale), round(480 * scale)), Image.Resampling.BICUBIC)
        left = int(rng.integers(0, big.width - 640 + 1))
        top = int(rng.integers(0, big.height - 480 + 1))
        img = big.crop((left, top, left + 640, top + 480))
        if i % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tint = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15, 3)
        path = directory / f"photo-{i}.jpg"
        Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def products(paths: list[Path], prefix: str) -> list[Product]:
    return [
        Product(
            product_id=f"{prefix}-{i}", merchant_id="bench", title=f"Photo {i}", images=[str(p)]
        )
        for i, p in enumerate(paths)
    ]


def naive_loop(settings: VitrineSettings, paths: list[Path]) -> dict[str, float]:
    """open -> open_clip preprocess -> encode_image (batch 1) -> es.index, one image at a time."""
    import hashlib

    import open_clip
    import torch

    es = make_client(settings)
    model, _, preprocess = open_clip.create_model_and_transforms(
        settings.model_arch, pretrained=settings.model_pretrained
    )
    model.eval()
    model_id = f"naive:{settings.model_arch}"
    indexing.ensure_indices(es, settings, model_id, 512)
    embed_s = 0.0
    started = time.perf_counter()
    for i, path in enumerate(paths):
        data = path.read_bytes()
        image = Image.open(path).convert("RGB")
        t0 = time.perf_counter()
        with torch.inference_mode():
            vector = model.encode_image(preprocess(image).unsqueeze(0))[0].numpy()
        embed_s += time.perf_counter() - t0
        product = Product(product_id=f"n-{i}", merchant_id="bench", title="x", images=[str(path)])
        document = build_document(
            product,
            image_index=0,
            image_sha256=hashlib.sha256(data).hexdigest(),
            width=image.width,
            height=image.height,
            vector=vector / np.linalg.norm(vector),
            model_id=model_id,
        )
        es.index(index=settings.index_alias, id=f"n-{i}", document=document)
    es.indices.refresh(index=settings.index_alias)
    elapsed = time.perf_counter() - started
    assert es.count(index=settings.index_alias)["count"] == len(paths)
    return {"rate": len(paths) / elapsed, "embed_rate": len(paths) / embed_s}


def embedding_only(encoder: Encoder, paths: list[Path], batch: int) -> float:
    """Images/s of preprocess + forward on decoded images (draft-decoded, as the worker does)."""
    images = [load_image(p, size=DecodeSize(short=224, long=256)).image for p in paths]
    encoder.encode_images(images[:batch])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        encoder.encode_images(images[start : start + batch])
    return len(images) / (time.perf_counter() - started)


def chain_in_process(
    settings: VitrineSettings, worker: WorkerConfig, batch: list[Product], per_job: int
) -> tuple[float, StageProfile]:
    """Products/s of the worker's processor chain without the queue and without writes to
    Elasticsearch, on the settings the worker gives each pool process: what queue +
    Elasticsearch overhead is measured against; and its stage profile, to set beside the
    worker's. A threads pool's jobs run in threads of this process sharing forward passes;
    prefork's run in as many processes as the pool has, each with its own model. ``batch``
    holds one warm-up job per process, then the measured jobs."""
    cpus = len(os.sched_getaffinity(0))
    jobs = [batch[start : start + per_job] for start in range(0, len(batch), per_job)]
    if worker.pool == "threads":
        current = settings.for_worker_processes(1, cpus)
        return _chain_in_threads(current, jobs, worker.concurrency or current.batch_size)
    processes = worker.processes
    current = settings.for_worker_processes(processes, cpus)
    context = multiprocessing.get_context("spawn")  # a clean process, as a pool process loads
    barrier, results = context.Barrier(processes), context.Queue()
    children = [
        context.Process(
            target=_chain_in_one_process,
            args=(current, [jobs[n], *jobs[processes + n :: processes]], barrier, results),
        )
        for n in range(processes)
    ]
    for child in children:
        child.start()
    spans = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    profile = StageProfile()
    for *_, done in spans:
        profile.merge(StageProfile.from_dict(done))
    elapsed = max(e for _, e, _ in spans) - min(s for s, _, _ in spans)
    return profile.products / elapsed, profile


def _chain_in_threads(
    settings: VitrineSettings, jobs: list[list[Product]], threads: int
) -> tuple[float, StageProfile]:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.ingest.ingestor import Ingestor

    chain = Ingestor(settings, encoder=create_encoder(settings), batch_across_jobs=True).chain
    items = [_items(job) for job in jobs]
    chain.run(items[0])  # warm-up (the chain sizes its decoding on first use)
    profile = StageProfile(products=sum(len(job) for job in items[1:]))

    def run(job: list[Any]) -> None:
        with active(profile):
            chain.run(job)

    started = time.monotonic()
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:  # as workers
        list(pool.map(run, items[1:]))
    elapsed = time.monotonic() - started
    _check(items)
    return profile.products / elapsed, profile


def _chain_in_one_process(
    settings: VitrineSettings, jobs: list[list[Product]], barrier: Any, results: Any
) -> None:
    """One prefork pool process's share: a warm-up job, then the others once all are ready."""
    from pipeline.ingest.ingestor import Ingestor

    with threadpool_limits(1, user_api="blas"):  # as workers/tasks.py sets it
        chain = Ingestor(settings, encoder=create_encoder(settings)).chain
        items = [_items(job) for job in jobs]
        chain.run(items[0])
        profile = StageProfile(products=sum(len(job) for job in items[1:]))
        barrier.wait()
        started = time.monotonic()  # system-wide: comparable across processes
        with active(profile):
            for job in items[1:]:
                chain.run(job)
        ended = time.monotonic()
    _check(items)
    results.put((started, ended, profile.to_dict()))


def _items(products: list[Product]) -> list[Any]:
    from pipeline.ingest.processors import IngestItem

    return [IngestItem(p, 0) for p in products]


def _check(jobs: list[list[Any]]) -> None:
    failed = [item.error for items in jobs for item in items if not item.ok]
    assert not failed, failed[:3]


def draft_check(encoder: OpenClipEncoder, paths: list[Path]) -> dict[str, float]:
    """Decode time full vs draft; how far apart the model inputs are (random weights map all
    images to nearly the same vector, so the vectors' cosine says little)."""
    times, images = {}, {}
    for name, size in (("full", None), ("draft", DecodeSize(short=224, long=256))):
        started = time.perf_counter()
        images[name] = [load_image(p, size=size).image for p in paths]
        times[name] = (time.perf_counter() - started) / len(paths)
    full, draft = encoder.encode_images(images["full"]), encoder.encode_images(images["draft"])
    cosines = np.sum(full * draft, axis=1)
    inputs = {name: encoder.preprocess_images(batch) for name, batch in images.items()}
    pixel_delta = (inputs["full"] - inputs["draft"]).abs().mean() / inputs["full"].std()
    return {
        "decode_full_ms": 1000 * times["full"],
        "decode_draft_ms": 1000 * times["draft"],
        "input_delta": float(pixel_delta),
        "mean_cosine": float(cosines.mean()),
        "min_cosine": float(cosines.min()),
    }


@dataclass(frozen=True)
class WorkerConfig:
    """``pool[-N]/runtime``: e.g. ``threads/torch`` (N job threads, default the batch size) or
    ``prefork-2/onnx-int8`` (N pool processes, each with its own model)."""

    pool: str
    runtime: str
    concurrency: int | None

    @classmethod
    def parse(cls, text: str) -> WorkerConfig:
        pool, _, runtime = text.partition("/")
        pool, _, n = pool.partition("-")
        return cls(pool, runtime or "torch", int(n) if n else None)

    @property
    def processes(self) -> int:
        """Pool processes, each with its own model."""
        return 1 if self.pool == "threads" else self.concurrency or 1

    @property
    def label(self) -> str:
        jobs = f" x{self.concurrency}" if self.concurrency else ""
        return f"{self.pool}{jobs}, {self.runtime}"


_PROFILE_LINE = re.compile(r"\[[^]]*/(?P<proc>[\w-]+)\] ingest profile json: (?P<json>\{.*\})")


def worker_profiles(log: Path) -> dict[str, dict]:
    """The last cumulative profile each pool process logged."""
    import json

    out: dict[str, dict] = {}
    for match in _PROFILE_LINE.finditer(log.read_text(errors="replace")):
        out[match["proc"]] = json.loads(match["json"])
    return out


def profile_between(before: dict[str, dict], after: dict[str, dict]) -> StageProfile:
    """What the worker processes did between two reads of their logs."""
    total = StageProfile()
    for proc, now in after.items():
        then = before.get(proc, {})
        seconds = {s: v - then.get("seconds", {}).get(s, 0.0) for s, v in now["seconds"].items()}
        items = {s: v - then.get("items", {}).get(s, 0) for s, v in now["items"].items()}
        total.merge(
            StageProfile(
                seconds=seconds,
                items=items,
                batches=now["batches"] - then.get("batches", 0),
                products=now["products"] - then.get("products", 0),
            )
        )
    return total


def wait_quiet(es: Any, *, below: float = 0.1, limit_s: float = 60.0) -> None:
    """Wait until Elasticsearch uses less than ``below`` of a core over a second (the merges
    and flushes a run leaves behind are done), at most ``limit_s``; say so when it never was
    (another tenant's load, or a merge longer than the limit), as the next run meets it."""
    started = time.perf_counter()

    def cpu_ms() -> int:
        nodes = es.nodes.stats(metric="process")["nodes"].values()
        return sum(node["process"]["cpu"]["total_in_millis"] for node in nodes)

    while time.perf_counter() - started < limit_s:
        before = cpu_ms()
        time.sleep(1.0)
        if cpu_ms() - before < 1000 * below:
            return
    print(f"Elasticsearch still busy after {limit_s:.0f} s: measuring anyway", file=sys.stderr)


@contextmanager
def running_worker(
    settings: VitrineSettings, worker: WorkerConfig, warm: list[Product], log: Path
) -> Iterator[Callable[[int, list[Product]], dict[str, Any]]]:
    """One worker configured as ``worker``, warmed up on ``warm``; yields ``ingest(products per
    job, products)``, which enqueues them once Elasticsearch is quiet and returns the rate until
    searchable and the worker's profile over that run."""
    from pipeline.dev.worker_process import worker_process

    settings = settings.model_copy(
        update={"worker_pool": worker.pool, "encoder_runtime": worker.runtime}
    )
    es = make_client(settings)

    def ingest(batch_size: int, batch: list[Product]) -> dict[str, Any]:
        es.indices.refresh(index=settings.index_alias)
        wait_quiet(es)
        before_count = es.count(index=settings.index_alias)["count"]
        before = worker_profiles(log)
        started = time.perf_counter()
        job_ids = enqueue(app, batch, batch_size=batch_size)
        enqueued = time.perf_counter() - started
        statuses = wait_for_jobs(app, job_ids, timeout_s=1800, poll_s=0.2)
        done = time.perf_counter()
        es.indices.refresh(index=settings.index_alias)
        count = es.count(index=settings.index_alias)["count"]
        searchable = time.perf_counter()
        assert all(s.state == "done" for s in statuses.values()), statuses
        assert count == before_count + len(batch), (count, before_count)
        time.sleep(0.3)  # the last batch's profile line reaches the log
        profile = profile_between(before, worker_profiles(log))
        return {
            "worker": worker.label,
            "runtime": worker.runtime,
            "batch_size": batch_size,
            "rate": len(batch) / (searchable - started),
            "enqueue_s": enqueued,
            "refresh_s": searchable - done,
            "profile": profile.to_dict(),
        }

    with (
        log.open("w") as output,
        worker_process(
            settings, concurrency=worker.concurrency, output=output, timeout_s=600
        ) as app,
    ):
        warm = [p.model_copy(update={"product_id": f"warm-{p.product_id}"}) for p in warm]
        warm = warm[: 2 * (worker.concurrency or settings.batch_size)]
        wait_for_jobs(app, enqueue(app, warm, batch_size=1), timeout_s=300)
        time.sleep(0.5)
        yield ingest


def profile_rows(run: dict[str, Any], chain: StageProfile | None) -> list[list[Any]]:
    """Stage, ms per product, share of the worker's busy time (queue wait is backlog, apart),
    and the same stage's ms per product in the chain's in-process runs (``chain``): how much
    slower each stage runs beside the queue and Elasticsearch."""
    profile = StageProfile.from_dict(run["profile"])
    products = max(1, profile.products)
    nested = ("preprocess", "forward")  # timed inside embed_image
    busy = sum(v for s, v in profile.seconds.items() if s != "queue_wait" and s not in nested)

    def in_chain(stage: str) -> float | str:
        if chain is None or stage not in chain.seconds:
            return "-"
        return 1000 * chain.seconds[stage] / max(1, chain.products)

    rows = []
    for stage, seconds in StageProfile.ordered(profile.seconds):
        share = "backlog" if stage == "queue_wait" else f"{100 * seconds / busy:.0f}%"
        label = f"  {stage} (in embed_image)" if stage in nested else stage
        rows.append([label, 1000 * seconds / products, share, in_chain(stage)])
    refresh = 1000 * run["refresh_s"] / products
    rows.append(["refresh (bench, once at the end)", refresh, "-", "-"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--naive-images", type=int, default=None, help="default: --images")
    parser.add_argument(
        "--workers",
        nargs="+",
        default=["threads/torch", "threads/onnx-int8", "prefork-1/torch", "prefork-2/torch"],
        help="worker configurations, pool[-N]/runtime (N: job threads or pool processes)",
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 16], help="products per job"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batch_sizes = min(args.images, 48), [1, 16]
        args.workers = ["threads/torch", "prefork-1/torch"]
    workers = [WorkerConfig.parse(w) for w in args.workers]
    n_naive = args.naive_images or (min(args.images, 24) if args.quick else args.images)
    per_job = max(args.batch_sizes)
    run_id = uuid.uuid4().hex[:6]

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        paths = photos(directory, args.images)
        checkpoint = create_random_checkpoint(args.arch, directory / "random.pt")
        base = VitrineSettings(
            index_alias=f"bench-ingest-{run_id}",
            errors_index=f"bench-ingest-errors-{run_id}",
            queue=f"bench-ingest-{run_id}",
            journal_dir=directory / "journal",
            model_arch=args.arch,
            model_pretrained=str(checkpoint),
            batch_size=16,
            profile_log_interval_s=0,
        )
        es = make_client(base)
        try:
            naive = naive_loop(
                base.model_copy(update={"index_alias": f"bench-ingest-{run_id}-naive"}),
                paths[:n_naive],
            )
            print(
                f"naive: {naive['rate']:.1f} images/s (embedding alone {naive['embed_rate']:.1f})"
            )
            ceilings: dict[str, float] = {}
            for runtime in sorted({w.runtime for w in workers}):
                current = base.model_copy(update={"encoder_runtime": runtime})
                prepare_encoder(current)
                ceilings[runtime] = embedding_only(
                    create_encoder(current), paths[:48], base.batch_size
                )
            draft = draft_check(OpenClipEncoder.from_settings(base), paths[:32])
            print("embedding only: " + ", ".join(f"{r} {c:.1f}/s" for r, c in ceilings.items()))
            in_process: dict[str, float] = {}  # each worker's chain, no queue, no ES: the mean
            chain_runs: dict[str, list[float]] = {}  # ... of its runs before and after it
            chain_profiles: dict[str, StageProfile] = {}  # both runs' stages, summed
            runs: list[dict[str, Any]] = []
            for n, worker in enumerate(workers):
                settings = base.model_copy(
                    update={
                        "index_alias": f"bench-ingest-{run_id}-w{n}",
                        "encoder_runtime": worker.runtime,
                    }
                )
                # just before the worker's run at per_job products a job and again just after
                # it: this machine's speed drifts over minutes, so the worker is held against
                # the mean of both
                n_chain = min(args.images, (worker.processes + 12) * per_job)
                wait_quiet(es)
                before, profile = chain_in_process(
                    settings, worker, products(paths[:n_chain], f"chain{n}"), per_job
                )
                log = directory / f"worker-{n}.log"
                with running_worker(settings, worker, products(paths, f"w{n}"), log) as ingest:
                    mine = [ingest(per_job, products(paths, f"w{n}b{per_job}"))]
                    wait_quiet(es)
                    after, profile_after = chain_in_process(
                        settings, worker, products(paths[:n_chain], f"chain{n}after"), per_job
                    )
                    profile.merge(profile_after)
                    mine += [
                        ingest(b, products(paths, f"w{n}b{b}"))
                        for b in args.batch_sizes
                        if b != per_job
                    ]
                runs += sorted(mine, key=lambda run: run["batch_size"])
                chain_runs[worker.label] = [before, after]
                chain_profiles[worker.label] = profile
                in_process[worker.label] = (before + after) / 2
                print(
                    f"{worker.label}: chain in-process {before:.1f} before and {after:.1f} after, "
                    "through the worker "
                    + ", ".join(f"{r['rate']:.1f}" for r in runs[-len(mine) :])
                )
            again = naive_loop(  # this machine's speed drifts over minutes: measure it twice
                base.model_copy(update={"index_alias": f"bench-ingest-{run_id}-naive-again"}),
                paths[:n_naive],
            )
            print(f"naive, again: {again['rate']:.1f} images/s")
        finally:
            for index in es.indices.get(index=f"bench-ingest-*{run_id}*", expand_wildcards="all"):
                es.indices.delete(index=index)

    report = harness.Report(
        name="bench_ingest",
        title=f"End-to-end ingest, {args.arch} random weights, 640x480 JPEGs (products/s)",
        columns=["path", "worker", "products per job", "products/s", "x naive",
                 "vs own embedding-only", "vs own chain in-process"],
    )  # fmt: skip
    baseline = (naive["rate"] + again["rate"]) / 2  # "x naive" is against the mean of both
    report.add("naive loop (batch 1, es.index per doc), first", "-", 1, naive["rate"],
               naive["rate"] / baseline, "-", "-")  # fmt: skip
    report.add("naive loop, again after the workers", "-", 1, again["rate"],
               again["rate"] / baseline, "-", "-")  # fmt: skip
    for runtime, ceiling in ceilings.items():
        report.add(f"embedding only, {runtime} (in-process)", "-", base.batch_size, ceiling,
                   ceiling / baseline, 1.0, "-")  # fmt: skip
    for worker in workers:
        rate = in_process[worker.label]
        report.add("processor chain in-process (no queue, no ES; mean of 2)", worker.label,
                   per_job, rate, rate / baseline, rate / ceilings[worker.runtime],
                   1.0)  # fmt: skip

    def vs_chain(run: dict[str, Any]) -> float | str:
        chain = in_process.get(run["worker"])
        return run["rate"] / chain if run["batch_size"] == per_job and chain else "-"

    for run in runs:
        report.add("queue -> worker -> ES, until searchable", run["worker"], run["batch_size"],
                   run["rate"], run["rate"] / baseline,
                   run["rate"] / ceilings[run["runtime"]], vs_chain(run))  # fmt: skip
    best = max(runs, key=lambda r: r["rate"])
    overhead = vs_chain(best)
    report.note(
        f"{args.images} JPEGs (naive loop: {n_naive}, run first and again last: "
        f"{naive['rate']:.1f} and {again['rate']:.1f}/s, mean {baseline:.1f}); naive embedding "
        f"alone {naive['embed_rate']:.1f} and {again['embed_rate']:.1f} images/s. Best path "
        f"{best['rate']:.1f} products/s ({best['worker']}, {best['batch_size']} per job) = "
        f"{best['rate'] / baseline:.2f}x naive (target >= 3x). Queue + Elasticsearch "
        "overhead (against the mean of the same worker's chain run in-process just before and "
        f"again just after it, up to 12 jobs of {per_job} each): "
        + (f"{100 * (1 - overhead):.0f}%" if isinstance(overhead, float) else "not measured")
        + " (target <= 20%); with decoding and enrichment (quality flags, fingerprints) too, "
        f"{100 * (1 - best['rate'] / ceilings[best['runtime']]):.0f}% below embedding alone."
    )
    one = [r for r in runs if r["batch_size"] == 1]
    if one:
        report.note(
            "One product per job: "
            + "; ".join(f"{r['worker']} {r['rate']:.1f}/s" for r in one)
            + " (a threads pool shares forward passes between jobs; prefork embeds each alone)."
        )
    report.note(
        f"JPEG draft decoding: {draft['decode_full_ms']:.1f} -> {draft['decode_draft_ms']:.1f} "
        f"ms per image; model input vs full decoding: mean |difference| "
        f"{draft['input_delta']:.3f} of the input's standard deviation; vectors' mean cosine "
        f"{draft['mean_cosine']:.4f} (min {draft['min_cosine']:.4f}; random weights: weak)."
    )
    report.note(
        "Random weights: throughput only (same FLOPs as real weights). In a threads pool the "
        "profile's stages are per job and overlap (embed_image includes waiting for the shared "
        "pass), so shares are of the jobs' summed time."
    )
    stage_table = profile_rows(best, chain_profiles.get(best["worker"]))
    report.data = {"naive": naive, "naive_again": again, "embedding_only": ceilings,
                   "chain_in_process": in_process, "chain_runs": chain_runs, "draft": draft,
                   "runs": runs, "profile_best": stage_table}  # fmt: skip
    print(
        f"\nworker profile, {best['worker']}, {best['batch_size']} per job (ms per product; "
        "the chain's in-process runs beside it):"
    )
    for stage, ms, share, alone in stage_table:
        print(f"  {stage:40s} {ms:8.1f} ms  {share:>7}  {_chain_ms(alone):>8}")

    def plot(ax: Any) -> None:
        for worker in workers:
            mine = [r for r in runs if r["worker"] == worker.label]
            ax.plot([r["batch_size"] for r in mine], [r["rate"] for r in mine], "o-",
                    label=worker.label)  # fmt: skip
        ax.axhline(baseline, color="grey", ls="--", label="naive loop (mean of two runs)")
        for runtime, ceiling in ceilings.items():
            ax.axhline(ceiling, ls=":", label=f"embedding only, {runtime}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("products per job")
        ax.set_ylabel("products/s until searchable")
        ax.legend(fontsize="small")

    report.save(args.results_dir, plot)
    (args.results_dir / "bench_ingest_profile.md").write_text(
        f"{best['worker']}, {best['batch_size']} products per job\n\n"
        "| stage | ms per product | share of busy time | chain in-process, ms per product |\n"
        "|---|---|---|---|\n"
        + "".join(
            f"| {s} | {ms:.1f} | {share} | {_chain_ms(alone)} |\n"
            for s, ms, share, alone in stage_table
        )
    )


def _chain_ms(alone: float | str) -> str:
    """The profile's "chain in-process" cell: ms per product, or "-" for a stage it lacks."""
    return f"{alone:.1f}" if isinstance(alone, float) else alone


if __name__ == "__main__":
    main(sys.argv[1:])
