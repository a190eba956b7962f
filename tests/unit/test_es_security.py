"""Least-privilege roles (es_mappings/security_roles.json) and the secure local node's settings."""

from __future__ import annotations

from fnmatch import fnmatch

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import AuthorizationException, NotFoundError

from pipeline.dev import secure_es
from pipeline.es import indexing, mappings, security
from pipeline.settings import VitrineSettings

ALIAS, ERRORS = "shop-products", "shop-ingest-errors"
PRODUCT_INDEX = mappings.product_index_name(ALIAS, "open_clip:ViT-B-32:x:512")
WRITE = {"write", "index", "create", "create_doc", "delete", "all"}
ADMIN = {"all", "manage", "create_index", "delete_index"}


def roles() -> dict[str, dict]:
    return {
        r: security.role_descriptor(r, alias=ALIAS, errors_index=ERRORS) for r in security.ROLES
    }


def privileges(role: dict, index: str) -> set[str]:
    """The privileges ``role`` grants on ``index`` (index names may be patterns)."""
    return {
        privilege
        for grant in role["indices"]
        if any(fnmatch(index, name) for name in grant["names"])
        for privilege in grant["privileges"]
    }


def test_worker_writes_product_and_errors_indices_only():
    worker = roles()["worker"]
    assert worker["cluster"] == []
    for index in (ALIAS, PRODUCT_INDEX):
        assert {"read", "write", "view_index_metadata", "maintenance"} == privileges(worker, index)
    assert privileges(worker, ERRORS) == {"index", "create_index"}
    for other in ("other-index", ".security", "shop-ingest-errors-2", "shop", "shop-products2"):
        assert privileges(worker, other) == set(), other
    assert not ADMIN & privileges(worker, PRODUCT_INDEX)  # no index creation or deletion


def test_search_reads_products_only():
    search = roles()["search"]
    assert set(search["cluster"]) <= {"monitor"}
    assert privileges(search, PRODUCT_INDEX) == {"read", "view_index_metadata"}
    assert privileges(search, ALIAS) == {"read", "view_index_metadata"}
    assert privileges(search, ERRORS) == set()
    assert not WRITE & privileges(search, PRODUCT_INDEX)


def test_admin_is_separate_and_bounded_to_the_deployment():
    admin = roles()["admin"]
    assert "manage" in admin["cluster"] and "all" not in admin["cluster"]
    assert "manage_security" not in admin["cluster"]
    for index in (ALIAS, PRODUCT_INDEX, ERRORS):
        assert "all" in privileges(admin, index)
    assert privileges(admin, "another-deployment-products-x") == set()
    for role in ("worker", "search"):
        assert not ADMIN & privileges(roles()[role], PRODUCT_INDEX)
        assert all("manage" not in c for c in roles()[role]["cluster"])


def test_role_names_and_descriptors_per_deployment():
    settings = VitrineSettings(index_alias=ALIAS, errors_index=ERRORS)
    descriptors = security.role_descriptors(settings)
    assert set(descriptors) == {f"{ALIAS}-admin", f"{ALIAS}-worker", f"{ALIAS}-search"}
    assert descriptors[f"{ALIAS}-worker"] == roles()["worker"]
    assert "_comment" not in descriptors[f"{ALIAS}-worker"]
    with pytest.raises(ValueError, match="unknown role"):
        security.role_descriptor("superuser", alias=ALIAS, errors_index=ERRORS)


def test_descriptors_are_fresh_copies():
    roles()["worker"]["indices"][0]["names"].append("*")
    assert "*" not in roles()["worker"]["indices"][0]["names"]


def test_https_url_selects_the_secure_node(tmp_path):
    plain = VitrineSettings(services_dir=tmp_path)
    secure = VitrineSettings(services_dir=tmp_path, es_url="https://127.0.0.1:9201")
    assert not secure_es.is_secure(plain) and secure_es.is_secure(secure)
    assert secure_es.status_options(plain) == {}
    assert secure_es.status_options(secure) == {}  # no password yet: not set up
    assert secure_es.ca_cert(secure).is_relative_to(secure_es.instance_dir(secure))
    lines = secure_es.SECURITY_SETTINGS
    assert "xpack.security.enabled: true" in lines
    assert "xpack.security.http.ssl.enabled: true" in lines
    assert "xpack.security.transport.ssl.enabled: true" in lines


def api_error(cls, status: int):
    node = NodeConfig("https", "127.0.0.1", 9200)
    return cls("refused", ApiResponseMeta(status, "1.1", HttpHeaders(), 0.0, node), {})


class WorkerRights:
    """A client whose credentials may read the alias but not set anything up (the worker)."""

    def __init__(self, index: str | None, model_id: str = "") -> None:
        self.index, self.model_id, self.indices = index, model_id, self

    def put_index_template(self, **_):
        raise api_error(AuthorizationException, 403)

    def get_alias(self, name: str) -> dict:
        if self.index is None:
            raise api_error(NotFoundError, 404)
        return {self.index: {"aliases": {name: {"is_write_index": True}}}}

    def get_mapping(self, index: str, **_) -> dict:
        """Aliases (read and write) resolve to the admin's index, which holds ``model_id``."""
        if self.index is None:
            raise api_error(NotFoundError, 404)
        return {self.index: {"mappings": {"_meta": {"model_id": self.model_id, "dims": 4}}}}


def test_without_admin_rights_the_worker_uses_the_admins_index():
    settings = VitrineSettings(index_alias=ALIAS, errors_index=ERRORS)
    es = WorkerRights(PRODUCT_INDEX, "m")
    assert indexing.ensure_indices(es, settings, "m", 4) == PRODUCT_INDEX  # type: ignore[arg-type]
    with pytest.raises(indexing.IndexModelMismatch):
        indexing.ensure_indices(es, settings, "other", 4)  # type: ignore[arg-type]
    with pytest.raises(indexing.IndexNotReady, match="vitrine init-index"):
        indexing.ensure_indices(WorkerRights(None), settings, "m", 4)  # type: ignore[arg-type]
