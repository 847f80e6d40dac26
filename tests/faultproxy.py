"""A fault-injecting HTTP proxy in front of the real vLLM server: it forwards requests unchanged, except
the ones its plan picks, which get an HTTP 5xx, a slow answer, a dropped connection, or nothing at all
(the proxy stops listening: connection refused, as when the server is killed); or which it answers as a server
without vLLM's logprob_token_ids extension would: refusing a request that names it (HTTP 400), or ignoring it
(forwarded without it)."""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

# plan(n) -> action for the n-th (1-based) POST: "forward", "503", "500", "drop", "slow:SECONDS",
# "refuse-extension" (400 when the body names logprob_token_ids), "ignore-extension" (forwarded without the
# logprob_token_ids and return_tokens_as_token_ids fields)
Plan = Callable[[int], str]


class FaultProxy:
    def __init__(self, upstream: str, plan: Plan):
        self.upstream = upstream.rstrip("/")
        self.plan = plan
        self.posts = 0
        self.forwarded = 0
        self.injected: dict[str, int] = {}
        self.in_flight = 0  # POSTs being handled (a slow one goes on after its client gave up)
        self._lock = threading.Lock()
        self.port = _free_port()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] = self.injected.get(kind, 0) + 1

    def up(self) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self, body: bytes | None):
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command,
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() not in ("host", "content-length")})
                try:
                    with urllib.request.urlopen(req, timeout=600) as r:
                        status, headers, payload = r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    status, headers, payload = e.code, e.headers, e.read()
                if self.command == "POST" and status == 200 and self.path.endswith("/completions"):
                    with proxy._lock:
                        proxy.forwarded += 1  # counted when the server answered, whether or not the client still waits
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                if not self.path.endswith("/completions"):  # e.g. /reset_prefix_cache: not a request the plan counts
                    self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    return
                with proxy._lock:
                    proxy.posts += 1
                    proxy.in_flight += 1
                    n = proxy.posts
                try:
                    self._post(n)
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            def _post(self, n: int):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = proxy.plan(n)
                if action in ("500", "503"):
                    proxy._count(action)
                    payload = b'{"error": "injected fault"}'
                    self.send_response(int(action))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if action == "drop":
                    proxy._count("drop")
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "refuse-extension" and b'"logprob_token_ids"' in body:
                    proxy._count(action)
                    payload = (b'{"error": {"message": "Unrecognized request argument supplied: logprob_token_ids", '
                               b'"type": "invalid_request_error", "code": 400}}')
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if action == "ignore-extension" and b'"logprob_token_ids"' in body:
                    proxy._count(action)
                    doc = json.loads(body)
                    doc.pop("logprob_token_ids", None)
                    doc.pop("return_tokens_as_token_ids", None)
                    body = json.dumps(doc).encode()
                if action.startswith("slow:"):
                    proxy._count("slow")
                    time.sleep(float(action.split(":", 1)[1]))
                try:
                    self._forward(body)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up (its timeout) while we waited

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no POST is being handled (True), at most `timeout` s (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.in_flight == 0:
                    return True
            time.sleep(0.05)
        return False

    def down(self) -> None:
        """Stop listening: new connections are refused, as from a killed server."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.down()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
