"""Near-duplicates on ingest: the same item, at one merchant or several, shares a
``duplicate_group``.

After the processor chain, the ingestor hands each batch to ``DuplicateMatcher``: each new image
is compared with its ``duplicate_candidates`` nearest indexed documents, with as many documents
whose whole-image hash shares a band with its own and lies within
``duplicate_max_phash_distance`` bits (the same picture, which an encoder upset by strong JPEG
can rank far down the kNN list), and with the images before it in the same batch; one
``msearch`` per batch, not per image, and one ``mget`` of the fingerprints the process has not
seen yet. Two images match when their vectors' cosine is at least
``duplicate_sure_cosine``, or when their fingerprints (``phash`` processor) agree under one of
three tiers (``MatchRule``):

- from ``duplicate_min_cosine``: perceptual hashes at most ``duplicate_max_phash_distance``
  bits apart at the best-aligned window (a slight crop lines up) and colour thumbnails
  correlated at least ``duplicate_min_colour_correlation`` there (a look-alike on the same
  white ground does not);
- from ``duplicate_close_colour_min_cosine``: heavier edits (strong JPEG, crops of fine
  texture) flip more bits but keep the colours: up to ``duplicate_close_colour_phash_distance``
  bits with colours correlated at least ``duplicate_close_colour_correlation``;
- from ``duplicate_same_picture_min_cosine``: the same picture, up to
  ``duplicate_same_picture_phash_distance`` bits with colours correlated at least
  ``duplicate_same_picture_correlation``.

A document from before fingerprints is compared on its whole-image ``phash`` alone.

Group ids, and why they are stable:

- An image that matches nothing founds a group whose id is its own document id. Members keep
  the id they were given; nothing renames a group when members leave, so deleting any member,
  the founder included, leaves the group of the others as it was.
- An image joins a group only when it matches more than half of the members it was compared
  with (its nearest documents of that group, and earlier images of its batch): a look-alike
  that matches one edited copy but not the original stays out, where joining on one match
  would chain different items into one group (bench: precision 0.941 -> 0.966 from this alone).
- An image that qualifies for several groups joins the smallest id (deterministic, so two
  workers deciding on the same evidence agree); groups are never merged on ingest.
- Re-ingesting an image (same document id) keeps the group it has; a changed image is a new
  document and is matched afresh (the product's old image document is deleted by the write).
- A matched document indexed before this processor existed (no group) founds the group with its
  own id: it is updated in place so that searches for the group find it.

Concurrency: a document is searchable a refresh interval (about a second) after it is written.
Within one worker process the matcher remembers what it grouped in the last
``RECENT_WINDOW_S`` seconds and compares new images with those too, under a lock, so copies in
jobs that a threads-pool worker runs at once, or one after the other, share a group. Two workers
(or prefork processes) ingesting copies of one item within a refresh interval cannot see each
other's documents and may found two groups; ``vitrine duplicates`` shows them as separate
groups. This is the price of keeping ingest free of cross-worker locks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from elasticsearch import Elasticsearch, TransportError

from pipeline.documents import document_id
from pipeline.es.mappings import COSINE_SCRIPT, VECTOR_FIELD, exact_rescore
from pipeline.images import Fingerprint, phash_distance
from pipeline.ingest.processors import IngestItem
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

#: How long the matcher remembers the images it grouped: a few refresh intervals (1 s), the
#: time until Elasticsearch's kNN finds them.
RECENT_WINDOW_S = 5.0

#: What identifies a hit without its ``_id``: ``document_id`` of these doc values. The matcher's
#: searches read no stored field (``stored_fields: _none_``): ``_id`` is one, and reading it
#: decompresses the block holding the documents' ``_source`` (vector and fingerprint as JSON).
#: 16 images' msearch on bench ingest's photos: ES CPU 22.3 -> 15.3 ms, p50 14.8 -> 11.6 ms.
ID_FIELDS = ["merchant_id", "product_id", "image_sha256"]

#: What the matcher's searches return of a candidate (``Candidate.from_hit``): its identity,
#: group and phash, all doc values. Fingerprints (9 KB each as base64) come apart, only for
#: candidates a tier could admit, and each once per process (``DuplicateMatcher._fingerprints``):
#: sent with every hit, they cost a batch of 16 images 2 MB of JSON and its msearch a third of
#: its time (24.6 against 16.7 ms p50, bench ingest's images).
MATCH_FIELDS = [*ID_FIELDS, "duplicate_group", "phash"]

#: How many fingerprints a matcher keeps by document id: its own images' and those it fetched.
#: A document id names the image's content, so a kept fingerprint never goes stale. About 36
#: KB each with the arrays ``Fingerprint.compare`` builds.
FINGERPRINT_CACHE_SIZE = 1024


class Hashed(Protocol):
    """An image's hashes: a new one or an indexed one."""

    @property
    def phash(self) -> str | None: ...

    @property
    def fingerprint(self) -> Fingerprint | None: ...


@dataclass(frozen=True)
class Tier:
    """Fingerprints that differ in at most ``bits`` hash bits at the best-aligned window, with
    colours correlated at least ``colour`` there, match from a cosine of ``min_cosine``."""

    min_cosine: float
    bits: int
    colour: float

    def admits(self, cosine: float, bits: int, colour: float) -> bool:
        return cosine >= self.min_cosine and bits <= self.bits and colour >= self.colour


#: A tier that admits nothing (the optional tiers' default).
OFF = Tier(2.0, -1, 2.0)


@dataclass(frozen=True)
class MatchRule:
    """When two images show the same item (thresholds from the settings): a cosine of
    ``sure_cosine``, or fingerprints that one tier admits. The first tier is the usual one;
    ``close_colour`` lets heavier edits (strong JPEG, crops of fine texture) differ in more
    bits when their colours agree closely; ``same_picture`` admits the same picture (a few bits,
    colours alike to the third decimal) at a cosine an encoder upset by JPEG artefacts can
    still give it. Documents without a fingerprint compare their whole-image ``phash`` alone."""

    min_cosine: float
    max_phash_distance: int
    sure_cosine: float
    min_colour_correlation: float
    close_colour: Tier = OFF
    same_picture: Tier = OFF

    @classmethod
    def from_settings(cls, settings: VitrineSettings) -> MatchRule:
        return cls(
            min_cosine=settings.duplicate_min_cosine,
            max_phash_distance=settings.duplicate_max_phash_distance,
            sure_cosine=settings.duplicate_sure_cosine,
            min_colour_correlation=settings.duplicate_min_colour_correlation,
            close_colour=Tier(
                settings.duplicate_close_colour_min_cosine,
                settings.duplicate_close_colour_phash_distance,
                settings.duplicate_close_colour_correlation,
            ),
            same_picture=Tier(
                settings.duplicate_same_picture_min_cosine,
                settings.duplicate_same_picture_phash_distance,
                settings.duplicate_same_picture_correlation,
            ),
        )

    @cached_property
    def tiers(self) -> tuple[Tier, ...]:
        usual = Tier(self.min_cosine, self.max_phash_distance, self.min_colour_correlation)
        return usual, self.close_colour, self.same_picture

    @cached_property
    def _lowest_cosine(self) -> float:
        return min(tier.min_cosine for tier in self.tiers)

    def weighs_hashes(self, cosine: float) -> bool:
        """Whether the hashes decide a pair at ``cosine``: below the sure cosine, and from the
        lowest tier's on (below, nothing can match)."""
        return self._lowest_cosine <= cosine < self.sure_cosine

    def matches(self, cosine: float, a: Hashed, b: Hashed) -> bool:
        return self.matches_many(a, [cosine], [b])[0]

    def matches_many(
        self, image: Hashed, cosines: Sequence[float], others: Sequence[Hashed]
    ) -> list[bool]:
        """``matches`` of ``image`` with each of ``others`` (at ``cosines``): the fingerprint
        comparisons a verdict needs run at once (``Fingerprint.compare_many``), and none where
        the cosine is below every tier's."""
        verdicts = [cosine >= self.sure_cosine for cosine in cosines]
        printed = []  # (position, fingerprint) of the pairs the tiers decide
        for n, other in enumerate(others):
            if not self.weighs_hashes(cosines[n]):
                continue
            if image.fingerprint is None or other.fingerprint is None:
                distance = phash_distance(image.phash, other.phash)
                verdicts[n] = (
                    cosines[n] >= self.min_cosine
                    and distance is not None
                    and distance <= self.max_phash_distance
                )
            else:
                printed.append((n, other.fingerprint))
        if printed and image.fingerprint is not None:
            bits, colours = image.fingerprint.compare_many([f for _, f in printed])
            for (n, _), b, c in zip(printed, bits, colours, strict=True):
                verdicts[n] = any(tier.admits(cosines[n], int(b), float(c)) for tier in self.tiers)
        return verdicts


@dataclass(frozen=True)
class Candidate:
    """An indexed document near a new image: its id, group and phash, and the cosine."""

    doc_id: str
    group: str | None
    phash: str | None
    cosine: float
    fingerprint: Fingerprint | None = None

    @classmethod
    def from_hit(cls, hit: dict[str, Any]) -> Candidate:
        """A hit of ``match_searches`` (``MATCH_FIELDS``), without its fingerprint yet."""
        # kNN on a cosine field scores (1 + cos) / 2
        return cls(
            _hit_id(hit),
            _field(hit, "duplicate_group"),
            _field(hit, "phash"),
            2 * hit["_score"] - 1,
        )


def _hit_id(hit: dict[str, Any]) -> str:
    """The ``_id`` of a hit of ``match_searches``, from its ``ID_FIELDS`` doc values."""
    merchant_id, product_id, image_sha256 = (hit["fields"][name][0] for name in ID_FIELDS)
    return document_id(merchant_id, product_id, image_sha256)


def _field(hit: dict[str, Any], name: str) -> str | None:
    """A single-valued doc-value field of a hit (``docvalue_fields``: a list, or absent)."""
    return next(iter(hit.get("fields", {}).get(name, [])), None)


@dataclass(frozen=True)
class NewImage:
    """A batch image to be grouped."""

    doc_id: str
    vector: np.ndarray
    phash: str | None
    fingerprint: Fingerprint | None = None


@dataclass
class Grouping:
    """The outcome for one batch: a group per new document, and the group of each matched
    older document that had none (to be written onto it)."""

    groups: dict[str, str]
    backfill: dict[str, str]


def match_searches(images: Sequence[NewImage], *, k: int) -> list[dict[str, Any]]:
    """``msearch`` bodies: for each new image its ``k`` nearest documents by kNN, then the ``k``
    nearest of those sharing a band of its whole-image hash (the same picture that kNN ranks
    too far away, kept by ``same_hash``; nothing without a fingerprint); last, one look-up of
    the groups the batch's documents already have (re-ingest keeps them). Both lists are
    re-scored with the exact float cosine."""
    searches: list[dict[str, Any]] = []
    for image in images:
        floats = [float(x) for x in np.asarray(image.vector, dtype=np.float32)]
        searches.append(
            {
                "knn": {
                    "field": VECTOR_FIELD,
                    "query_vector": floats,
                    "k": k,
                    "num_candidates": max(50, 2 * k),
                },
                "rescore": exact_rescore(floats, window=k),
                "size": k,
                "stored_fields": "_none_",
                "docvalue_fields": MATCH_FIELDS,
            }
        )
        bands = image.fingerprint.bands() if image.fingerprint else []
        band_filter = {"terms": {"phash_bands": bands}} if bands else {"match_none": {}}
        exact = {"source": COSINE_SCRIPT, "params": {"query_vector": floats}}
        searches.append(
            {
                "query": {
                    "script_score": {"query": {"bool": {"filter": [band_filter]}}, "script": exact}
                },
                "size": k,
                "stored_fields": "_none_",
                "docvalue_fields": MATCH_FIELDS,
            }
        )
    searches.append(
        {
            "query": {"ids": {"values": [image.doc_id for image in images]}},
            "size": len(images),
            "stored_fields": "_none_",
            "docvalue_fields": [*ID_FIELDS, "duplicate_group"],
        }
    )
    return searches


def same_hash(image: NewImage, candidate: Candidate, max_bits: int) -> bool:
    """Whether a candidate found by a shared hash band is within ``max_bits`` of ``image``'s
    whole-image hash: a shared 13-bit band alone is chance at catalogue scale."""
    if image.fingerprint is None or candidate.fingerprint is None:
        return False
    return (image.fingerprint.whole ^ candidate.fingerprint.whole).bit_count() <= max_bits


def assign_groups(
    images: Sequence[NewImage],
    candidates: Sequence[Sequence[Candidate]],
    previous: dict[str, str | None],
    rule: MatchRule,
) -> Grouping:
    """Groups for a batch of new images (pure): see the module docstring for the rules.

    ``candidates[i]`` are the indexed documents nearest ``images[i]``; ``previous`` maps the
    ids of batch documents that are already indexed to their group."""
    grouping = Grouping({}, {})
    unit = [_unit(image.vector) for image in images]
    for i, image in enumerate(images):
        kept = previous.get(image.doc_id)
        if kept:
            grouping.groups[image.doc_id] = kept
            continue
        found, seen = [], {image.doc_id}  # a recent image may also come back from Elasticsearch
        for candidate in candidates[i]:
            if candidate.doc_id not in seen:
                seen.add(candidate.doc_id)
                found.append(candidate)
        earlier = [j for j in range(i) if images[j].doc_id != image.doc_id]  # not indexed yet
        verdicts = rule.matches_many(
            image,
            [c.cosine for c in found] + [float(unit[i] @ unit[j]) for j in earlier],
            [*found, *(images[j] for j in earlier)],
        )
        votes: dict[str, list[bool]] = {}  # group -> a match verdict per member compared
        for candidate, match in zip(found, verdicts[: len(found)], strict=True):
            group = candidate.group or grouping.backfill.get(candidate.doc_id)
            if match and group is None:
                group = grouping.backfill.setdefault(candidate.doc_id, candidate.doc_id)
            votes.setdefault(group or candidate.doc_id, []).append(match)
        for j, match in zip(earlier, verdicts[len(found) :], strict=True):
            votes.setdefault(grouping.groups[images[j].doc_id], []).append(match)
        joined = [group for group, matches in votes.items() if 2 * sum(matches) > len(matches)]
        grouping.groups[image.doc_id] = min(joined) if joined else image.doc_id
    return grouping


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


class FingerprintCache:
    """Fingerprints by document id, the least recently used dropped beyond ``size``; shared by
    the jobs a threads-pool worker runs at once."""

    def __init__(self, size: int):
        self.size = size
        self._kept: OrderedDict[str, Fingerprint] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, doc_ids: Iterable[str]) -> dict[str, Fingerprint]:
        with self._lock:
            found = {d: self._kept[d] for d in doc_ids if d in self._kept}
            for doc_id in found:
                self._kept.move_to_end(doc_id)
        return found

    def put(self, fingerprints: dict[str, Fingerprint]) -> None:
        with self._lock:
            self._kept.update(fingerprints)
            for doc_id in fingerprints:
                self._kept.move_to_end(doc_id)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)


class DuplicateMatcher:
    """Sets ``duplicate_group`` on a batch's embedded items (after the processor chain, which
    computes ``phash`` when the ``phash`` processor is configured): one ``msearch`` per batch,
    and one ``mget`` of the fingerprints it needs and does not keep."""

    def __init__(self, settings: VitrineSettings, es: Elasticsearch):
        self.settings = settings
        self.rule = MatchRule.from_settings(settings)
        self.es = es
        self._recent: deque[tuple[float, NewImage, str]] = deque()  # (time, image, its group)
        self._lock = threading.Lock()
        self._kept = FingerprintCache(FINGERPRINT_CACHE_SIZE)

    def assign(self, items: Sequence[IngestItem], indices: Sequence[str]) -> None:
        """Group the ``ok`` items against ``indices`` (those holding their model's vectors).
        Elasticsearch errors propagate: unreachable, the whole batch is retried like a failed
        bulk write (and recorded as ``elasticsearch_unavailable`` when the budget runs out)."""
        ready = [i for i in items if i.ok and i.vector is not None and i.image is not None]
        if not ready:
            return
        images = [
            NewImage(
                document_id(i.product.merchant_id, i.product.product_id, i.image.sha256),  # type: ignore[union-attr]
                i.vector,  # type: ignore[arg-type]
                i.phash,
                Fingerprint.decode(i.fingerprint),
            )
            for i in ready
        ]
        candidates, previous = self._search(images, indices)
        with self._lock:  # jobs in threads: each sees what the others grouped before it
            recent = self._recent_candidates(images)
            grouping = assign_groups(
                images,
                [found + near for found, near in zip(candidates, recent, strict=True)],
                previous,
                self.rule,
            )
            now = time.monotonic()
            self._recent.extend((now, image, grouping.groups[image.doc_id]) for image in images)
        self._kept.put({i.doc_id: i.fingerprint for i in images if i.fingerprint is not None})
        if grouping.backfill:
            self._backfill(grouping.backfill, indices)
        for item, image in zip(ready, images, strict=True):
            item.duplicate_group = grouping.groups[image.doc_id]

    def _recent_candidates(self, images: Sequence[NewImage]) -> list[list[Candidate]]:
        """The images grouped in the last ``RECENT_WINDOW_S`` seconds (not searchable yet)
        nearest each new image, and those of the same hash, as Elasticsearch would find them;
        older ones are forgotten."""
        cutoff = time.monotonic() - RECENT_WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        if not self._recent:
            return [[] for _ in images]
        known = [image for _, image, _ in self._recent]
        groups = [group for _, _, group in self._recent]
        cosines = (
            np.stack([_unit(i.vector) for i in images])
            @ np.stack([_unit(k.vector) for k in known]).T
        )
        k, max_bits = self.settings.duplicate_candidates, self.settings.duplicate_max_phash_distance
        printed = np.array([i.fingerprint is not None for i in known])
        wholes = np.array([i.fingerprint.whole if i.fingerprint else 0 for i in known], np.uint64)
        found = []
        for image, row in zip(images, cosines, strict=True):
            order = np.argsort(-row)
            picked = list(order[:k])
            if image.fingerprint is not None:  # further down, those of the same hash (same_hash)
                same = printed & (
                    np.bitwise_count(wholes ^ np.uint64(image.fingerprint.whole)) <= max_bits
                )
                picked += list(order[k:][same[order[k:]]][:k])
            found.append(
                [
                    Candidate(
                        known[j].doc_id,
                        groups[j],
                        known[j].phash,
                        float(row[j]),
                        known[j].fingerprint,
                    )
                    for j in picked
                ]
            )
        return found

    def _search(
        self, images: Sequence[NewImage], indices: Sequence[str]
    ) -> tuple[list[list[Candidate]], dict[str, str | None]]:
        target = ",".join(indices)
        searches = match_searches(images, k=self.settings.duplicate_candidates)
        body: list[dict[str, Any]] = []
        for search in searches:
            body += [{"index": target}, search]
        responses = self.es.msearch(searches=body)["responses"]
        for response in responses:
            if "error" in response:
                failure = f"duplicate matching search failed: {response['error']}"
                status = response.get("status", 500)
                if status == 429 or status >= 500:  # shards not recovered, a node just left
                    raise TransportError(failure)
                raise RuntimeError(failure)
        hits = [response["hits"]["hits"] for response in responses[:-1]]
        found = [[Candidate.from_hit(hit) for hit in row] for row in hits]
        index_of = {
            c.doc_id: hit["_index"]
            for row, candidates in zip(hits, found, strict=True)
            for hit, c in zip(row, candidates, strict=True)
        }
        wanted = {  # the fingerprints the grouping compares: of those the hashes could decide
            c.doc_id
            for image, nearest, banded in zip(images, found[::2], found[1::2], strict=True)
            if image.fingerprint is not None
            for c in [*(c for c in nearest if self.rule.weighs_hashes(c.cosine)), *banded]
        }
        fingerprints = self._fingerprints({d: index_of[d] for d in wanted})
        found = [[replace(c, fingerprint=fingerprints.get(c.doc_id)) for c in row] for row in found]
        max_bits = self.settings.duplicate_max_phash_distance
        candidates = [
            nearest + [c for c in banded if same_hash(image, c, max_bits)]
            for image, nearest, banded in zip(images, found[::2], found[1::2], strict=True)
        ]
        previous = {
            _hit_id(hit): _field(hit, "duplicate_group") for hit in responses[-1]["hits"]["hits"]
        }
        return candidates, previous

    def _fingerprints(self, where: dict[str, str]) -> dict[str, Fingerprint]:
        """The fingerprints of the documents in ``where`` (id -> index): those kept, the rest in
        one ``mget``, then kept. Documents from before fingerprints have none and are left out."""
        known = self._kept.get(where)
        missing = [
            {"_index": where[d], "_id": d, "_source": ["fingerprint"]}
            for d in where.keys() - known.keys()
        ]
        if not missing:
            return known
        fetched = {}
        for doc in self.es.mget(docs=missing, realtime=False)["docs"]:
            if "error" in doc:  # a shard not recovered: retried as an unreachable cluster is
                raise TransportError(f"duplicate matching look-up failed: {doc['error']}")
            fingerprint = Fingerprint.decode(doc.get("_source", {}).get("fingerprint"))
            if fingerprint is not None:
                fetched[doc["_id"]] = fingerprint
        self._kept.put(fetched)
        return known | fetched

    def _backfill(self, backfill: dict[str, str], indices: Sequence[str]) -> None:
        """Give matched documents from before this processor their (own-id) group."""
        body: list[dict[str, Any]] = []
        for doc_id, group in backfill.items():
            for index in indices:
                body += [
                    {"update": {"_index": index, "_id": doc_id}},
                    {"doc": {"duplicate_group": group}},
                ]
        self.es.bulk(operations=body)
        log.info("gave %d older document(s) their duplicate group", len(backfill))
