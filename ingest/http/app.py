"""The HTTP intake service: ``create_app(settings, bus)`` builds the FastAPI application.

Endpoints (OpenAPI document: ``GET /openapi.json``, committed as ``ingest/http/openapi.json``):

* ``POST /v1/messages`` — the versioned messages API (:mod:`ingest.http.api`); bearer token or
  ``X-Frontdesk-Signature: sha256=<hex>`` (HMAC-SHA256 of the raw body).
* ``POST /webhooks/telegram`` — Bot API updates; ``X-Telegram-Bot-Api-Secret-Token`` must match.
* ``GET /webhooks/meta`` — subscription handshake; ``POST /webhooks/meta`` — WhatsApp, Messenger
  and Instagram events, ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body, app secret).
* ``GET /healthz`` (process up), ``GET /readyz`` (the bus answers), ``GET /metrics`` (Prometheus).

Guarantees of every POST: the body is read with a size limit (413, checked against Content-Length
first and while reading) and authenticated before it is parsed (401: nothing published); a 2xx is
sent only after ``bus.publish`` returned, i.e. the messages are durable. If the bus fails, the
answer is 503 with Retry-After and the sender's retry is safe: ids are stable, so a message that was
in fact written is a no-op downstream (a crash after the publish and before the 2xx,
``crashpoint("http.after_publish")``, is such a case). A ``/v1/messages`` message too big for a bus
record (``max_record_bytes``) gets 413, not 503: no retry could publish it. Webhook events that are
not customer messages get 200 and publish nothing (platforms retry non-2xx answers). A webhook body
that is JSON but not an object gets 422; any other part that cannot be read (a Telegram update, a
Meta entry, change, event or WhatsApp message with the wrong shape, or a message too big for a bus
record) goes to the dead-letter topic (stage ``ingest``, the reason, the part's bytes:
:mod:`ingest.http.deadletter`, as the Telegram poller does) in the same publish as the good
messages, and the answer is 200: retrying cannot mend it, and one bad part must not hold back the
customer messages around it. Secrets are never logged. Running the app: :mod:`ingest.http.server`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from frontdesk.bus.base import Bus, Outgoing
from frontdesk.bus.memory import MemoryBus
from frontdesk.codec import encode
from frontdesk.errors import FrontdeskError, RecordTooLarge, TransientError
from frontdesk.faults import crashpoint
from frontdesk.messages import InboundMessage
from frontdesk.metrics import Metrics, default_metrics, instrument_app
from ingest.http.api import Accepted, MessageIn, Problem, Published, api_message
from ingest.http.auth import bearer_ok, secret_ok, signature_ok
from ingest.http.deadletter import dead_letter_record
from ingest.http.meta import MetaConnectors, meta_normalised
from ingest.http.normalise import Normalised, PayloadError, Rejected
from ingest.http.telegram_update import telegram_normalised
from ingest.http.openapi_doc import openapi_document, platform_body, responses, webhook_responses
from ingest.http.settings import HttpIntakeSettings
from ingest.http.tally import API_CONNECTOR, IntakeTallies

log = logging.getLogger(__name__)
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
VERSION = "1.0.0"
_DURABLE = ("The customer messages of the body (none for other events) are durably on the bus, and so are "
            "the dead-letter records of its parts that could not be read")



def create_app(settings: HttpIntakeSettings, bus: Bus, *,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC), metrics: Metrics | None = None) -> FastAPI:
    """The intake application publishing to ``bus.topics.inbound``, counted on ``metrics`` (default: the
    process's; per connector: :mod:`ingest.http.tally`). Does not start a server."""
    metrics = metrics or default_metrics()
    intake = _Intake(settings, bus, clock, metrics)
    app = FastAPI(title="Frontdesk HTTP intake", version=VERSION, redoc_url=None,
                  description="Receives customer messages (messages API, Telegram and Meta webhooks) and "
                              "publishes them to the inbound topic. A 2xx means the bus has them.")
    app.add_exception_handler(PayloadError, _payload_error)
    app.add_api_route("/v1/messages", intake.post_message, methods=["POST"], status_code=202, response_model=Accepted,
                      operation_id="submitMessage", tags=["messages"],
                      summary="Submit one social-media or chat message",
                      response_description="Accepted: the message is durably on the bus under `id`",
                      responses=responses(401, 404, 413, 422, 503), openapi_extra={
                          "requestBody": {"required": True, "content": {"application/json": {
                              "schema": {"$ref": "#/components/schemas/MessageIn"}}}},
                          "security": [{"bearerAuth": []}, {"frontdeskSignature": []}]})
    app.add_api_route("/webhooks/telegram", intake.telegram, methods=["POST"], response_model=Published,
                      operation_id="telegramWebhook", tags=["webhooks"], summary="Telegram Bot API update",
                      response_description=_DURABLE, responses=webhook_responses(),
                      openapi_extra=platform_body("A Bot API Update (https://core.telegram.org/bots/api#update)",
                                                   "telegramSecretToken"))
    app.add_api_route("/webhooks/meta", intake.meta_verify, methods=["GET"], response_class=PlainTextResponse,
                      operation_id="metaVerify", tags=["webhooks"], summary="Meta subscription handshake",
                      response_description="The hub.challenge, echoed as text/plain",
                      responses={403: {"model": Problem, "description": "Wrong hub.mode or verify token"},
                                 **responses(404)})
    app.add_api_route("/webhooks/meta", intake.meta, methods=["POST"], response_model=Published,
                      operation_id="metaWebhook", tags=["webhooks"], summary="WhatsApp, Messenger and Instagram events",
                      response_description=_DURABLE, responses=webhook_responses(),
                      openapi_extra=platform_body("A Meta webhook batch: object whatsapp_business_account, page or "
                                                   "instagram, with entry[]", "metaSignature"))
    app.add_api_route("/healthz", _healthz, methods=["GET"], operation_id="healthz", tags=["operations"],
                      summary="The process is up")
    app.add_api_route("/readyz", intake.readyz, methods=["GET"], operation_id="readyz", tags=["operations"],
                      summary="The bus answers", responses={503: {"description": "The bus does not answer"}})
    instrument_app(app, metrics)  # GET /metrics (not in the OpenAPI document) and request counters
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


class _Intake:
    """The endpoint handlers, bound to one settings object and one bus."""

    def __init__(self, settings: HttpIntakeSettings, bus: Bus, clock: Callable[[], datetime], metrics: Metrics) -> None:
        self.settings, self.bus, self.clock = settings, bus, clock
        self.meta_connectors = MetaConnectors(settings.whatsapp_connector, settings.facebook_connector,
                                              settings.instagram_connector)
        self.tallies = IntakeTallies((API_CONNECTOR, settings.telegram_connector, settings.whatsapp_connector,
                                      settings.facebook_connector, settings.instagram_connector), metrics)

    async def post_message(self, request: Request) -> Accepted:
        s = self.settings
        _enabled(bool(s.api_tokens or s.hmac_secret), "POST /v1/messages (http.api_tokens / http.hmac_secret)")
        raw = await _read_body(request, s.max_body_bytes)
        if not (bearer_ok(request.headers.get("authorization"), s.api_tokens)
                or signature_ok(request.headers.get("x-frontdesk-signature"), raw, s.hmac_secret)):
            _refuse(request, 401, "missing or invalid bearer token or signature", {"WWW-Authenticate": "Bearer"})
        try:
            body = MessageIn.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError([{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]}
                                          for e in exc.errors(include_url=False)]) from None
        message = api_message(body, received_at=self.clock())
        await self._publish([message], connector=API_CONNECTOR)
        return Accepted(id=message.id)

    async def telegram(self, request: Request) -> Published:
        s = self.settings
        _enabled(s.telegram_secret_token is not None, "the Telegram webhook (http.telegram_secret_token)")
        if not secret_ok(request.headers.get("x-telegram-bot-api-secret-token"), s.telegram_secret_token):
            _refuse(request, 401, "missing or wrong X-Telegram-Bot-Api-Secret-Token")
        raw = await _read_body(request, s.max_body_bytes)
        return await self._publish_body(telegram_normalised(
            _json(raw), connector=s.telegram_connector, received_at=self.clock(), max_text=s.max_text_chars, raw=raw))

    async def meta_verify(self, mode: str | None = Query(None, alias="hub.mode"),
                          token: str | None = Query(None, alias="hub.verify_token"),
                          challenge: str | None = Query(None, alias="hub.challenge", max_length=256),
                          ) -> PlainTextResponse:
        _enabled(self.settings.meta_verify_token is not None, "the Meta webhook handshake (http.meta_verify_token)")
        if mode != "subscribe" or not secret_ok(token, self.settings.meta_verify_token):
            log.warning("refused the Meta subscription handshake: wrong mode or verify token")
            raise HTTPException(403, "wrong hub.mode or hub.verify_token")
        if not challenge or not challenge.isprintable():
            raise HTTPException(400, "hub.challenge missing or not printable")
        return PlainTextResponse(challenge, headers={"X-Content-Type-Options": "nosniff"})

    async def meta(self, request: Request) -> Published:
        s = self.settings
        _enabled(s.meta_app_secret is not None, "the Meta webhook (http.meta_app_secret)")
        raw = await _read_body(request, s.meta_max_body_bytes)
        if not signature_ok(request.headers.get("x-hub-signature-256"), raw, s.meta_app_secret):
            _refuse(request, 401, "missing or invalid X-Hub-Signature-256")
        return await self._publish_body(meta_normalised(
            _json(raw), connectors=self.meta_connectors, received_at=self.clock(), max_text=s.max_text_chars))

    async def readyz(self) -> JSONResponse:
        try:
            await asyncio.wait_for(run_in_threadpool(self.bus.end_offsets, self.bus.topics.inbound),
                                   self.settings.ready_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason is logged
            log.warning("not ready: the bus does not answer (%s)", type(exc).__name__)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def _publish_body(self, found: Normalised) -> Published:
        """Publish a webhook body's messages and the dead letters of its rejected parts (and of messages too
        big for a bus record)."""
        found.fit(self.bus.max_record_bytes)
        return await self._publish(found.messages, found.rejected, connector=found.connector)

    async def _publish(self, messages: list[InboundMessage], rejected: Sequence[Rejected] = (), *,
                       connector: str) -> Published:
        """Publish the messages and the dead letters of the rejected parts in one call and wait until durable,
        then count them under ``connector`` (a name from the settings); 503 (+ Retry-After) if the bus is
        unavailable."""
        records = [Outgoing(self.bus.topics.inbound, encode(m), m.id.encode(),
                            (("frontdesk-connector", m.connector.encode()),)) for m in messages]
        records += [dead_letter_record(self.bus.topics.deadletter, r, self.bus.max_record_bytes) for r in rejected]
        if records:
            retry_after = {"Retry-After": str(self.settings.retry_after_s)}
            try:
                await run_in_threadpool(self.bus.publish, records)
            except RecordTooLarge as exc:  # only /v1/messages: webhook bodies were fitted; a retry cannot mend it
                log.warning("refused with 413, %d record(s): %s", len(records), exc)
                raise HTTPException(413, f"the message is too big for the bus: {exc}") from exc
            except TransientError as exc:
                log.warning("bus unavailable, %d record(s) refused with 503: %s", len(records), exc)
                raise HTTPException(503, "the message bus is unavailable; retry later", headers=retry_after) from exc
            except FrontdeskError as exc:
                log.error("bus error, %d record(s) refused with 503: %s", len(records), exc)
                raise HTTPException(503, "the message bus failed; retry later", headers=retry_after) from exc
            crashpoint("http.after_publish")
            self.tallies.count(connector, len(messages), len(rejected))
            for m in messages:
                log.info("published %s from %s (%s)", m.id, m.connector, m.external_id[:80])
            for r in rejected:
                log.warning("dead-lettered %s %s: %s", r.connector, r.where, r.error)
        return Published(published=len(messages), ids=[m.id for m in messages], dead_lettered=len(rejected))


async def _healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HTTPException(400, "invalid Content-Length")
        if int(declared) > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HTTPException(400, "the body is not valid JSON") from exc


def _enabled(configured: bool, what: str) -> None:
    if not configured:
        raise HTTPException(404, f"{what} is not configured")


def _refuse(request: Request, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
    client = request.client.host if request.client else "?"
    log.warning("refused %s %s from %s: %s", request.method, request.url.path, client, reason)
    raise HTTPException(status, reason, headers=headers)


async def _payload_error(request: Request, exc: Exception) -> JSONResponse:
    detail = exc.detail() if isinstance(exc, PayloadError) else [{"type": "payload", "loc": ["body"], "msg": str(exc)}]
    log.warning("refused %s: %s", request.url.path, exc)
    return JSONResponse({"detail": detail}, status_code=422)


def writeopenapi_document(path: Path = OPENAPI_PATH) -> Path:
    """(Re)write the committed OpenAPI document; a test fails when it drifts from the code."""
    document = create_app(HttpIntakeSettings(), MemoryBus()).openapi()
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
