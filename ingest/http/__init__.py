"""HTTP intake (``frontdesk ingest http``): the v1 messages API and the Telegram and Meta webhooks.

``create_app(settings, bus)`` builds the FastAPI application (:mod:`ingest.http.app`);
``serve(settings, bus, stop)`` runs it under uvicorn until ``stop`` is set (:mod:`ingest.http.server`).
Payload normalisation: :mod:`ingest.http.normalise` (shared cleaning, Telegram),
:mod:`ingest.http.meta` (WhatsApp, Messenger, Instagram), :mod:`ingest.http.api` (the v1 body).
"""

from ingest.http.app import create_app
from ingest.http.server import make_server, serve
from ingest.http.settings import HttpIntakeSettings

__all__ = ["HttpIntakeSettings", "create_app", "make_server", "serve"]
