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


class Recorder:
    """Answers POSTs with ``script`` (in order, then 200), recording every request in ``requests``."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.script: list[Answer] = []
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with rec.lock:
                    rec.requests.append(Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, raw))
                    answer = rec.script.pop(0) if rec.script else Answer()
                data = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="recorder", daemon=True).start()

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
