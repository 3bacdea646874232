"""A local HTTP server for bundles, with ETags, for the URL-source tests.

It serves one body at every path, honours ``If-None-Match``, and records the requests it
saw, so a test can change the bundle, break the server (a status, a delay) and check what
the poller sent.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]


@dataclass
class BundleServer:
    """What the server answers; change the fields to change its answers."""

    body: bytes = b""
    etag: str | None = None  # None: a strong ETag made from the body
    last_modified: str | None = None
    status: int = 200  # anything else is answered with an empty body
    delay_seconds: float = 0.0
    redirect_to: str | None = None  # answer 302 with this Location
    seen: list[SeenRequest] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # what each request got
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def serve(self, body: bytes, etag: str | None = None) -> None:
        self.body, self.etag = body, etag

    def current_etag(self) -> str:
        return self.etag or f'"{hashlib.sha256(self.body).hexdigest()[:16]}"'

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def url(self, path: str = "/bundle.yaml") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> BundleServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append(SeenRequest(self.path, dict(self.headers.items())))
                if owner.delay_seconds:
                    time.sleep(owner.delay_seconds)
                if owner.redirect_to is not None:
                    self._answer(302, {"Location": owner.redirect_to})
                    return
                if owner.status != 200:
                    self._answer(owner.status)
                    return
                etag = owner.current_etag()
                if self.headers.get("If-None-Match") == etag:
                    self._answer(304, {"ETag": etag})
                    return
                headers = {"ETag": etag, "Content-Type": "application/octet-stream"}
                if owner.last_modified:
                    headers["Last-Modified"] = owner.last_modified
                self._answer(200, headers, owner.body)

            def _answer(
                self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
            ) -> None:
                owner.statuses.append(status)
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if status != 304:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
