"""A Telegram Bot API stand-in keeping getUpdates' semantics, on a free 127.0.0.1 port.

Updates with ``update_id >= offset`` are served (at most ``limit``); everything below the offset a
call names is forgotten (that confirms it, as on Telegram); an empty queue is long-polled for the
call's ``timeout`` seconds. A wrong token gets 401, other methods 404 (acknowledgements go to the
recording server, :mod:`tests.harness.recorder`). ``fail`` holds answers to give before serving
again (outages, rate limits). Used by the poller's tests and the end-to-end test.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from .recorder import serve_json


class BotApiStandIn:
    """getUpdates in a thread; every call is recorded in ``requests`` (path and JSON body)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.pending: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.fail: list[tuple[int, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.server, self.base = serve_json(self._respond, name="bot-api")

    def add(self, *updates: dict[str, Any]) -> None:
        """Queue updates for the next getUpdates (wakes a pending long poll)."""
        with self.cond:
            self.pending.extend(updates)
            self.pending.sort(key=lambda u: u["update_id"])
            self.cond.notify_all()

    def offsets(self) -> list[int | None]:
        """The offset of every getUpdates call so far, in order."""
        with self.cond:
            return [r.get("offset") for r in self.requests]

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.cond:
            self.requests.append({"path": path, **body})
            if path != f"/bot{self.token}/getUpdates":
                unauthorized = path.endswith("/getUpdates")
                return (401, {"ok": False, "error_code": 401, "description": "Unauthorized"}) if unauthorized \
                    else (404, {"ok": False, "error_code": 404, "description": "Not Found"})
            if self.fail:
                return self.fail.pop(0)
            offset = body.get("offset")
            if offset is not None:
                self.pending = [u for u in self.pending if u["update_id"] >= offset]
            deadline = time.monotonic() + float(body.get("timeout", 0))
            while not self.pending and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            return 200, {"ok": True, "result": self.pending[: int(body.get("limit", 100))]}

    def close(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def _respond(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any, dict[str, str]]:
        status, answer = self.handle(path, json.loads(raw or b"{}"))
        return status, answer, {}
