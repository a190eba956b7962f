"""The zero-shot taxonomy of ``auto_tag``: facets, labels, prompt templates and thresholds.

Loaded from YAML (the shipped ``taxonomy.yaml`` unless ``settings.taxonomy_path`` names
another). Its ``digest`` covers everything that changes a label's text embedding or a tagging
decision, so cached label embeddings are keyed by ``(model_id, digest)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")
CATEGORY_FACET = "category"


def normalise_label(text: str) -> str:
    """Lower case, single spaces: how labels, aliases and merchant categories are compared."""
    return re.sub(r"\s+", " ", text.strip().lower())


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    phrases: list[str] = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _phrase_list(cls, data: Any) -> Any:
        """A bare list of phrases is shorthand for ``{"phrases": [...]}``."""
        return {"phrases": data} if isinstance(data, list) else data


class Facet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(ge=0.0, le=1.0)
    max_labels: int = Field(1, ge=1)
    templates: list[str] = Field(min_length=1)
    labels: dict[str, Label] = Field(min_length=2)

    @field_validator("templates")
    @classmethod
    def _one_placeholder(cls, templates: list[str]) -> list[str]:
        for template in templates:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}'")
        return templates

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, Label]) -> dict[str, Label]:
        for name in labels:
            if name != normalise_label(name) or ":" in name:
                raise ValueError(f"label {name!r} must be lower case without ':'")
        return labels

    def prompts(self, label: str) -> list[str]:
        """Every template filled with every phrase of ``label`` (prompt ensembling)."""
        return [t.format(p) for t in self.templates for p in self.labels[label].phrases]


class Taxonomy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    logit_scale: float = Field(100.0, gt=0)
    facets: dict[str, Facet] = Field(min_length=1)

    @field_validator("facets")
    @classmethod
    def _one_category(cls, facets: dict[str, Facet]) -> dict[str, Facet]:
        category = facets.get(CATEGORY_FACET)
        if category is not None and category.max_labels != 1:
            raise ValueError("the 'category' facet gives one label: max_labels must be 1")
        return facets

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON form."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def category_label(self, merchant_category: str | None) -> str | None:
        """The category label a merchant's category names (label, phrase or alias), if any."""
        facet = self.facets.get(CATEGORY_FACET)
        if facet is None or not merchant_category:
            return None
        wanted = normalise_label(merchant_category)
        for name, label in facet.labels.items():
            names = {name, *label.aliases, *(re.sub(r"^(a|an) ", "", p) for p in label.phrases)}
            if wanted in {normalise_label(n) for n in names}:
                return name
        return None


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Read and validate a taxonomy file (the shipped one by default)."""
    source = path or DEFAULT_TAXONOMY
    return Taxonomy.model_validate(yaml.safe_load(source.read_text(encoding="utf-8")))
