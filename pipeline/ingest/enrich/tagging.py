"""Zero-shot tagging: label text vectors (computed once per model and taxonomy, cached) and the
pure decision of which labels an image vector gets.

A facet's label probabilities are ``softmax(logit_scale * cos(image, label))`` over its labels,
as in CLIP's zero-shot classification; a label is kept when its probability reaches the facet's
threshold (at most ``max_labels`` per facet, best first).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.encoders import Encoder, l2_normalise
from pipeline.ingest.enrich.taxonomy import CATEGORY_FACET, Taxonomy

log = logging.getLogger(__name__)

SCORE_DECIMALS = 4


@dataclass(frozen=True)
class LabelVectors:
    """Per facet: label names and their ensembled unit text vectors (one row per label)."""

    model_id: str
    digest: str
    facets: dict[str, tuple[list[str], np.ndarray]]


def compute_label_vectors(encoder: Encoder, taxonomy: Taxonomy) -> LabelVectors:
    """Embed every prompt in one call; a label's vector is the normalised mean of its prompts'."""
    spans: list[tuple[str, str, int, int]] = []
    prompts: list[str] = []
    for facet_name, facet in taxonomy.facets.items():
        for label in facet.labels:
            label_prompts = facet.prompts(label)
            spans.append((facet_name, label, len(prompts), len(prompts) + len(label_prompts)))
            prompts.extend(label_prompts)
    vectors = l2_normalise(encoder.encode_texts(prompts))
    rows: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    for facet_name, label, start, end in spans:
        names, means = rows.setdefault(facet_name, ([], []))
        names.append(label)
        means.append(vectors[start:end].mean(axis=0))
    facets = {name: (names, l2_normalise(np.stack(means))) for name, (names, means) in rows.items()}
    return LabelVectors(encoder.model_id, taxonomy.digest, facets)


_memory: dict[tuple[str, str], LabelVectors] = {}
_lock = threading.Lock()


def _cache_file(directory: Path, model_id: str, digest: str) -> Path:
    model_key = hashlib.sha256(model_id.encode()).hexdigest()[:16]
    return directory / f"labels-{model_key}-{digest[:16]}.npz"


def _read(path: Path, model_id: str, digest: str) -> LabelVectors | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["model_id"]) != model_id or str(data["digest"]) != digest:
                return None
            facets = {
                str(name): ([str(n) for n in data[f"names:{name}"]], data[f"vectors:{name}"])
                for name in data["facets"]
            }
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring unreadable label cache %s: %s", path, exc)
        return None
    return LabelVectors(model_id, digest, facets)


def _write(path: Path, vectors: LabelVectors) -> None:
    arrays: dict[str, np.ndarray] = {
        "model_id": np.array(vectors.model_id),
        "digest": np.array(vectors.digest),
        "facets": np.array(list(vectors.facets)),
    }
    for name, (names, matrix) in vectors.facets.items():
        arrays[f"names:{name}"] = np.array(names)
        arrays[f"vectors:{name}"] = matrix
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # workers may race: own file
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def label_vectors(
    encoder: Encoder, taxonomy: Taxonomy, cache_dir: Path | None = None
) -> LabelVectors:
    """The label vectors of this model and taxonomy: from memory, from ``cache_dir``, or computed
    (once per process; concurrent callers wait). Raises what ``encode_texts`` raises
    (``TextNotSupported`` for an image-only encoder)."""
    key = (encoder.model_id, taxonomy.digest)
    with _lock:
        if key in _memory:
            return _memory[key]
        path = _cache_file(cache_dir, *key) if cache_dir else None
        found = _read(path, *key) if path and path.exists() else None
        if found is None:
            found = compute_label_vectors(encoder, taxonomy)
            log.info("computed zero-shot label vectors for %s (taxonomy %s)", key[0], key[1][:12])
            if path:
                _write(path, found)
        _memory[key] = found
        return found


@dataclass(frozen=True)
class Tagging:
    """What one image vector gets; ``probabilities`` has every facet's full distribution."""

    category: str | None
    category_score: float | None
    tags: dict[str, float]  # "facet:label" -> probability, best first within a facet
    probabilities: dict[str, dict[str, float]]

    def probability(self, facet: str, label: str) -> float:
        return self.probabilities.get(facet, {}).get(label, 0.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def tag_vector(vector: np.ndarray, taxonomy: Taxonomy, vectors: LabelVectors) -> Tagging:
    """Labels at or above their facet's threshold, at most ``max_labels`` per facet."""
    query = np.asarray(vector, dtype=np.float64)
    category: tuple[str, float] | None = None
    tags: dict[str, float] = {}
    probabilities: dict[str, dict[str, float]] = {}
    for facet_name, facet in taxonomy.facets.items():
        names, matrix = vectors.facets[facet_name]
        probs = _softmax(taxonomy.logit_scale * (matrix.astype(np.float64) @ query))
        probabilities[facet_name] = {
            n: round(float(p), SCORE_DECIMALS) for n, p in zip(names, probs, strict=True)
        }
        order = np.argsort(-probs, kind="stable")[: facet.max_labels]
        chosen = [(names[i], float(probs[i])) for i in order if probs[i] >= facet.threshold]
        if facet_name == CATEGORY_FACET:
            category = chosen[0] if chosen else None
        else:
            tags.update({f"{facet_name}:{n}": round(p, SCORE_DECIMALS) for n, p in chosen})
    return Tagging(
        category=category[0] if category else None,
        category_score=round(category[1], SCORE_DECIMALS) if category else None,
        tags=tags,
        probabilities=probabilities,
    )


def category_mismatch(
    tagging: Tagging, taxonomy: Taxonomy, merchant_category: str | None, *, max_score: float
) -> bool:
    """True when the merchant's category names a taxonomy label other than the confident
    zero-shot category and the image gives that label a probability below ``max_score``.
    Categories the taxonomy does not know are never flagged."""
    label = taxonomy.category_label(merchant_category)
    if label is None or tagging.category is None or label == tagging.category:
        return False
    return tagging.probability(CATEGORY_FACET, label) < max_score
