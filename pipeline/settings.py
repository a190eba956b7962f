"""The one settings object: built at an entry point (CLI, worker, API) from ``VITRINE_*``
environment variables and passed down. Nothing below the entry points reads the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.fetch import FetchPolicy


def _default_home() -> Path:
    return Path.home() / ".cache" / "vitrine"


def _default_services_dir() -> Path:
    # Elasticsearch runs as `nobody` when we are root, and root's home is not traversable.
    return Path("/var/lib/vitrine") if os.geteuid() == 0 else _default_home() / "services"


#: An alias or index name of ours: Elasticsearch's rules, minus the dot that separates the
#: alias from model and generation in concrete index names (``pipeline.es.mappings``).
ELASTIC_NAME = r"^[a-z0-9][a-z0-9_+-]{0,200}$"


#: What ``VitrineSettings.encoder_fields`` records: the settings that pick the model.
ENCODER_FIELDS = ("encoder", "encoder_options", "model_arch", "model_pretrained", "encoder_runtime")


class VitrineSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VITRINE_", env_nested_delimiter="__", extra="ignore"
    )

    # Elasticsearch
    es_url: str = Field(
        "http://127.0.0.1:9200",
        description="Elasticsearch URL, or several (a cluster's nodes) separated by commas: the "
        "client spreads requests over them and skips one that does not answer.",
    )
    es_username: str | None = None
    es_password: SecretStr | None = None
    es_api_key: SecretStr | None = None
    es_ca_certs: Path | None = None
    es_request_timeout_s: float = 30.0
    index_alias: str = Field(
        "vitrine-products",
        pattern=ELASTIC_NAME,
        description="Read alias of the product index (searches); writers use '<alias>.write'; "
        "the concrete indices are '<alias>.<model>.<generation>'.",
    )
    errors_index: str = Field(
        "vitrine-ingest-errors",
        pattern=ELASTIC_NAME,
        description="Index of failed ingest jobs (operators, Kibana).",
    )
    index_shards: int = Field(
        1, ge=1, description="Primary shards of a new product index (more on a cluster)."
    )
    index_replicas: int = Field(
        0,
        ge=0,
        description="Replicas of each shard of a new product index: 1 on a cluster of 2+ nodes "
        "keeps every product searchable and writable when a node stops.",
    )
    bulk_max_retries: int = 5
    bulk_initial_backoff_s: float = 0.5

    # Redis / Celery
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "vitrine"
    task_soft_time_limit_s: int = 300
    task_time_limit_s: int = 360
    task_retry_budget_s: float = Field(
        900,
        gt=0,
        description="How long a job keeps retrying transient faults (Elasticsearch or an image "
        "host down), counted from its first attempt: outages shorter than this lose nothing.",
    )
    task_retry_backoff_s: int = Field(
        2,
        ge=1,
        description="Back-off factor in whole seconds (Celery's retry_backoff): the n-th retry "
        "waits a random 0..factor*2^n seconds (full jitter), capped at task_retry_backoff_max_s.",
    )
    task_retry_backoff_max_s: int = Field(
        300,
        ge=1,
        description="Longest wait before one retry. A waiting retry is held, unacknowledged, "
        "by a worker, so it bounds the visibility timeout from below.",
    )
    visibility_timeout_s: int | None = Field(
        None,
        ge=1,
        description="Seconds after a worker received a job when Redis hands it, still "
        "unacknowledged, to another worker: the redelivery bound for jobs of a worker that "
        "died. Default: task_time_limit_s + task_retry_backoff_max_s + 60 (12 minutes with the "
        "defaults). The clock runs from receipt, through any wait for a free pool process, its "
        "retry wait and its run: shorter than that means the job runs twice (harmless, writes "
        "are idempotent, but wasted work).",
    )
    unacked_restore_interval_s: int = Field(
        10,
        ge=1,
        description="How often each worker requeues jobs past the visibility timeout (a "
        "worker also does it when it starts).",
    )
    worker_proc_alive_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long a new worker pool process may take to start (it loads the model) "
        "before Celery kills it. Celery's own 4 s is shorter than loading ViT-B-32 on a CPU "
        "(about 9 s), which made every replacement of a dead process fail.",
    )

    @model_validator(mode="after")
    def _visibility_timeout_exceeds_a_run(self) -> VitrineSettings:
        if self.visibility_timeout_s is not None and (
            self.visibility_timeout_s <= self.task_time_limit_s
        ):
            raise ValueError(
                "visibility_timeout_s must exceed task_time_limit_s, or every job that runs "
                "longer than the visibility timeout is handed to another worker again and again"
            )
        return self

    worker_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of a worker's Prometheus exporter (/metrics on all of the worker's "
        "pool processes); none by default. The API serves its own at /metrics.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Interface of the worker's exporter (0.0.0.0 in a container)."
    )

    # Durability: accepted work and error records on disk (see pipeline/journal.py)
    journal_dir: Path | None = Field(
        None,
        description="Pending-job journal and error spool (default <home>/journal). The API and "
        "the workers must all see it (a shared volume in docker-compose), like the image store.",
    )
    reconcile_interval_s: float = Field(
        60, gt=0, description="How often each worker runs the reconciler."
    )
    reconcile_grace_s: float = Field(
        30,
        ge=0,
        description="A pending record younger than this is left alone (its job is "
        "being sent right now).",
    )
    reconcile_stale_s: float | None = Field(
        None,
        description="A job started (running or retrying) this long after it was sent is sent "
        "again (default: retry budget + task time limit + 10 minutes). A queued job is sent "
        "again only when Redis no longer holds its message, however long the backlog.",
    )
    reconcile_max_sends: int = Field(
        10,
        ge=1,
        description="After this many sends a pending record is given up and recorded "
        "in the ingest-errors index.",
    )

    # Model
    encoder: str = Field("open_clip", description="Name of the encoder plugin (entry point).")
    encoder_options: dict[str, Any] = Field(
        default_factory=dict,
        description="The encoder plugin's own options: VITRINE_ENCODER_OPTIONS as a JSON object, "
        "or one VITRINE_ENCODER_OPTIONS__<KEY> variable per option (key lower-cased, value a "
        "string).",
    )
    # open_clip's options (the built-in encoder predates encoder_options)
    model_arch: str = "ViT-B-32"
    model_pretrained: str = Field(
        "laion2b_s34b_b79k",
        description="open_clip pretrained tag, or a path to a local checkpoint (state dict).",
    )
    allow_random_weights: bool = Field(
        False,
        description="If real open_clip weights cannot be obtained, fall back to a locally "
        "generated random-initialised checkpoint (mechanics only; model_id says so).",
    )
    device: str = "cpu"
    batch_size: int = Field(16, ge=1, description="Images per forward pass at most.")
    worker_pool: Literal["prefork", "threads", "solo"] = Field(
        "prefork",
        description="How `vitrine worker` runs jobs. prefork: `--concurrency` processes, each "
        "with its own model, one job at a time; a crashed process loses only its job. threads: "
        "one process, one model, `--concurrency` jobs at once whose images share forward passes "
        "(jobs of one product still embed in full batches, and decoding overlaps the forward "
        "pass); Celery's time limits are not enforced in this pool, and a Redis restart while "
        "it held several unacknowledged jobs once stopped it (kombu, see README). solo: one "
        "job at a time in the worker process.",
    )
    embed_batch_wait_ms: float = Field(
        20,
        ge=0,
        description="threads pool: how long the first image of a forward pass may wait for "
        "images of other jobs, from its arrival (under load the next pass is already full).",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Threads of each model process. Default: the CPUs this process may use "
        "divided by the worker's pool processes (at least 1), so processes x threads fill the "
        "cores without oversubscribing them; outside a worker, torch's own default.",
    )
    encoder_runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="What runs the image tower: torch fp32, or an ONNX Runtime export of it in "
        "fp32 or int8 (AVX-512 VNNI; faster, slightly different vectors). The runtime is part of "
        "model_id, so changing it means a new index. Exports are built once per machine and "
        "cached under <home>/models/onnx (the first start takes longer). ONNX Runtime uses "
        "torch_threads threads per forward pass too.",
    )
    encoder_spin_wait: bool | None = Field(
        None,
        description="ONNX Runtime: whether a forward pass's threads spin between operators "
        "(fastest when the process does nothing else) or sleep (leaving the cores to other "
        "work). Default: spin, except in a worker, where decoding and enrichment of the jobs "
        "(threads pool) or the other pool processes need the cores between passes: measured "
        "with the threads pool and onnx-int8, 25.7 -> 30.7 products/s (bench ingest).",
    )
    encoder_min_agreement: float = Field(
        0.99,
        ge=0,
        le=1,
        description="An ONNX runtime whose vectors agree with torch fp32 at a lower mean cosine "
        "(measured once, on a fixed generated image set) is refused at load.",
    )

    # Images
    image_max_bytes: int = 20 * 1024 * 1024
    image_max_pixels: int = 50_000_000
    image_fetch_timeout_s: float = Field(
        10.0, description="Deadline of one image fetch as a whole (resolution, redirects, body)."
    )
    fetch_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Internal image stores that image URLs may reach: CIDRs, addresses and host "
        "names ('*.name' for its subdomains), comma-separated. Everything else that is not a "
        "public address (loopback, private, link-local, metadata...) is refused.",
    )
    fetch_max_redirects: int = Field(5, ge=0, description="Redirects one image fetch follows.")
    anonymous_image_urls: bool = Field(
        False,
        description="Let callers without an API key have /v1/embed and /v1/search fetch an "
        "image_url (allow-listed hosts are always allowed).",
    )
    min_image_side: int = Field(256, description="Below this width/height an image is flagged.")

    # Ingest
    processors: list[str] = Field(
        default_factory=lambda: [
            "decode_image",
            "image_quality",
            "phash",
            "embed_image",
            "auto_tag",
            "visual_cluster",
        ],
        description="Names of the ingest processors, applied in order (ocr, off by default, "
        "goes before image_quality; auto_tag and visual_cluster after embed_image).",
    )
    cluster_refresh_s: float = Field(
        300,
        ge=0,
        description="How often the visual_cluster processor re-reads the centroids stored by "
        "`vitrine cluster` (one small GET per worker process).",
    )

    decode_draft: bool = Field(
        True,
        description="Decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that the processor "
        "chain still needs (e.g. the model's 224 pixels): far fewer pixels decoded; stored width, "
        "height and hash stay the original's.",
    )
    ingest_refresh: bool = Field(
        False,
        description="Refresh the index after each batch is written, so a finished job is "
        "searchable at once (read-your-write). Off: documents become searchable within the "
        "index's refresh interval (1 s by default), and no refresh costs the hot path.",
    )
    profile_log_interval_s: float = Field(
        60,
        ge=0,
        description="How often a worker process logs its cumulative per-stage ingest profile "
        "(0: after every batch). Each batch's profile is logged at DEBUG.",
    )

    # Enrichment processors (pipeline/ingest/enrich)
    taxonomy_path: Path | None = Field(
        None, description="Taxonomy YAML of auto_tag (default: the one shipped with Vitrine)."
    )
    auto_tag_on_random_weights: bool = Field(
        False, description="Tag even with random-initialised weights (mechanics tests: noise)."
    )
    category_mismatch_max_score: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Flag category_mismatch when the merchant's category (a taxonomy label) "
        "gets less than this zero-shot probability and another category is confident.",
    )
    quality_max_aspect_ratio: float = Field(3.0, description="Longer/shorter side above: flag.")
    quality_blank_max_content: float = Field(
        0.015, description="Share of pixels standing out below which an image is blank."
    )
    quality_blur_min_ratio: float = Field(
        0.65, description="Gradient energy kept after re-blurring above which it is blurry."
    )
    quality_dark_max: float = Field(
        0.3, description="95th luminance percentile below which an image is too dark."
    )
    quality_bright_min: float = Field(
        0.6, description="5th luminance percentile above which a washed-out image is overexposed."
    )
    quality_text_min_area: float = Field(
        0.003, description="Share of the image in text boxes (ocr) from which it is text_overlay."
    )
    ocr_max_side: int = Field(640, description="OCR text detection works at this long side.")
    ocr_min_score: float = Field(0.5, description="Text lines read with a lower score are dropped.")

    # Near-duplicates (pipeline/ingest/duplicates.py): two images show the same item when their
    # vectors' cosine is at least duplicate_sure_cosine, or at least duplicate_min_cosine with
    # fingerprints (phash processor) whose hashes are at most duplicate_max_phash_distance bits
    # apart at the best-aligned window and whose colour thumbnails correlate at least
    # duplicate_min_colour_correlation there; or, for heavier edits (strong JPEG, crops), at least
    # duplicate_close_colour_min_cosine with hashes at most duplicate_close_colour_phash_distance
    # apart and colours correlating at least duplicate_close_colour_correlation; or, for the same
    # picture that an encoder upset by JPEG artefacts puts far apart, at least
    # duplicate_same_picture_min_cosine with hashes at most duplicate_same_picture_phash_distance
    # apart and colours correlating at least duplicate_same_picture_correlation. Cosines depend
    # on the encoder: the defaults are measured with efficientnet_lite0 (bench/bench_duplicates.py).
    duplicate_matching: bool = Field(
        True, description="Match each ingested image against the catalogue (duplicate_group)."
    )
    duplicate_min_cosine: float = Field(
        0.70, ge=-1, le=1, description="Cosine from which hashes close enough make a duplicate."
    )
    duplicate_max_phash_distance: int = Field(
        4,
        ge=0,
        le=64,
        description="Most differing bits of two duplicates' 64-bit phash (best-aligned window).",
    )
    duplicate_min_colour_correlation: float = Field(
        0.93,
        ge=-1,
        le=1,
        description="Least correlation of two duplicates' 8x8 colour thumbnails (same window).",
    )
    duplicate_sure_cosine: float = Field(
        0.999,
        ge=-1,
        le=1,
        description="Cosine from which two images are duplicates on their vectors alone (near 1: "
        "different items on one ground can be 0.99 apart).",
    )
    duplicate_close_colour_phash_distance: int = Field(
        8,
        ge=0,
        le=64,
        description="Most differing phash bits of two duplicates whose colours agree closely.",
    )
    duplicate_close_colour_correlation: float = Field(
        0.995,
        ge=-1,
        le=1,
        description="Colour correlation from which duplicate_close_colour_phash_distance applies.",
    )
    duplicate_close_colour_min_cosine: float = Field(
        0.9, ge=-1, le=1, description="Cosine from which duplicate_close_colour_* applies."
    )
    duplicate_same_picture_phash_distance: int = Field(
        2, ge=0, le=64, description="Most differing phash bits of the same picture."
    )
    duplicate_same_picture_correlation: float = Field(
        0.999,
        ge=-1,
        le=1,
        description="Colour correlation from which duplicate_same_picture_phash_distance applies.",
    )
    duplicate_same_picture_min_cosine: float = Field(
        0.5, ge=-1, le=1, description="Cosine from which duplicate_same_picture_* applies."
    )
    duplicate_candidates: int = Field(
        10,
        ge=1,
        le=100,
        description="Nearest documents compared with each new image (by kNN, and as many "
        "again of those sharing a band of its whole-image phash).",
    )

    # Merchant upload API and catalogue import
    image_store_dir: Path | None = Field(
        None,
        description="Content-addressed store of original product images (default <home>/images). "
        "The API and the workers must both see it (a shared volume in docker-compose).",
    )
    upload_max_bytes: int = Field(
        20 * 1024 * 1024, description="Largest request body accepted by the upload endpoints."
    )
    upload_rate_limit: int = Field(
        120, description="Writes (POST/PUT/DELETE of products) allowed per API key per window."
    )
    upload_rate_window_s: int = Field(60, description="Length of the upload rate-limit window.")
    search_rate_limit: int = Field(
        600, ge=1, description="Searches and embeds allowed per API key per window."
    )
    search_rate_limit_per_address: int = Field(
        120,
        ge=1,
        description="Searches and embeds without an API key allowed per client address per "
        "window (behind a proxy, run uvicorn with --proxy-headers to see the real address).",
    )
    search_rate_window_s: int = Field(60, ge=1, description="Length of the search rate window.")
    redis_prefix: str = Field(
        "vitrine", description="Prefix of the API's own Redis keys (API keys, rate limits)."
    )

    # Search (see pipeline/search.py)
    search_default_k: int = Field(20, description="Products in a search's result window.")
    search_max_k: int = Field(200, description="Upper limit for k.")
    search_overfetch: int = Field(
        3,
        description="kNN fetches k x this many image documents so that about k distinct "
        "products remain after de-duplication (a product may have several images).",
    )
    search_num_candidates: int = Field(
        100, description="Default HNSW num_candidates (at least 2x the documents fetched)."
    )
    rrf_k: int = Field(60, description="Rank constant of reciprocal rank fusion.")
    search_exact_max_docs: int = Field(
        15_000,
        ge=0,
        description="Query planner: when the filter keeps at most this many image documents "
        "(estimated by a cached count), search them exactly (script_score cosine) instead of "
        "HNSW; exact costs grow with the documents kept, filtered HNSW hardly does. Measured "
        "here (`python -m bench planner`, 100k documents): at 10k kept exact is faster on "
        "some sets, from 20k kNN on all. 0: never exact.",
    )
    search_count_ttl_s: float = Field(
        30.0,
        ge=0,
        description="Query planner: how long its per-filter memories are kept: the count of "
        "documents a filter keeps (and of further images of a product), and whether recent "
        "first kNN passes under it came back flat.",
    )
    search_flat_contrast: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Query planner: a kNN list whose re-scored hits are this flat (1 - "
        "distance of the best / distance of the last; ~0.05 on structureless data, ~0.3+ "
        "on real catalogues) is searched again with a wider candidate pool.",
    )
    search_flat_exact_max_docs: int = Field(
        200_000,
        ge=0,
        description="Query planner: a flat kNN list whose filter keeps at most this many "
        "documents is searched again exactly rather than with a wider pool (measured here: a "
        "1000-document kNN pass cost about as much as exact search over ~300k documents).",
    )
    search_flat_pool: int = Field(
        1000,
        ge=1,
        le=10_000,
        description="Query planner: documents retrieved and re-scored exactly (HNSW "
        "num_candidates twice this, at most 10,000) when the first kNN pass came back flat.",
    )

    # Recommendations from browsing history (pipeline/search/recommend.py)
    recommend_mmr_lambda: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Maximal marginal relevance: 1 ranks by similarity to the profile only, "
        "lower values trade similarity for variety.",
    )
    recommend_overfetch: int = Field(
        5, ge=1, description="kNN fetches k x this many image documents to diversify from."
    )
    recommend_half_life_s: float = Field(
        86_400, gt=0, description="A timestamped view counts half as much after this long."
    )
    recommend_position_half_life: float = Field(
        5,
        gt=0,
        description="Views without timestamps (most recent first): the view this many places "
        "back counts half as much.",
    )
    recommend_cart_weight: float = Field(
        3.0, gt=0, description="An add-to-cart event counts this many views."
    )
    shopper_history_ttl_s: int = Field(
        30 * 86_400,
        ge=60,
        description="Retention of a shopper's events in Redis: the whole history expires this "
        "long after the shopper's last event.",
    )
    shopper_history_max_events: int = Field(
        50, ge=1, le=1000, description="Events kept per shopper (older ones are dropped)."
    )

    # Local services and caches
    home: Path = Field(default_factory=_default_home, description="Model and cache files.")
    services_dir: Path = Field(
        default_factory=_default_services_dir,
        description="Local Elasticsearch/Redis installs and data (dev, demo, tests).",
    )
    es_heap: str = Field("1g", description="JVM heap of the local Elasticsearch (-Xms/-Xmx).")
    es_transport_port: int | None = Field(
        None, description="Transport port of the local Elasticsearch (default: first free 9300+)."
    )

    @field_validator("fetch_allow", mode="before")
    @classmethod
    def _split_fetch_allow(cls, value: Any) -> Any:
        """Accept a comma-separated string or a JSON list (``to_env`` writes JSON)."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else text.split(",")
        return value

    @field_validator("fetch_allow")
    @classmethod
    def _valid_fetch_allow(cls, entries: list[str]) -> list[str]:
        FetchPolicy.parse(entries)  # fail at start-up, not at the first fetch
        return [e.strip() for e in entries if e.strip()]

    def encoder_fields(self) -> dict[str, Any]:
        """The settings that pick the model. Each product index records them in its ``_meta``,
        so a process configured for another model (the API, after a re-embed's swap or a
        rollback) can load the model of the index its alias serves."""
        return {name: getattr(self, name) for name in ENCODER_FIELDS}

    def for_worker_processes(self, processes: int, cpus: int) -> VitrineSettings:
        """These settings for one of ``processes`` pool processes on ``cpus`` usable CPUs:
        ``torch_threads``, unless set, becomes ``cpus // processes`` (at least 1), so that
        processes x threads fill the cores and never oversubscribe them (a forward pass
        with more threads than free cores runs slower, not faster); ``encoder_spin_wait``,
        unless set, is off (a spinning thread takes a core that decoding needs)."""
        update: dict[str, Any] = {}
        if self.torch_threads is None:
            update["torch_threads"] = max(1, cpus // max(1, processes))
        if self.encoder_spin_wait is None:
            update["encoder_spin_wait"] = False
        return self.model_copy(update=update)

    @property
    def es_hosts(self) -> list[str]:
        return [url.strip() for url in self.es_url.split(",") if url.strip()]

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def images_dir(self) -> Path:
        return self.image_store_dir or self.home / "images"

    @property
    def journal_root(self) -> Path:
        return self.journal_dir or self.home / "journal"

    @property
    def stale_after_s(self) -> float:
        """When a started job that has not finished counts as lost (see reconcile_stale_s)."""
        if self.reconcile_stale_s is not None:
            return self.reconcile_stale_s
        return self.task_retry_budget_s + self.task_time_limit_s + 600

    def to_env(self) -> dict[str, str]:
        """These settings as ``VITRINE_*`` variables, to start a worker or API process with them."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list | dict):
                value = json.dumps(value)
            env[f"VITRINE_{name.upper()}"] = str(value)
        return env
