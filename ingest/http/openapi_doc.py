"""The intake's OpenAPI document: its security schemes, the error answers each endpoint declares, and
the request schemas of the endpoints that parse their body themselves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from ingest.http.api import MessageIn, Problem, ValidationProblem

SECURITY = {"bearerAuth": {"type": "http", "scheme": "bearer"},
             "frontdeskSignature": {"type": "apiKey", "in": "header", "name": "X-Frontdesk-Signature",
                                    "description": "sha256=<hex HMAC-SHA256 of the raw body with the shared secret>"},
             "telegramSecretToken": {"type": "apiKey", "in": "header", "name": "X-Telegram-Bot-Api-Secret-Token",
                                     "description": "The secret_token given to setWebhook"},
             "metaSignature": {"type": "apiKey", "in": "header", "name": "X-Hub-Signature-256",
                               "description": "sha256=<hex HMAC-SHA256 of the raw body with the app secret>"}}


def platform_body(description: str, scheme: str) -> dict[str, Any]:
    """OpenAPI extras of a webhook whose body is the platform's own JSON (not re-specified here)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": {"type": "object"}}}},
            "security": [{scheme: []}]}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    known: dict[int, dict[str, Any]] = {
        400: {"model": Problem, "description": "The body is not valid JSON; nothing was published"},
        401: {"model": Problem, "description": "Missing or invalid credentials; nothing was published"},
        404: {"model": Problem, "description": "Endpoint disabled: its credential is not configured"},
        413: {"model": Problem, "description": "Body larger than the configured limit, or (messages API) its "
                                                "message too big for a bus record; nothing was published"},
        422: {"model": ValidationProblem, "description": "Schema error; `detail[].loc` names the field"},
        503: {"model": Problem, "description": "The message bus is unavailable; nothing was accepted, retry later",
              "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}}},
    }
    return {code: known[code] for code in codes}


def webhook_responses() -> dict[int | str, dict[str, Any]]:
    """A webhook's error answers: 422 only for a body that is not an object (bad parts are dead-lettered)."""
    not_an_object = {"model": ValidationProblem,
                     "description": "The body is JSON but not an object; nothing was published"}
    return {**responses(400, 401, 404, 413), 422: not_an_object, **responses(503)}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request-body schemas of endpoints that parse their body themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(MessageIn, "validation")], ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs["$defs"])
        components["securitySchemes"] = SECURITY
        app.openapi_schema = schema
    return app.openapi_schema
