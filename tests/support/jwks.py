"""A real JWKS endpoint on 127.0.0.1 that can also hang: accept, read, never answer.

``JwksServer`` serves ``document`` at /jwks and counts every request it receives. While
``hanging`` it reads each request and then holds the connection open without writing a
byte, as an identity provider stuck behind a load balancer does; ``answer_again`` ends the
hang (the held connections are closed unanswered) and later requests get the document.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JwksServer:
    """Serves ``document`` at /jwks; ``hits`` counts requests, answered or held."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.hits = 0
        self.held = 0  # requests received while hanging
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                    released = server._released
                    if not released.is_set():
                        server.held += 1
                    body = json.dumps(server.document).encode()
                if not released.wait(timeout=60):  # the hang; 60 s: never outlive a test run
                    return
                if released is not server._released or not server.running:
                    return  # held during a hang: closed without an answer
                if self.path != "/jwks":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.running = True
        self._thread.start()

    @property
    def hanging(self) -> bool:
        return not self._released.is_set()

    def hang(self) -> None:
        """From now on, accept each request and never answer it."""
        with self._lock:
            if self._released.is_set():
                self._released = threading.Event()

    def answer_again(self) -> None:
        """Close the held connections unanswered; answer every later request."""
        with self._lock:
            held, self._released = self._released, threading.Event()
            self._released.set()
        held.set()

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.answer_again()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
