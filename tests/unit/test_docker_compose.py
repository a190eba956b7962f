"""Static checks of docker-compose.yml, .env.example, Dockerfile and .dockerignore.

No Docker engine runs on the dev machines, so the compose stack cannot be started here: these tests
parse the file with PyYAML and apply compose's own variable interpolation (``${VAR}``,
``${VAR:-default}``, ``${VAR:?message}``, ``$$``) with the values of .env.example, so that they
check what ``docker compose`` would see. Where the compose CLI plugin exists (it needs no engine
for ``config``), ``docker compose config -q`` is run as well.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KIBANA_OBJECTS = ROOT / "es_mappings" / "kibana" / "saved_objects.ndjson"

ES_IMAGE = "docker.elastic.co/elasticsearch/elasticsearch:8.12.2"
KIBANA_IMAGE = "docker.elastic.co/kibana/kibana:8.12.2"
TORCH_PIN = "torch==2.14.1"
TORCHVISION_PIN = "torchvision==0.29.1"

EXPECTED_SERVICES = {
    "elasticsearch",
    "kibana-setup",
    "kibana",
    "kibana-objects",
    "redis",
    "setup",
    "worker",
    "api",
}
#: The "cluster" profile's services (tests/unit/test_compose_cluster.py checks them in depth).
CLUSTER_SERVICES = {
    "es-certs",
    "es01",
    "es02",
    "es03",
    "cluster-setup",
    "cluster-worker",
    "cluster-api",
    "flower",
}
ONE_SHOT_SERVICES = {"kibana-setup", "kibana-objects", "setup", "es-certs", "cluster-setup"}
LONG_RUNNING_SERVICES = (EXPECTED_SERVICES | CLUSTER_SERVICES) - ONE_SHOT_SERVICES
VITRINE_APP_SERVICES = ("setup", "worker", "api")
EXPECTED_VOLUMES = {
    "esdata",
    "kibanadata",
    "redisdata",
    "models",
    "hfcache",
    "images",
    "journal",
    "escerts",
    "es01data",
    "es02data",
    "es03data",
}
VALID_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

EXPECTED_VITRINE_ENV = {
    "VITRINE_ES_URL": "http://elasticsearch:9200",
    "VITRINE_ES_USERNAME": "elastic",
    "VITRINE_REDIS_URL": "redis://redis:6379/0",
    "VITRINE_MODEL_ARCH": "ViT-B-32",
    "VITRINE_MODEL_PRETRAINED": "laion2b_s34b_b79k",
    "VITRINE_HOME": "/root/.cache/vitrine",
}


# --------------------------------------------------------------------------------------------
# Compose-style interpolation (https://docs.docker.com/compose/environment-variables/)
# --------------------------------------------------------------------------------------------

_TEMPLATE = re.compile(
    r"""\$(?:
        (?P<escaped>\$)
      | (?P<named>[_A-Za-z][_A-Za-z0-9]*)
      | \{(?P<braced>[_A-Za-z][_A-Za-z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}
      | (?P<invalid>)
    )""",
    re.VERBOSE,
)


class InterpolationError(ValueError):
    pass


def interpolate_str(value: str, env: dict[str, str]) -> str:
    """Interpolate one string as compose does, but stricter: a variable that is not set and has
    no default is an error (compose warns and substitutes ""), and so is a ``$`` that starts no
    variable, e.g. ``$(`` (compose passes it through). Both are almost always a missing ``$$`` in
    a shell snippet meant for the container."""

    def substitute(m: re.Match[str]) -> str:
        if m.group("escaped") is not None:
            return "$"
        if m.group("invalid") is not None:
            raise InterpolationError(f"invalid interpolation at {m.start()} in {value!r}")
        name = m.group("named") or m.group("braced")
        op, arg = m.group("op"), m.group("arg") or ""
        is_set = name in env
        is_nonempty = bool(env.get(name))
        if op is None:
            if not is_set:
                raise InterpolationError(f"variable {name} is not set (in {value!r})")
            return env[name]
        if op in (":-", "-"):
            use_default = not is_nonempty if op == ":-" else not is_set
            return interpolate_str(arg, env) if use_default else env[name]
        if op in (":?", "?"):
            missing = not is_nonempty if op == ":?" else not is_set
            if missing:
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return env[name]
        # ":+" / "+": the replacement if set (non-empty), else ""
        present = is_nonempty if op == ":+" else is_set
        return interpolate_str(arg, env) if present else ""

    return _TEMPLATE.sub(substitute, value)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Interpolate every string value (not mapping keys) of a parsed compose document."""
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return node


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        env[key.strip()] = value.strip()
    return env


# --------------------------------------------------------------------------------------------
# Normalisers for compose's alternative syntaxes
# --------------------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: _scalar(v) for k, v in env.items()}


def depends_of(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(kind, source, target, read_only) for each volume entry, kind "volume" or "bind"."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            kind, source, target = entry["type"], entry.get("source", ""), entry["target"]
            read_only = bool(entry.get("read_only", False))
        else:
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        mounts.append((kind, source, target, read_only))
    return mounts


def healthcheck_cmd(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw, env_example)


@pytest.fixture(scope="module")
def compose_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# --------------------------------------------------------------------------------------------
# Interpolation helper self-test
# --------------------------------------------------------------------------------------------


def test_interpolation_helper_follows_compose_rules() -> None:
    env = {"A": "a", "EMPTY": ""}
    assert interpolate_str("$A ${A} $$A $${A}", env) == "a a $A ${A}"
    assert interpolate_str("${B:-dflt} ${EMPTY:-dflt} ${EMPTY-dflt}", env) == "dflt dflt "
    assert interpolate_str("${A:?boom} ${A:+yes} ${B:+yes}", env) == "a yes "
    with pytest.raises(InterpolationError, match="boom"):
        interpolate_str("${EMPTY:?boom}", env)
    with pytest.raises(InterpolationError):
        interpolate_str("$(seq 1 3)", env)
    with pytest.raises(InterpolationError):
        interpolate_str("${UNSET}", env)


# --------------------------------------------------------------------------------------------
# .env.example
# --------------------------------------------------------------------------------------------


def test_env_example_has_the_documented_variables(env_example: dict[str, str]) -> None:
    assert env_example["ELASTIC_PASSWORD"] == "change-me-elastic"
    assert env_example["KIBANA_PASSWORD"] == "change-me-kibana"
    assert env_example["VITRINE_MODEL_ARCH"] == "ViT-B-32"
    assert env_example["VITRINE_MODEL_PRETRAINED"] == "laion2b_s34b_b79k"
    # The passwords go into shell commands and a JSON body: keep them to a safe alphabet.
    for key in ("ELASTIC_PASSWORD", "KIBANA_PASSWORD"):
        assert re.fullmatch(r"[A-Za-z0-9_-]{6,}", env_example[key]), key


# --------------------------------------------------------------------------------------------
# Services and images
# --------------------------------------------------------------------------------------------


def test_all_services_present(compose_services: dict[str, Any]) -> None:
    default = {name for name, svc in compose_services.items() if not svc.get("profiles")}
    assert default == EXPECTED_SERVICES
    assert set(compose_services) - default == CLUSTER_SERVICES


def test_images_are_pinned(compose_services: dict[str, Any]) -> None:
    assert compose_services["elasticsearch"]["image"] == ES_IMAGE
    assert compose_services["kibana-setup"]["image"] == ES_IMAGE
    assert compose_services["kibana"]["image"] == KIBANA_IMAGE
    assert re.fullmatch(r"redis:7(\.\d+)*(-alpine)?", compose_services["redis"]["image"])
    assert re.fullmatch(
        r"curlimages/curl:\d+\.\d+\.\d+", compose_services["kibana-objects"]["image"]
    )
    for name, svc in compose_services.items():
        if "image" in svc:
            assert not svc["image"].endswith(":latest") and ":" in svc["image"], name


def test_vitrine_services_build_the_project_image(compose_services: dict[str, Any]) -> None:
    for name in VITRINE_APP_SERVICES:
        build = compose_services[name]["build"]
        assert build["context"] == "."
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert compose_services["setup"]["command"] == ["vitrine", "init-index"]
    assert compose_services["worker"]["command"] == ["vitrine", "worker", "--concurrency", "1"]
    assert compose_services["api"]["command"][:2] == ["vitrine", "serve"]
    assert (
        "--host" in compose_services["api"]["command"]
        and "0.0.0.0" in compose_services["api"]["command"]
    )


# --------------------------------------------------------------------------------------------
# Health, restart policy, dependencies
# --------------------------------------------------------------------------------------------


def test_long_running_services_have_healthchecks(compose_services: dict[str, Any]) -> None:
    for name in LONG_RUNNING_SERVICES:
        hc = compose_services[name].get("healthcheck")
        assert hc and hc.get("test"), f"{name} has no healthcheck"
        assert not hc.get("disable", False), name
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in hc, f"{name}.healthcheck.{key} missing"
        assert compose_services[name].get("restart") in {
            "unless-stopped",
            "always",
            "on-failure",
        }, name


def test_one_shot_services_do_not_restart(compose_services: dict[str, Any]) -> None:
    for name in ONE_SHOT_SERVICES:
        # Quoted in YAML: an unquoted `no` would be parsed as the boolean False.
        assert compose_services[name].get("restart") == "no", name


def test_depends_on_is_consistent(compose_services: dict[str, Any]) -> None:
    for name, svc in compose_services.items():
        for dep, condition in depends_of(svc).items():
            assert dep in compose_services, f"{name} depends on unknown service {dep}"
            assert condition in VALID_CONDITIONS, f"{name} -> {dep}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in compose_services[dep], (
                    f"{name} waits for {dep} to be healthy"
                )
            if condition == "service_completed_successfully":
                assert dep in ONE_SHOT_SERVICES, f"{name} waits for long-running {dep} to exit"

    # No cycles (compose would refuse them).
    state: dict[str, str] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "active", f"dependency cycle: {' -> '.join((*path, node))}"
        state[node] = "active"
        for dep in depends_of(compose_services[node]):
            visit(dep, (*path, node))
        state[node] = "done"

    for name in compose_services:
        visit(name, ())


def test_start_up_order(compose_services: dict[str, Any]) -> None:
    assert depends_of(compose_services["kibana-setup"]) == {"elasticsearch": "service_healthy"}
    assert depends_of(compose_services["kibana"]) == {
        "elasticsearch": "service_healthy",
        "kibana-setup": "service_completed_successfully",
    }
    assert depends_of(compose_services["kibana-objects"]) == {"kibana": "service_healthy"}
    assert depends_of(compose_services["setup"]) == {"elasticsearch": "service_healthy"}
    runtime = {
        "elasticsearch": "service_healthy",
        "redis": "service_healthy",
        "setup": "service_completed_successfully",
    }
    assert depends_of(compose_services["worker"]) == runtime
    assert depends_of(compose_services["api"]) == runtime


# --------------------------------------------------------------------------------------------
# Security and secrets
# --------------------------------------------------------------------------------------------


def test_elasticsearch_security_enabled(
    compose_services: dict[str, Any], raw: dict[str, Any]
) -> None:
    env = env_of(compose_services["elasticsearch"])
    assert env["discovery.type"] == "single-node"
    assert env["xpack.security.enabled"] == "true"
    assert env["xpack.security.http.ssl.enabled"] == "false"  # documented dev simplification
    assert env["xpack.ml.enabled"] == "false"
    assert env["ingest.geoip.downloader.enabled"] == "false"
    assert env["ES_JAVA_OPTS"] == "-Xms1g -Xmx1g"
    assert env_of(raw["services"]["elasticsearch"])["ELASTIC_PASSWORD"].startswith(
        "${ELASTIC_PASSWORD:?"
    )
    memlock = compose_services["elasticsearch"]["ulimits"]["memlock"]
    assert memlock == {"soft": -1, "hard": -1}


def test_passwords_are_required_from_the_environment(
    raw: dict[str, Any], env_example: dict[str, str]
) -> None:
    for missing in ("ELASTIC_PASSWORD", "KIBANA_PASSWORD"):
        env = {k: v for k, v in env_example.items() if k != missing}
        with pytest.raises(InterpolationError, match=missing):
            interpolate(raw, env)
        with pytest.raises(InterpolationError, match=missing):
            interpolate(raw, {**env, missing: ""})


def test_no_password_is_hardcoded(env_example: dict[str, str]) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for key in ("ELASTIC_PASSWORD", "KIBANA_PASSWORD"):
        assert env_example[key] not in text, f"{key}'s example value is hard-coded"


def test_passwords_reach_the_right_services(
    compose_services: dict[str, Any], env_example: dict[str, str]
) -> None:
    elastic_pw, kibana_pw = env_example["ELASTIC_PASSWORD"], env_example["KIBANA_PASSWORD"]
    assert env_of(compose_services["elasticsearch"])["ELASTIC_PASSWORD"] == elastic_pw

    kibana = env_of(compose_services["kibana"])
    assert kibana["ELASTICSEARCH_HOSTS"] == "http://elasticsearch:9200"
    assert kibana["ELASTICSEARCH_USERNAME"] == "kibana_system"
    assert kibana["ELASTICSEARCH_PASSWORD"] == kibana_pw

    setup = env_of(compose_services["kibana-setup"])
    assert setup["ELASTIC_PASSWORD"] == elastic_pw and setup["KIBANA_PASSWORD"] == kibana_pw
    script = " ".join(compose_services["kibana-setup"]["command"])
    assert "/_security/user/kibana_system/_password" in script
    assert '-u "elastic:${ELASTIC_PASSWORD}"' in script  # expanded in the container
    assert "${KIBANA_PASSWORD}" in script

    for name in VITRINE_APP_SERVICES:
        assert env_of(compose_services[name])["VITRINE_ES_PASSWORD"] == elastic_pw


def test_healthchecks_expand_variables_in_the_container(compose_services: dict[str, Any]) -> None:
    es = healthcheck_cmd(compose_services["elasticsearch"])
    assert '-u "elastic:${ELASTIC_PASSWORD}"' in es
    assert "/_cluster/health?wait_for_status=yellow&timeout=5s" in es
    assert "localhost:5601/api/status" in healthcheck_cmd(compose_services["kibana"])
    assert healthcheck_cmd(compose_services["redis"]) == "CMD redis-cli ping"
    worker = healthcheck_cmd(compose_services["worker"])
    assert "celery -A workers.app inspect ping -d celery@$HOSTNAME" in worker
    api = healthcheck_cmd(compose_services["api"])
    assert "urllib" in api and "http://localhost:8000/healthz" in api


# --------------------------------------------------------------------------------------------
# Scaling, ports, volumes
# --------------------------------------------------------------------------------------------


def test_worker_is_scalable(compose_services: dict[str, Any]) -> None:
    worker = compose_services["worker"]
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert not worker.get("ports")
    assert worker["deploy"]["resources"]["limits"]["memory"] == "3g"


def test_ports_bind_to_localhost(compose_services: dict[str, Any]) -> None:
    published = {}
    for name, svc in compose_services.items():
        for port in svc.get("ports") or []:
            assert isinstance(port, str), f"{name}: quote port mappings ({port!r})"
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
            published[name] = port
    assert published == {
        "elasticsearch": "127.0.0.1:9200:9200",
        "kibana": "127.0.0.1:5601:5601",
        "redis": "127.0.0.1:6379:6379",
        "api": "127.0.0.1:8000:8000",
        "es01": "127.0.0.1:9201:9200",
        "cluster-api": "127.0.0.1:8001:8000",
        "flower": "127.0.0.1:5555:5555",
    }


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for kind, source, _target, _ro in volume_mounts(svc):
            if kind == "volume":
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    assert declared == EXPECTED_VOLUMES
    assert used == declared


def test_bind_mounts_exist(compose_services: dict[str, Any]) -> None:
    for name, svc in compose_services.items():
        for kind, source, _target, _ro in volume_mounts(svc):
            if kind == "bind":
                assert source.startswith("./"), f"{name}: bind mount {source} not repo-relative"
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_kibana_objects_imports_the_mounted_file(compose_services: dict[str, Any]) -> None:
    svc = compose_services["kibana-objects"]
    mounts = [m for m in volume_mounts(svc) if m[0] == "bind"]
    assert len(mounts) == 1
    _kind, source, target, read_only = mounts[0]
    assert (ROOT / source).resolve() == KIBANA_OBJECTS.resolve()
    assert KIBANA_OBJECTS.is_file()
    assert read_only
    script = " ".join(svc.get("entrypoint") or []) + " " + " ".join(svc["command"])
    assert f"file=@{target}" in script
    assert "/api/saved_objects/_import?overwrite=true" in script
    assert "kbn-xsrf: true" in script
    assert '-u "elastic:${ELASTIC_PASSWORD}"' in script
    assert env_of(svc)["ELASTIC_PASSWORD"]


def test_data_views_match_the_indices_the_stack_writes(compose_services: dict[str, Any]) -> None:
    """The Kibana data views must name the alias / errors index that the workers write."""
    env = env_of(compose_services["worker"])
    titles = {}
    for line in KIBANA_OBJECTS.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        if obj.get("type") == "index-pattern":
            titles[obj["id"]] = obj["attributes"]["title"]
    assert titles["vitrine-products"] == env["VITRINE_INDEX_ALIAS"]
    assert titles["vitrine-ingest-errors"] == env["VITRINE_ERRORS_INDEX"]
    # The errors index must not fall under the product indices' "<alias>.*" template pattern.
    assert not fnmatch(env["VITRINE_ERRORS_INDEX"], env["VITRINE_INDEX_ALIAS"] + ".*")


# --------------------------------------------------------------------------------------------
# The Vitrine containers
# --------------------------------------------------------------------------------------------


def test_vitrine_services_share_one_environment(
    compose_services: dict[str, Any], raw: dict[str, Any]
) -> None:
    envs = [env_of(compose_services[name]) for name in VITRINE_APP_SERVICES]
    assert envs[0] == envs[1] == envs[2]
    for key, value in EXPECTED_VITRINE_ENV.items():
        assert envs[0][key] == value, key
    # Declared once, as the x-vitrine-env extension field.
    assert env_of({"environment": raw["x-vitrine-env"]}).keys() == envs[0].keys()
    raw_env = env_of({"environment": raw["x-vitrine-env"]})
    assert raw_env["VITRINE_MODEL_ARCH"] == "${VITRINE_MODEL_ARCH:-ViT-B-32}"
    assert raw_env["VITRINE_MODEL_PRETRAINED"] == "${VITRINE_MODEL_PRETRAINED:-laion2b_s34b_b79k}"
    assert raw_env["VITRINE_ES_PASSWORD"] == "${ELASTIC_PASSWORD}"


def test_vitrine_variables_are_settings_fields(compose_services: dict[str, Any]) -> None:
    """VitrineSettings ignores unknown VITRINE_* variables: a misspelt or stale name in compose
    would be silently dropped."""
    pytest.importorskip("pydantic_settings")
    from pipeline.settings import VitrineSettings

    fields = {f"VITRINE_{name.upper()}" for name in VitrineSettings.model_fields}
    for name in VITRINE_APP_SERVICES:
        unknown = {k for k in env_of(compose_services[name]) if k.startswith("VITRINE_")} - fields
        assert not unknown, f"{name}: not VitrineSettings fields: {sorted(unknown)}"


def test_pinned_index_names_are_the_settings_defaults(compose_services: dict[str, Any]) -> None:
    pytest.importorskip("pydantic_settings")
    from pipeline.settings import VitrineSettings

    env = env_of(compose_services["worker"])
    for var, field in (
        ("VITRINE_INDEX_ALIAS", "index_alias"),
        ("VITRINE_ERRORS_INDEX", "errors_index"),
    ):
        assert env[var] == VitrineSettings.model_fields[field].default, var


def test_model_defaults_apply_without_env_file(raw: dict[str, Any]) -> None:
    env = {"ELASTIC_PASSWORD": "pw-elastic", "KIBANA_PASSWORD": "pw-kibana"}
    worker = env_of(interpolate(raw, env)["services"]["worker"])
    assert worker["VITRINE_MODEL_ARCH"] == "ViT-B-32"
    assert worker["VITRINE_MODEL_PRETRAINED"] == "laion2b_s34b_b79k"


def _dockerfile_env() -> dict[str, str]:
    """ENV values of the Dockerfile (KEY=VALUE form, continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            env.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line))
    return env


def test_cache_volumes_match_the_image_paths(compose_services: dict[str, Any]) -> None:
    image_env = _dockerfile_env()
    for name in VITRINE_APP_SERVICES:
        home = env_of(compose_services[name])["VITRINE_HOME"]
        assert home == image_env["VITRINE_HOME"], name
        targets = {
            source: target for _k, source, target, _ro in volume_mounts(compose_services[name])
        }
        assert targets["models"] == f"{home}/models", name  # VitrineSettings.models_dir
        assert targets["hfcache"] == image_env["HF_HOME"], name
        assert targets["images"] == f"{home}/images", name  # VitrineSettings.images_dir
        assert targets["journal"] == f"{home}/journal", name  # VitrineSettings.journal_root


# --------------------------------------------------------------------------------------------
# Dockerfile / .dockerignore
# --------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_cpu_torch_first() -> None:
    assert DOCKERFILE.is_file()
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [rest for word, rest in instructions if word == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if TORCH_PIN in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_run]
    assert TORCHVISION_PIN in runs[torch_run]
    project_run = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_run < project_run
    assert instructions[-1] == ("CMD", '["vitrine", "--help"]')


def test_dockerfile_torch_pins_match_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "dependencies"
    ]
    assert TORCH_PIN in deps and TORCHVISION_PIN in deps


def _dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_dockerignore_keeps_secrets_and_bulk_out() -> None:
    patterns = _dockerignore_patterns()
    for required in (".git", ".venv", ".env", "*.pt", "*.tar.gz", "**/__pycache__"):
        assert required in patterns, required


def test_dockerfile_copy_sources_exist_and_are_not_ignored() -> None:
    patterns = [p for p in _dockerignore_patterns() if not p.startswith("!")]
    sources = []
    for word, rest in _instructions():
        if word == "COPY" and "--from" not in rest:
            sources += rest.split()[:-1]
    assert {s.rstrip("/") for s in sources} >= {
        "pyproject.toml",
        "README.md",
        "pipeline",
        "workers",
        "es_mappings",
    }
    for src in sources:
        path = src.rstrip("/")
        assert (ROOT / path).exists(), f"COPY {src}: missing from the build context"
        assert not any(fnmatch(path, p) for p in patterns), f"COPY {src}: excluded by .dockerignore"


# --------------------------------------------------------------------------------------------
# The real compose CLI, where there is one
# --------------------------------------------------------------------------------------------


def _compose_cli() -> list[str] | None:
    """The compose v2 CLI: the `docker compose` plugin, else a standalone `docker-compose` v2
    binary on PATH (compose v1 is not accepted). None if neither is there."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        try:
            result = subprocess.run(
                [*cli, "version", "--short"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2."):
            return cli
    return None


COMPOSE_CLI = _compose_cli()


@pytest.mark.skipif(
    COMPOSE_CLI is None,
    reason="no compose v2 CLI (`docker compose` plugin or `docker-compose` v2 binary); "
    "`config` needs no Docker engine, but it needs the CLI",
)
def test_docker_compose_config(env_example: dict[str, str]) -> None:
    assert COMPOSE_CLI is not None
    # .env.example's values win over any developer .env in the project directory.
    env = {**os.environ, **env_example}
    result = subprocess.run(
        [*COMPOSE_CLI, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
