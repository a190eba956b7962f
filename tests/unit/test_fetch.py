"""The fetch guard (``pipeline.fetch``): address policy, odd spellings, allow-lists, redirects,
pinned connections, the whole-fetch deadline.

Network traffic goes only to a server on 127.0.0.1. Every connection the guard opens is recorded
(``connections``), and one to any other address fails the test before it is made: refused
targets are proven refused by the absence of any connection.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import pytest

from pipeline.fetch import FetchError, FetchPolicy, fetch, is_public
from pipeline.settings import VitrineSettings
from tests.fetch_servers import FetchTestServer, closed_port

IMAGE = b"\x89PNG pretend image bytes" * 10
LOCAL = FetchPolicy.parse(["127.0.0.1"])
NOBODY = FetchPolicy()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Addresses the guard connects to; anything but loopback fails before connecting."""
    made: list[str] = []
    real = httpcore.SyncBackend.connect_tcp

    def guarded(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        assert ipaddress.ip_address(host).is_loopback, f"test tried to connect to {host}"
        made.append(host)
        return real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", guarded)
    return made


@pytest.fixture(scope="module")
def server() -> Iterator[FetchTestServer]:
    srv = FetchTestServer(drip_interval_s=0.2)
    srv.images["ok"] = IMAGE
    yield srv
    srv.close()


def get(url: str, policy: FetchPolicy = NOBODY, **kwargs: Any) -> bytes:
    options = {"max_bytes": 100_000, "timeout_s": 5.0, **kwargs}
    return fetch(url, policy=policy, **options)


def refusal(url: str, policy: FetchPolicy = NOBODY) -> FetchError:
    with pytest.raises(FetchError) as info:
        get(url, policy)
    return info.value


# --- which addresses are public -----------------------------------------------------------------

REFUSED_ADDRESSES = [
    "127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.1.1", "169.254.169.254", "169.254.170.2", "100.64.0.1", "100.100.100.200",
    "192.0.0.192", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "255.255.255.255", "198.18.0.1", "192.0.2.1", "203.0.113.9",
    "::1", "::", "fc00::1", "fd00:ec2::254", "fe80::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "2002:7f00:1::1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
]  # fmt: skip
PUBLIC_ADDRESSES = ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_internal_and_special_addresses_are_not_public(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_public(ip)
    assert not NOBODY.allows("example.com", ip)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_are_allowed(address: str) -> None:
    assert NOBODY.allows("example.com", ipaddress.ip_address(address))


def test_allow_list_opens_networks_and_host_names_but_never_metadata() -> None:
    policy = FetchPolicy.parse(["10.0.0.0/8", "[fd00::/8]", "images.internal", "*.cdn.internal"])
    assert policy.allows("any", ipaddress.ip_address("10.20.30.40"))
    assert policy.allows("any", ipaddress.ip_address("::ffff:10.20.30.40"))
    assert policy.allows("any", ipaddress.ip_address("fd12::1"))
    assert not policy.allows("any", ipaddress.ip_address("192.168.0.1"))
    assert policy.allows("images.internal", ipaddress.ip_address("192.168.0.1"))
    assert policy.allows("Images.Internal.", ipaddress.ip_address("127.0.0.1"))
    assert policy.allows("a.cdn.internal", ipaddress.ip_address("172.16.0.9"))
    assert not policy.allows("cdn.internal", ipaddress.ip_address("172.16.0.9"))
    assert not policy.allows("evilcdn.internal", ipaddress.ip_address("172.16.0.9"))
    # Metadata endpoints stay refused, even by name or inside an allow-listed network.
    wide = FetchPolicy.parse(["169.254.0.0/16", "fd00::/8", "metadata.internal"])
    for address in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert not wide.allows("metadata.internal", ipaddress.ip_address(address))
    assert wide.allows("x", ipaddress.ip_address("169.254.1.1"))


@pytest.mark.parametrize("entry", ["not a host", "http://x/", "10.0.0.0/33", "a..b", "-x.com"])
def test_bad_allow_list_entries_are_refused_at_start_up(entry: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        FetchPolicy.parse([entry])
    with pytest.raises(ValueError, match="allow-list entry"):
        VitrineSettings(fetch_allow=[entry])


def test_settings_take_a_comma_separated_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITRINE_FETCH_ALLOW", "10.0.0.0/8, images.internal")
    settings = VitrineSettings()
    assert settings.fetch_allow == ["10.0.0.0/8", "images.internal"]
    assert VitrineSettings(**{"fetch_allow": settings.to_env()["VITRINE_FETCH_ALLOW"]}) == settings
    policy = FetchPolicy.from_settings(settings)
    assert policy.url_allowed("https://images.internal/a.jpg")
    assert policy.url_allowed("http://10.1.1.1:8080/a.jpg")
    assert not policy.url_allowed("http://127.0.0.1/a.jpg")
    assert not policy.url_allowed("not a url at all")


# --- refusals, before any connection ------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/img/ok",
    "http://127.1:{port}/img/ok",
    "http://2130706433:{port}/img/ok",
    "http://0x7f000001:{port}/img/ok",
    "http://017700000001:{port}/img/ok",
    "http://[::1]:{port}/img/ok",
    "http://[::ffff:127.0.0.1]:{port}/img/ok",
    "http://localhost:{port}/img/ok",
    "http://LOCALHOST:{port}/img/ok",
    "http://0.0.0.0:{port}/img/ok",
    "https://127.0.0.1:{port}/img/ok",
]
OTHER_INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://10.0.0.1/a.jpg",
    "http://192.168.0.1:8080/a.jpg",
    "http://172.16.0.1/a.jpg",
    "http://[fe80::1]/a.jpg",
    "http://[fc00::1]/a.jpg",
    "http://100.100.100.200/latest/meta-data/",
    "http://224.0.0.1/a.jpg",
]


@pytest.mark.parametrize("template", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_refused(
    template: str, server: FetchTestServer, connections: list[str]
) -> None:
    err = refusal(template.format(port=server.port))
    assert (err.reason, err.transient) == ("fetch_refused", False)
    assert connections == []


@pytest.mark.parametrize("url", OTHER_INTERNAL)
def test_private_link_local_and_metadata_targets_are_refused(
    url: str, connections: list[str]
) -> None:
    err = refusal(url, LOCAL)  # allow-listing 127.0.0.1 opens nothing else
    assert err.reason == "fetch_refused"
    assert connections == []


def test_refusals_do_not_tell_open_ports_from_closed_ones(
    server: FetchTestServer, connections: list[str]
) -> None:
    open_url, closed_url = server.url("/img/ok"), f"http://127.0.0.1:{closed_port()}/img/ok"
    messages = {
        refusal(url).message.replace(url, "<url>")
        for url in (open_url, closed_url, "http://10.0.0.1/", "http://[::1]:9/")
    }
    assert messages == {"<url>: refused, the host is internal or not allowed"}
    assert connections == []


def test_a_name_resolving_to_any_internal_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, connections: list[str]
) -> None:
    answers = [("93.184.216.34", 80), ("10.0.0.7", 80)]  # one public, one private answer
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in answers]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: infos)
    assert refusal("http://mixed.example/a.jpg").reason == "fetch_refused"
    assert connections == []


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://x/", "http:///a.jpg"]
)
def test_only_http_and_https_urls(url: str, connections: list[str]) -> None:
    assert refusal(url).reason == "invalid_source"
    assert connections == []


# --- allow-listed hosts are reachable -----------------------------------------------------------


def test_allow_listed_address_and_host_name_are_fetched(
    server: FetchTestServer, connections: list[str]
) -> None:
    assert get(server.url("/img/ok"), LOCAL) == IMAGE
    by_name = FetchPolicy.parse(["localhost"])
    assert get(server.url("/img/ok", host="localhost"), by_name) == IMAGE
    assert refusal(server.url("/img/ok"), by_name).reason == "fetch_refused"  # not by address
    assert connections == ["127.0.0.1", "127.0.0.1"]


def test_connection_goes_to_the_checked_address_with_the_name_as_host(
    monkeypatch: pytest.MonkeyPatch, server: FetchTestServer, connections: list[str]
) -> None:
    """DNS rebinding: the name is resolved once; a later answer is never used."""
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2"])
    lookups: list[str] = []
    real = socket.getaddrinfo

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "images.test":  # the socket layer resolving the checked address literal
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    policy = FetchPolicy.parse(["127.0.0.1/32"])
    assert get(f"http://images.test:{server.port}/img/ok", policy) == IMAGE
    assert lookups == ["images.test"] and connections == ["127.0.0.1"]
    assert server.requests[-1] == ("/img/ok", f"images.test:{server.port}")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    """An https server on 127.0.0.1 whose self-signed certificate is for ``images.test`` only;
    yields it, the server names (SNI) its clients asked for, and the certificate file."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    srv = FetchTestServer(tls=context)
    srv.images["ok"] = IMAGE
    yield srv, names, cert
    srv.close()


def test_tls_uses_the_name_while_connecting_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch,
    tls_server: tuple[Any, ...],
    connections: list[str],
) -> None:
    server, names, cert = tls_server
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, *a, **k: (
            [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
            if host == "images.test"
            else real(host, port, *a, **k)
        ),
    )
    trusting = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(httpcore._sync.connection, "default_ssl_context", lambda: trusting)
    url = server.url("/img/ok", host="images.test", scheme="https")
    assert get(url, LOCAL) == IMAGE  # the certificate is checked against images.test, not the IP
    assert names == ["images.test"] and connections == ["127.0.0.1"]
    assert server.requests[-1] == ("/img/ok", f"images.test:{server.port}")


# --- redirects ----------------------------------------------------------------------------------


def test_redirects_are_checked_again(server: FetchTestServer, connections: list[str]) -> None:
    by_name = FetchPolicy.parse(["localhost"])
    start = server.url("/redirect?to={}", host="localhost")
    assert get(start.format(server.url("/img/ok", host="localhost")), by_name) == IMAGE
    for target in (
        server.url("/img/ok"),  # the same server, by an address that is not allow-listed
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
    ):
        before = len(connections)
        err = refusal(start.format(target), by_name)
        assert err.reason == "fetch_refused"
        assert connections[before:] == ["127.0.0.1"]  # only the first hop was connected
    assert refusal(start.format("file:///etc/passwd"), by_name).reason == "invalid_source"


def test_redirects_are_bounded(server: FetchTestServer) -> None:
    two = FetchPolicy.parse(["127.0.0.1"], max_redirects=2)
    assert get(server.url("/chain/2"), two) == IMAGE
    before = len(server.requests)
    err = refusal(server.url("/chain/3"), two)
    assert err.reason == "fetch_failed" and "more than 2 times" in err.message
    assert len(server.requests) - before == 3  # the first request and two redirects
    none = FetchPolicy.parse(["127.0.0.1"], max_redirects=0)
    assert refusal(server.url("/chain/1"), none).reason == "fetch_failed"


# --- deadline and size --------------------------------------------------------------------------


def test_a_drip_feeding_host_fails_at_the_deadline(server: FetchTestServer) -> None:
    """One byte every 0.2 s never trips a per-read timeout; the fetch deadline ends it."""
    server.images["big"] = IMAGE * 4  # 960 bytes: over three minutes at this rate
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        get(server.url("/drip/big"), LOCAL, timeout_s=1.0)
    assert (info.value.reason, info.value.transient) == ("fetch_timeout", True)
    assert time.monotonic() - start < 30  # bounded by the deadline, not by the body


def test_an_earlier_deadline_wins(server: FetchTestServer) -> None:
    with pytest.raises(FetchError) as info:
        get(server.url("/img/ok"), LOCAL, deadline=time.monotonic() - 1)
    assert info.value.reason == "fetch_timeout"


def test_a_resolver_that_never_answers_ends_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, connections: list[str]
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(3) or [])
    with pytest.raises(FetchError) as info:
        get("http://slow-dns.example/a.jpg", timeout_s=0.3)
    assert info.value.reason == "fetch_timeout"
    assert connections == []


def test_body_over_the_cap_is_abandoned(server: FetchTestServer) -> None:
    with pytest.raises(FetchError) as info:
        get(server.url("/img/ok"), LOCAL, max_bytes=len(IMAGE) - 1)
    assert info.value.reason == "too_large"
