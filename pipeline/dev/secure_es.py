"""Security and TLS for the local Elasticsearch, chosen by an ``https://`` ``VITRINE_ES_URL``.

The secure node is a second instance of the same install: its own config folder
(``ES_PATH_CONF``), data and logs under ``<services>/es-secure``, so it can run beside the plain
one. ``prepare`` creates once a CA and a node certificate for 127.0.0.1/localhost
(``elasticsearch-certutil``), a random password for the ``elastic`` user (the keystore's
bootstrap password) and the file a client needs (``es-client.env``); it returns the
``elasticsearch.yml`` lines that turn on security with TLS on HTTP and transport.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from pipeline.settings import VitrineSettings

ELASTIC_USER = "elastic"
_TLS_FILES = {"ca.crt": "ca/ca.crt", "node.crt": "node/node.crt", "node.key": "node/node.key"}

#: ``elasticsearch.yml`` lines of the secure node: security, TLS on HTTP and between nodes.
SECURITY_SETTINGS = [
    "xpack.security.enabled: true",
    *(
        f"xpack.security.{layer}.ssl.{line}"
        for layer in ("http", "transport")
        for line in (
            "enabled: true",
            "certificate: certs/node.crt",
            "key: certs/node.key",
            "certificate_authorities: [certs/ca.crt]",
        )
    ),
    "xpack.security.transport.ssl.verification_mode: certificate",
]


def is_secure(settings: VitrineSettings) -> bool:
    return urlparse(settings.es_url).scheme == "https"


def instance_dir(settings: VitrineSettings) -> Path:
    return settings.services_dir / "es-secure"


def ca_cert(settings: VitrineSettings) -> Path:
    """The CA that signed the node's certificate (``VITRINE_ES_CA_CERTS``)."""
    return instance_dir(settings) / "tls" / "ca.crt"


def client_env_file(settings: VitrineSettings) -> Path:
    """``VITRINE_ES_*`` lines for a client of the secure node (``set -a; . <file>``)."""
    return instance_dir(settings) / "es-client.env"


def elastic_password(settings: VitrineSettings) -> str | None:
    path = instance_dir(settings) / "tls" / "elastic.password"
    return path.read_text().strip() if path.exists() else None


def status_options(settings: VitrineSettings) -> dict:
    """httpx options (CA, ``elastic`` credentials) for probing the local secure node."""
    password = elastic_password(settings)
    if not is_secure(settings) or password is None:
        return {}
    return {
        "verify": ssl.create_default_context(cafile=ca_cert(settings)),
        "auth": (ELASTIC_USER, password),
    }


def prepare(settings: VitrineSettings, home: Path, config: Path) -> list[str]:
    """Create what the secure node needs (once) in ``config``; returns its security settings."""
    tls = instance_dir(settings) / "tls"
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (config / "jvm.options").exists():
        shutil.copytree(
            home / "config",
            config,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("elasticsearch.keystore", "elasticsearch.yml"),
        )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ES_PATH_CONF": str(config)}
    if not (tls / "node.key").exists():
        _create_certificates(home, tls, env)
    (config / "certs").mkdir(exist_ok=True)
    for name in _TLS_FILES:
        shutil.copyfile(tls / name, config / "certs" / name)
    password = elastic_password(settings)
    if password is None:  # first start: before the security index exists
        password = secrets.token_urlsafe(24)
        _set_bootstrap_password(home, config, env, password)
        _write_private(tls / "elastic.password", password + "\n")
    _write_private(
        client_env_file(settings),
        f"VITRINE_ES_URL={settings.es_url}\n"
        f"VITRINE_ES_CA_CERTS={ca_cert(settings)}\n"
        f"VITRINE_ES_USERNAME={ELASTIC_USER}\n"
        f"VITRINE_ES_PASSWORD={password}\n",
    )
    return SECURITY_SETTINGS


def _create_certificates(home: Path, tls: Path, env: dict[str, str]) -> None:
    certutil = str(home / "bin" / "elasticsearch-certutil")
    _run([certutil, "ca", "--pem", "--silent", "--out", str(tls / "ca.zip")], env)
    with zipfile.ZipFile(tls / "ca.zip") as archive:
        archive.extractall(tls / "unpacked")
    ca = tls / "unpacked" / "ca"
    _run(
        [
            certutil, "cert", "--pem", "--silent", "--name", "node",
            "--ca-cert", str(ca / "ca.crt"), "--ca-key", str(ca / "ca.key"),
            "--ip", "127.0.0.1", "--dns", "localhost", "--out", str(tls / "node.zip"),
        ],
        env,
    )  # fmt: skip
    with zipfile.ZipFile(tls / "node.zip") as archive:
        archive.extractall(tls / "unpacked")
    for name, member in {**_TLS_FILES, "ca.key": "ca/ca.key"}.items():
        (tls / "unpacked" / member).rename(tls / name)
    shutil.rmtree(tls / "unpacked")
    for archive_path in (tls / "ca.zip", tls / "node.zip"):
        archive_path.unlink()


def _set_bootstrap_password(home: Path, config: Path, env: dict[str, str], password: str) -> None:
    keystore = str(home / "bin" / "elasticsearch-keystore")
    if not (config / "elasticsearch.keystore").exists():
        _run([keystore, "create"], env)
    _run([keystore, "add", "--stdin", "--force", "bootstrap.password"], env, stdin=password)


def _run(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> None:
    """Run an Elasticsearch tool; ``CalledProcessError`` (with its stderr) if it fails."""
    subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, check=True)


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
