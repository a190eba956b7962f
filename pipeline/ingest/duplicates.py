"""Near-duplicates on ingest: the same item, at one merchant or several, shares a
``duplicate_group``.

After the processor chain, the ingestor hands each batch to ``DuplicateMatcher``: each new image
is compared with its ``duplicate_candidates`` nearest indexed documents (one
``msearch`` of kNN searches per batch, not per image) and with the images before it in the same
batch. Two images match when their vectors' cosine is at least ``duplicate_sure_cosine``, or at
least ``duplicate_min_cosine`` with fingerprints (``phash`` processor) that agree: perceptual
hashes at most ``duplicate_max_phash_distance`` bits apart at the best-aligned window (a slight
crop lines up) and colour thumbnails correlated at least ``duplicate_min_colour_correlation``
there (a look-alike on the same white ground does not). Heavier edits (strong JPEG, crops of
fine texture) flip more hash bits but keep the colours: with a cosine of at least
``duplicate_close_colour_min_cosine`` and colours correlated at least
``duplicate_close_colour_correlation``, up to ``duplicate_close_colour_phash_distance`` bits
match. A document from before fingerprints is compared on its whole-image ``phash`` alone
(``MatchRule``).

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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from elasticsearch import Elasticsearch, TransportError

from pipeline.documents import document_id
from pipeline.images import Fingerprint, phash_distance
from pipeline.ingest.processors import IngestItem
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

#: How long the matcher remembers the images it grouped: a few refresh intervals (1 s), the
#: time until Elasticsearch's kNN finds them.
RECENT_WINDOW_S = 5.0

VECTOR_FIELD = "image_vector"
MATCH_SOURCE = ["merchant_id", "product_id", "duplicate_group", "phash", "fingerprint"]


class Hashed(Protocol):
    """An image's hashes: a new one or an indexed one."""

    @property
    def phash(self) -> str | None: ...

    @property
    def fingerprint(self) -> Fingerprint | None: ...


@dataclass(frozen=True)
class MatchRule:
    """When two images show the same item (thresholds from the settings)."""

    min_cosine: float
    max_phash_distance: int
    sure_cosine: float
    min_colour_correlation: float
    #: the close-colour tier: more hash bits may differ when colours agree this closely
    close_colour_phash_distance: int = 0
    close_colour_correlation: float = 2.0  # off unless set
    close_colour_min_cosine: float = 2.0

    @classmethod
    def from_settings(cls, settings: VitrineSettings) -> MatchRule:
        return cls(
            min_cosine=settings.duplicate_min_cosine,
            max_phash_distance=settings.duplicate_max_phash_distance,
            sure_cosine=settings.duplicate_sure_cosine,
            min_colour_correlation=settings.duplicate_min_colour_correlation,
            close_colour_phash_distance=settings.duplicate_close_colour_phash_distance,
            close_colour_correlation=settings.duplicate_close_colour_correlation,
            close_colour_min_cosine=settings.duplicate_close_colour_min_cosine,
        )

    def matches(self, cosine: float, a: Hashed, b: Hashed) -> bool:
        if cosine >= self.sure_cosine:
            return True
        if cosine < self.min_cosine:
            return False
        if a.fingerprint is None or b.fingerprint is None:
            distance = phash_distance(a.phash, b.phash)
            return distance is not None and distance <= self.max_phash_distance
        bits, colour = a.fingerprint.compare(b.fingerprint)
        if bits <= self.max_phash_distance and colour >= self.min_colour_correlation:
            return True
        return (
            cosine >= self.close_colour_min_cosine
            and bits <= self.close_colour_phash_distance
            and colour >= self.close_colour_correlation
        )


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
        source = hit.get("_source", {})
        # kNN on a cosine field scores (1 + cos) / 2
        return cls(
            hit["_id"],
            source.get("duplicate_group"),
            source.get("phash"),
            2 * hit["_score"] - 1,
            Fingerprint.decode(source.get("fingerprint")),
        )


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


#: The exact float cosine on kNN's (1 + cos) / 2 scale, as the searcher re-scores: int8_hnsw
#: scores are off by about 0.005, too much for thresholds near 1.
EXACT_SCORE = f"(cosineSimilarity(params.query_vector, '{VECTOR_FIELD}') + 1.0) / 2.0"


def match_searches(
    vectors: Sequence[np.ndarray], doc_ids: Sequence[str], *, k: int
) -> list[dict[str, Any]]:
    """``msearch`` bodies: one kNN search per new image, then one look-up of the groups the
    batch's documents already have (re-ingest keeps them)."""
    searches: list[dict[str, Any]] = []
    for vector in vectors:
        floats = [float(x) for x in np.asarray(vector, dtype=np.float32)]
        exact = {"script": {"source": EXACT_SCORE, "params": {"query_vector": floats}}}
        searches.append(
            {
                "knn": {
                    "field": VECTOR_FIELD,
                    "query_vector": floats,
                    "k": k,
                    "num_candidates": max(50, 2 * k),
                },
                "rescore": {
                    "window_size": k,
                    "query": {
                        "rescore_query": {"script_score": {"query": {"match_all": {}}, **exact}},
                        "query_weight": 0.0,
                        "rescore_query_weight": 1.0,
                    },
                },
                "size": k,
                "_source": MATCH_SOURCE,
            }
        )
    searches.append(
        {"query": {"ids": {"values": list(doc_ids)}}, "size": len(doc_ids), "_source": MATCH_SOURCE}
    )
    return searches


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
        votes: dict[str, list[bool]] = {}  # group -> a match verdict per member compared
        compared = {image.doc_id}  # a recent image may also come back from Elasticsearch
        for candidate in candidates[i]:
            if candidate.doc_id in compared:
                continue
            compared.add(candidate.doc_id)
            group = candidate.group or grouping.backfill.get(candidate.doc_id)
            match = rule.matches(candidate.cosine, image, candidate)
            if match and group is None:
                group = grouping.backfill.setdefault(candidate.doc_id, candidate.doc_id)
            votes.setdefault(group or candidate.doc_id, []).append(match)
        for j in range(i):  # earlier images of this batch are not indexed yet
            earlier = images[j]
            if earlier.doc_id != image.doc_id:
                match = rule.matches(float(unit[i] @ unit[j]), image, earlier)
                votes.setdefault(grouping.groups[earlier.doc_id], []).append(match)
        joined = [group for group, matches in votes.items() if 2 * sum(matches) > len(matches)]
        grouping.groups[image.doc_id] = min(joined) if joined else image.doc_id
    return grouping


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


class DuplicateMatcher:
    """Sets ``duplicate_group`` on a batch's embedded items (after the processor chain, which
    computes ``phash`` when the ``phash`` processor is configured): one ``msearch`` per batch."""

    def __init__(self, settings: VitrineSettings, es: Elasticsearch):
        self.settings = settings
        self.rule = MatchRule.from_settings(settings)
        self.es = es
        self._recent: deque[tuple[float, NewImage, str]] = deque()  # (time, image, its group)
        self._lock = threading.Lock()

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
        if grouping.backfill:
            self._backfill(grouping.backfill, indices)
        for item, image in zip(ready, images, strict=True):
            item.duplicate_group = grouping.groups[image.doc_id]

    def _recent_candidates(self, images: Sequence[NewImage]) -> list[list[Candidate]]:
        """The images grouped in the last ``RECENT_WINDOW_S`` seconds nearest each new image
        (not searchable yet), as candidates; older ones are forgotten."""
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
        k = self.settings.duplicate_candidates
        return [
            [
                Candidate(
                    known[j].doc_id, groups[j], known[j].phash, float(row[j]), known[j].fingerprint
                )
                for j in np.argsort(-row)[:k]
            ]
            for row in cosines
        ]

    def _search(
        self, images: Sequence[NewImage], indices: Sequence[str]
    ) -> tuple[list[list[Candidate]], dict[str, str | None]]:
        target = ",".join(indices)
        searches = match_searches(
            [image.vector for image in images],
            [image.doc_id for image in images],
            k=self.settings.duplicate_candidates,
        )
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
        candidates = [
            [Candidate.from_hit(hit) for hit in response["hits"]["hits"]]
            for response in responses[:-1]
        ]
        previous = {
            hit["_id"]: hit.get("_source", {}).get("duplicate_group")
            for hit in responses[-1]["hits"]["hits"]
        }
        return candidates, previous

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
