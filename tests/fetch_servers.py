"""A local HTTP server on loopback for the fetch-guard tests (unit and reliability).

Routes: ``/img/<name>`` serves ``images[name]``; ``/redirect?to=<url>`` answers 302 to ``url``;
``/chain/<n>`` redirects n times before serving ``images["ok"]``; ``/drip/<name>`` declares the
image's length, then sends one byte every ``drip_interval_s`` (a host that never times out per
read). Every request's path and ``Host`` header are recorded.
"""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up early on purpose (refusals, deadlines, size limits)


class FetchTestServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        drip_interval_s: float = 0.3,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        assert host.startswith("127."), "fetch tests only ever listen on loopback"
        self.host = host
        self.images: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.drip_interval_s = drip_interval_s
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.requests.append((self.path, self.headers.get("Host", "")))
                url = urlsplit(self.path)
                kind, _, name = url.path.strip("/").partition("/")
                if kind == "redirect":
                    self._send(302, b"", location=parse_qs(url.query)["to"][0])
                elif kind == "chain":
                    left = int(name)
                    if left > 0:
                        self._send(302, b"", location=f"/chain/{left - 1}")
                    else:
                        self._send(200, owner.images["ok"])
                elif kind == "img" and name in owner.images:
                    self._send(200, owner.images[name])
                elif kind == "drip" and name in owner.images:
                    self._drip(owner.images[name])
                else:
                    self._send(404, b"not found")

            def _drip(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for i in range(len(data)):
                    if owner.stop.wait(owner.drip_interval_s):
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()

            def _send(self, status: int, body: bytes, **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name.title(), value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _Server((host, 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str | None = None, scheme: str = "http") -> str:
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
