"""The one way Vitrine fetches a URL it was given (merchant and query image URLs): guarded
against server-side request forgery and against hosts that answer slowly or endlessly.

Invariants:

- Only ``http`` and ``https``, on every hop; at most ``FetchPolicy.max_redirects`` redirects.
- The host name is resolved once, at connect time; every address it resolves to must be allowed
  (``FetchPolicy.allows``), and the TCP connection goes to that checked address, so a DNS answer
  that changes between the check and the connection changes nothing. TLS (SNI and certificate)
  and the ``Host`` header still use the name.
- Refused unless allow-listed: loopback, private, shared (CGNAT), link-local, multicast,
  reserved, unspecified and documentation addresses, IPv6 addresses embedding such an IPv4
  address. Cloud metadata addresses are refused even inside an allow-listed network.
- One deadline covers the whole fetch (name resolution, connections, redirects, every read), so
  a host that drips one byte at a time fails at the deadline; the body is streamed and abandoned
  once it passes the size cap.
- A refusal reads the same for every refused target, and nothing is connected before it, so
  errors never tell an open internal port from a closed one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = [
    (b"User-Agent", b"vitrine-image-fetch/1"),
    (b"Accept", b"image/*"),
    (b"Accept-Encoding", b"identity"),  # no compressed bodies: the size cap is the real size
]
# Instance metadata services (AWS, ECS, GCP, Azure, Oracle, Alibaba): credentials live there.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "192.0.0.192", "100.100.100.200", "fd00:ec2::254")
)
# Not globally reachable, whatever a given Python version's ``is_global`` says.
_REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_NAME = re.compile(
    r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)


class FetchError(Exception):
    """A URL that could not be fetched. ``reason`` is one of the image reasons
    (``fetch_refused``, ``fetch_timeout``, ``fetch_failed``, ``not_found``, ``too_large``,
    ``invalid_source``); ``transient`` says whether trying again later may help."""

    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient


def _unwrap(ip: Address) -> Address:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is that IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public(ip: Address) -> bool:
    """Whether ``ip`` is a globally reachable unicast address (where public image hosts live)."""
    ip = _unwrap(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        )
        if embedded is not None and not is_public(embedded):
            return False
    return (
        ip.is_global
        and not (
            ip.is_private
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
        )
        and ip not in METADATA_ADDRESSES
        and not any(ip in net for net in _REFUSED_NETWORKS if net.version == ip.version)
    )


@dataclass(frozen=True)
class FetchPolicy:
    """Where fetches may go besides public addresses: allow-listed networks and host names
    (``images.internal``, or ``*.cdn.internal`` for its subdomains), for internal image stores."""

    networks: tuple[Network, ...] = ()
    hosts: tuple[str, ...] = ()
    max_redirects: int = 5

    @classmethod
    def parse(cls, entries: Iterable[str], *, max_redirects: int = 5) -> FetchPolicy:
        """Entries are CIDRs, addresses or host names; raises ``ValueError`` for anything else."""
        networks: list[Network] = []
        hosts: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_NAME.match(entry) or len(entry) > 253:
                raise ValueError(f"fetch allow-list entry {raw!r} is not a CIDR, address or host")
            hosts.append(entry)
        if max_redirects < 0:
            raise ValueError("max_redirects must be 0 or more")
        return cls(tuple(networks), tuple(hosts), max_redirects)

    @classmethod
    def from_settings(cls, settings: Any) -> FetchPolicy:
        return cls.parse(settings.fetch_allow, max_redirects=settings.fetch_max_redirects)

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (a name or an address literal) is allow-listed, without resolving it."""
        name = host.strip("[]").lower().rstrip(".")
        try:
            ip = _unwrap(ipaddress.ip_address(name))
        except ValueError:
            return any(
                name.endswith(pattern[1:]) if pattern.startswith("*.") else name == pattern
                for pattern in self.hosts
            )
        return ip not in METADATA_ADDRESSES and any(ip in net for net in self.networks)

    def allows(self, host: str, ip: Address) -> bool:
        """Whether a connection to ``ip``, which ``host`` resolved to, may be made."""
        ip = _unwrap(ip)
        if ip in METADATA_ADDRESSES:
            return False
        return is_public(ip) or any(ip in net for net in self.networks) or self.host_allowed(host)

    def url_allowed(self, url: str) -> bool:
        """Whether ``url``'s host is allow-listed by name or address (no DNS involved)."""
        try:
            host = httpx.URL(url).host
        except (httpx.InvalidURL, TypeError):
            return False
        return bool(host) and self.host_allowed(host)


def _refused(url: str) -> FetchError:
    return FetchError(
        "fetch_refused", f"{_short(url)}: refused, the host is internal or not allowed"
    )


def _short(url: str) -> str:
    return url if len(url) <= 200 else url[:200] + "..."


def _resolve(host: str, port: int, deadline: float) -> list[Address]:
    """Every address ``host`` resolves to, without waiting past ``deadline``.

    ``getaddrinfo`` cannot be interrupted, so a name server that never answers leaves a daemon
    thread behind until the resolver's own time-out; the fetch itself ends at its deadline."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            box["error"] = exc

    thread = threading.Thread(target=lookup, name="vitrine-resolve", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        raise httpcore.ConnectTimeout("name resolution timed out")
    if "error" in box:
        raise httpcore.ConnectError("name does not resolve") from box["error"]
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in box["infos"]]


def _left(deadline: float, timeout: float | None, exc: type[Exception]) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("deadline reached")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the fetch's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _left(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, left), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks, then connects to the checked address (never to the name)."""

    def __init__(self, policy: FetchPolicy, deadline: float, url: str) -> None:
        self._policy = policy
        self._deadline = deadline
        self._url = url  # for the refusal message
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = [_unwrap(ip) for ip in _resolve(host, port, self._deadline)]
        if not addresses or not all(self._policy.allows(host, ip) for ip in addresses):
            raise _refused(self._url)
        error: Exception = httpcore.ConnectError("no address")
        for ip in dict.fromkeys(addresses):
            try:
                stream = self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=_left(self._deadline, timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise _refused(self._url)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _parse(url: str) -> httpx.URL:
    if len(url) > MAX_URL_LENGTH:
        raise FetchError("invalid_source", f"URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchError("invalid_source", f"invalid URL {_short(url)}: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise FetchError("invalid_source", f"unsupported URL scheme {parsed.scheme!r}")
    if not parsed.host:
        raise FetchError("invalid_source", f"URL has no host: {_short(url)}")
    return parsed


def _check_status(url: str, status: int) -> None:
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise FetchError("not_found", f"{_short(url)} returned HTTP {status}")
    transient = status == 429 or status >= 500
    raise FetchError("fetch_failed", f"{_short(url)} returned HTTP {status}", transient=transient)


def _header(response: httpcore.Response, name: bytes) -> bytes | None:
    return next((v.strip() for k, v in response.headers if k.lower() == name), None)


def _read(url: str, response: httpcore.Response, max_bytes: int) -> bytes:
    length = _header(response, b"content-length") or b""
    if length.isdigit() and int(length) > max_bytes:
        raise FetchError(
            "too_large", f"{_short(url)} declares {int(length):,} bytes, limit is {max_bytes:,}"
        )
    chunks, total = [], 0
    for chunk in response.iter_stream():
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(
                "too_large", f"{_short(url)} sent over the limit of {max_bytes:,} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def fetch(
    url: str,
    *,
    policy: FetchPolicy,
    max_bytes: int,
    timeout_s: float,
    deadline: float | None = None,
) -> bytes:
    """GET ``url`` under ``policy``: at most ``max_bytes`` of body, finished within
    ``timeout_s`` (or by ``deadline``, a ``time.monotonic()`` value, if that comes first).

    Raises ``FetchError``. Each call uses its own connections (none is shared with another
    fetch, so none outlives the deadline it was checked under).
    """
    start = time.monotonic()
    end = start + timeout_s if deadline is None else min(start + timeout_s, deadline)
    current = _parse(url)
    backend = _GuardedBackend(policy, end, url)
    try:
        with httpcore.ConnectionPool(network_backend=backend, retries=0) as pool:
            for _ in range(policy.max_redirects + 1):
                target = httpcore.URL(
                    scheme=current.raw_scheme,
                    host=current.raw_host,
                    port=current.port,
                    target=current.raw_path,
                )
                headers = [(b"Host", current.netloc), *_HEADERS]
                with pool.stream("GET", target, headers=headers) as response:
                    location = _header(response, b"location")
                    if response.status in _REDIRECTS and location:
                        current = _parse(str(current.join(location.decode("latin-1"))))
                        continue
                    _check_status(url, response.status)
                    return _read(url, response, max_bytes)
            raise FetchError(
                "fetch_failed", f"{_short(url)} redirected more than {policy.max_redirects} times"
            )
    except httpcore.TimeoutException as exc:
        raise FetchError(
            "fetch_timeout",
            f"{_short(url)} did not finish within {max(0.0, end - start):.3g}s",
            transient=True,
        ) from exc
    except httpcore.UnsupportedProtocol as exc:
        raise FetchError("invalid_source", f"invalid URL {_short(url)}") from exc
    except (httpcore.ConnectError, httpcore.NetworkError) as exc:
        raise FetchError(
            "fetch_failed", f"{_short(url)}: cannot connect to the host", transient=True
        ) from exc
    except httpcore.ProtocolError as exc:
        raise FetchError(
            "fetch_failed", f"{_short(url)}: the host's answer is not valid HTTP", transient=True
        ) from exc
