"""Least-privilege Elasticsearch roles and API keys: one credential per kind of process.

The roles are data (``es_mappings/security_roles.json``): ``admin`` sets up templates and
indices, ``worker`` writes product documents and ingest-errors records only, ``search`` only
reads. The builders fill in the deployment's alias and errors index and return plain dicts;
``setup_security`` is the IO that stores the roles and creates an API key for each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elasticsearch import Elasticsearch

from pipeline.es.mappings import es_mapping_file
from pipeline.settings import VitrineSettings

ROLES = ("admin", "worker", "search")


def role_name(alias: str, role: str) -> str:
    """Roles are namespaced by the alias, so several deployments share one cluster."""
    return f"{alias}-{role}"


def role_descriptor(role: str, *, alias: str, errors_index: str) -> dict[str, Any]:
    """The body of ``PUT _security/role/<name>`` (also an API key's role descriptor)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    body = es_mapping_file("security_roles.json")[role]
    for grant in body["indices"]:
        grant["names"] = [
            name.format(alias=alias, errors_index=errors_index) for name in grant["names"]
        ]
    return body


def role_descriptors(settings: VitrineSettings) -> dict[str, dict[str, Any]]:
    """``{role name: descriptor}`` for every role of the deployment behind ``settings``."""
    return {
        role_name(settings.index_alias, role): role_descriptor(
            role, alias=settings.index_alias, errors_index=settings.errors_index
        )
        for role in ROLES
    }


@dataclass(frozen=True)
class ApiKey:
    role: str
    id: str
    encoded: str  # the value of VITRINE_ES_API_KEY


def setup_security(
    es: Elasticsearch, settings: VitrineSettings, *, expiration: str | None = None
) -> dict[str, ApiKey]:
    """Store (create or update) the roles and create a new API key for each; ``es`` must be
    allowed to manage security (e.g. the ``elastic`` user). Returns ``{role: key}``."""
    keys = {}
    for role in ROLES:
        name = role_name(settings.index_alias, role)
        descriptor = role_descriptor(
            role, alias=settings.index_alias, errors_index=settings.errors_index
        )
        es.security.put_role(name=name, **descriptor)
        created = es.security.create_api_key(
            name=name, role_descriptors={name: descriptor}, expiration=expiration
        )
        keys[role] = ApiKey(role, created["id"], created["encoded"])
    return keys


def remove_security(es: Elasticsearch, settings: VitrineSettings) -> None:
    """Invalidate the deployment's API keys and delete its roles."""
    for role in ROLES:
        name = role_name(settings.index_alias, role)
        es.options(ignore_status=404).security.invalidate_api_key(name=name)
        es.options(ignore_status=404).security.delete_role(name=name)
