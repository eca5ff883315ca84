"""Running the intake: a uvicorn server around :func:`ingest.http.app.create_app`.

``serve(settings, bus, stop)`` blocks until ``stop`` is set, then lets in-flight requests finish
(each of which either got its 2xx after the bus had its messages, or got an error and will be
retried by the sender), so stopping never loses an acknowledged message. It has the signature of
a pipeline stage (``Callable[[threading.Event], None]`` once bound). ``make_server`` gives the
bare ``uvicorn.Server`` for callers that drive it themselves.
"""

from __future__ import annotations

import logging
import threading

import uvicorn

from frontdesk.bus.base import Bus
from frontdesk.errors import SourceError
from ingest.http.app import create_app
from ingest.http.settings import HttpIntakeSettings

log = logging.getLogger(__name__)


def make_server(settings: HttpIntakeSettings, bus: Bus) -> uvicorn.Server:
    """A uvicorn server for the app on ``settings.host:settings.port``; ``run()`` blocks.

    Set ``server.should_exit = True`` from another thread to stop it; in the main thread it also
    stops on SIGINT/SIGTERM (and afterwards re-raises the signal to the previous handler). Logging
    is left to the caller's configuration; the access log ("uvicorn.access") shows paths without
    their query strings, which may hold the Meta verify token.
    """
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _WithoutQuery) for f in access.filters):
        access.addFilter(_WithoutQuery())
    config = uvicorn.Config(create_app(settings, bus), host=settings.host, port=settings.port, log_config=None,
                            server_header=False, timeout_graceful_shutdown=10)
    return uvicorn.Server(config)


def serve(settings: HttpIntakeSettings, bus: Bus, stop: threading.Event) -> None:
    """Serve until ``stop`` is set (blocking). Raises SourceError if the server cannot start (e.g. port in use)."""
    server = make_server(settings, bus)
    finished = threading.Event()

    def watch() -> None:
        while not (stop.wait(0.2) or finished.is_set()):
            pass
        server.should_exit = True

    threading.Thread(target=watch, name="http-intake-stop", daemon=True).start()
    log.info("HTTP intake listening on %s:%d", settings.host, settings.port)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind; a component must not
        raise SourceError(f"the HTTP intake cannot listen on {settings.host}:{settings.port}") from exc
    finally:
        finished.set()


class _WithoutQuery(logging.Filter):
    """Drops the query string from uvicorn access-log records (args: client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], record.args[2].split("?", 1)[0], *record.args[3:])
        return True
