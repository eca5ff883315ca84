"""A local HTTP server standing in for platform APIs (Telegram, Graph API, webhook receivers).

It records every POST (path, headers, raw body) and answers with scripted answers, then with
``200 {"ok": true, ...}``. Real sockets, real HTTP: the repliers under test use their ordinary client.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any


@dataclass
class Seen:
    """One recorded request."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Answer:
    """A scripted answer: status, JSON body, extra headers."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True, "result": {"message_id": 1}})
    headers: dict[str, str] = field(default_factory=dict)


Respond = Callable[[str, dict[str, str], bytes], tuple[int, Any, dict[str, str]]]


def serve_json(respond: Respond, *, name: str) -> tuple[ThreadingHTTPServer, str]:
    """Serve POSTs on a free 127.0.0.1 port in a daemon thread: ``respond(path, headers, raw body)``
    gives the status, the JSON body and extra headers. Returns the server (``shutdown`` it) and its
    base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, body, extra = respond(self.path, dict(self.headers.items()), raw)
            data = json.dumps(body).encode()
            self.send_response(status)
            for header, value in {"Content-Type": "application/json", **extra}.items():
                self.send_header(header, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class Recorder:
    """Answers POSTs with ``script`` (in order, then 200), recording every request in ``requests``."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.script: list[Answer] = []
        self.lock = threading.Lock()
        self.server, self.base = serve_json(self._respond, name="recorder")

    def _respond(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            self.requests.append(Seen("POST", path, {k.lower(): v for k, v in headers.items()}, raw))
            answer = self.script.pop(0) if self.script else Answer()
        return answer.status, answer.body, answer.headers

    def seen(self) -> list[Seen]:
        with self.lock:
            return list(self.requests)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Seen]:
        """The requests once there are at least ``count`` (AssertionError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.seen()) < count:
            assert time.monotonic() < deadline, f"expected {count} requests, got {len(self.seen())}: {self.seen()}"
            time.sleep(0.05)
        return self.seen()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
