"""Hostile requests against the HTTP intake on a real uvicorn server: refused or ignored, nothing published.

Reuses the server helpers of ``tests/integration/ingest/test_http_intake.py``. Every request here
is forged, malformed, oversized or meaningless; each must get its documented status (401, 400,
413, 422, or 200 with nothing published for events that are not messages), never a 500, and
the bus must hold no message afterwards (a signed webhook body whose parts have the wrong shape
leaves their dead-letter records, nothing else). Raw-socket tests send what httpx refuses to:
lying Content-Length, conflicting framing, broken chunks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontdesk.bus.memory import MemoryBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.messages import message_id
from tests.fixtures.hostile.payloads import Body, hostile_bodies
from tests.integration.ingest.test_http_intake import (
    APP_SECRET, HMAC_SECRET, SETTINGS, TELEGRAM_SECRET, TOKEN, Served, api_body, bearer, fixture_bytes, running,
    signed)

# so the parsers, not the limits, see bombs (Meta's own limit too: its bombs got 413 and tested nothing)
LARGE = SETTINGS.model_copy(update={"max_body_bytes": 4 * 1024 * 1024, "meta_max_body_bytes": 4 * 1024 * 1024})


@pytest.fixture(params=["memory", "sqlite"])
def intake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    bus = MemoryBus() if request.param == "memory" else SqliteBus(tmp_path / "bus.sqlite3")
    bus.ensure_topics()
    for client in running(LARGE, bus):
        served = Served(bus, client)
        yield served
        assert served.http.get("/healthz").status_code == 200, "the server survived"
    bus.close()


def tg(secret: str = TELEGRAM_SECRET) -> dict[str, str]:
    return {"X-Telegram-Bot-Api-Secret-Token": secret, "Content-Type": "application/json"}


def hmac_header(body: bytes, secret: str = HMAC_SECRET, scheme: str = "sha256") -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, getattr(hashlib, scheme)).hexdigest()
    return {"X-Frontdesk-Signature": f"{scheme}={digest}", "Content-Type": "application/json"}


def nothing_published(intake: Served) -> None:
    assert intake.published() == [] and intake.publish_calls == 0


# --- Forged credentials -----------------------------------------------------------------------------

TG_BODY = fixture_bytes("telegram/private_text")
META_BODY = fixture_bytes("whatsapp/text")
API_BODY = json.dumps(api_body()).encode()
FORGED: dict[str, tuple[str, bytes, dict[str, str]]] = {
    "telegram-missing-secret": ("/webhooks/telegram", TG_BODY, {"Content-Type": "application/json"}),
    "telegram-wrong-secret": ("/webhooks/telegram", TG_BODY, tg("tg-secret_124")),
    "telegram-secret-prefix": ("/webhooks/telegram", TG_BODY, tg(TELEGRAM_SECRET[:-1])),
    "telegram-secret-longer": ("/webhooks/telegram", TG_BODY, tg(TELEGRAM_SECRET + "x")),
    "telegram-secret-other-case": ("/webhooks/telegram", TG_BODY, tg(TELEGRAM_SECRET.upper())),
    "telegram-signature-instead": ("/webhooks/telegram", TG_BODY, signed(TG_BODY)),
    "meta-missing-signature": ("/webhooks/meta", META_BODY, {"Content-Type": "application/json"}),
    "meta-wrong-secret": ("/webhooks/meta", META_BODY, signed(META_BODY, "not-the-app-secret")),
    "meta-sha1-instead-of-sha256": ("/webhooks/meta", META_BODY, {
        "X-Hub-Signature-256": "sha1=" + hmac.new(APP_SECRET.encode(), META_BODY, hashlib.sha1).hexdigest()}),
    "meta-old-sha1-header": ("/webhooks/meta", META_BODY, {
        "X-Hub-Signature": "sha1=" + hmac.new(APP_SECRET.encode(), META_BODY, hashlib.sha1).hexdigest()}),
    "meta-signature-of-another-body": ("/webhooks/meta", META_BODY, signed(fixture_bytes("messenger/text"))),
    "meta-signature-of-reserialised-body": ("/webhooks/meta", META_BODY,
                                            signed(json.dumps(json.loads(META_BODY)).encode())),
    "meta-signature-with-trailing-newline": ("/webhooks/meta", META_BODY, signed(META_BODY + b"\n")),
    "meta-truncated-signature": ("/webhooks/meta", META_BODY,
                                 {"X-Hub-Signature-256": signed(META_BODY)["X-Hub-Signature-256"][:-2]}),
    "meta-empty-signature": ("/webhooks/meta", META_BODY, {"X-Hub-Signature-256": "sha256="}),
    "meta-signature-twice": ("/webhooks/meta", META_BODY, {
        "X-Hub-Signature-256": signed(META_BODY)["X-Hub-Signature-256"] + ",sha256=" + "0" * 64}),
    "api-hmac-of-another-body": ("/v1/messages", API_BODY, hmac_header(API_BODY.replace(b"Nigar", b"Mallory"))),
    "api-hmac-sha1": ("/v1/messages", API_BODY, hmac_header(API_BODY, scheme="sha1")),
    "api-hmac-wrong-secret": ("/v1/messages", API_BODY, hmac_header(API_BODY, secret="guess")),
    "api-bearer-is-the-hmac-secret": ("/v1/messages", API_BODY, bearer(HMAC_SECRET)),
    "api-token-as-signature": ("/v1/messages", API_BODY, {"X-Frontdesk-Signature": f"sha256={TOKEN}"}),
}


@pytest.mark.parametrize("case", FORGED)
def test_forged_credentials_are_401_and_publish_nothing(intake: Served, case: str) -> None:
    path, body, headers = FORGED[case]
    response = intake.http.post(path, content=body, headers=headers)
    assert response.status_code == 401, response.text
    for secret in (TOKEN, HMAC_SECRET, TELEGRAM_SECRET, APP_SECRET):
        assert secret not in response.text
    nothing_published(intake)


def test_a_replayed_signed_message_is_the_same_message(intake: Served) -> None:
    """There is no timestamp in the signature (replay protection is the stable id): a replay can only
    deliver the same message again, which every stage treats as a no-op."""
    first = intake.http.post("/v1/messages", content=API_BODY, headers=hmac_header(API_BODY))
    again = intake.http.post("/v1/messages", content=API_BODY, headers=hmac_header(API_BODY))
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    assert {m.id for m in intake.published()} == {first.json()["id"]}


# --- Hostile bodies, authenticated ------------------------------------------------------------------

POSTS = {
    "/v1/messages": lambda raw: bearer(),
    "/webhooks/telegram": lambda raw: tg(),
    "/webhooks/meta": lambda raw: signed(raw),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("body", hostile_bodies(), ids=lambda b: b.name)
def test_hostile_bodies_are_refused_or_ignored(intake: Served, path: str, body: Body) -> None:
    response = intake.http.post(path, content=body.raw, headers=POSTS[path](body.raw))
    assert response.status_code in body.statuses, (response.status_code, response.text[:300])
    dead = response.json()["dead_lettered"] if response.status_code == 200 else 0
    if response.status_code == 200:
        assert response.json() == {"published": 0, "ids": [], "dead_lettered": dead}
    assert intake.published() == [] and len(intake.dead_letters()) == dead
    assert intake.publish_calls == (1 if dead else 0)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/json; charset=utf-7", "image/png"])
def test_the_content_type_neither_authenticates_nor_changes_the_parse(intake: Served, content_type: str) -> None:
    """The signature covers the bytes; the label is not trusted: unsigned → 401, signed form data → 400,
    the signed JSON of a real message is that message whatever it is labelled."""
    form = b"update_id=5&message[text]=hi"
    assert intake.http.post("/webhooks/meta", content=META_BODY, headers={"Content-Type": content_type}
                            ).status_code == 401
    assert intake.http.post("/webhooks/meta", content=form, headers={**signed(form), "Content-Type": content_type}
                            ).status_code == 400
    nothing_published(intake)
    ok = intake.http.post("/webhooks/meta", content=META_BODY, headers={**signed(META_BODY),
                                                                        "Content-Type": content_type})
    assert ok.status_code == 200 and ok.json()["published"] == 1


def test_duplicate_keys_take_the_last_value_like_the_signature_checker(intake: Served) -> None:
    raw = (b'{"channel": "chat", "platform": "webchat", "external_id": "first", "external_id": "second", '
           b'"author": {"id": "u1", "name": "A"}, "text": "one", "text": "two"}')
    response = intake.http.post("/v1/messages", content=raw, headers=hmac_header(raw))
    assert response.status_code == 202
    [msg] = intake.published()
    assert (msg.id, msg.external_id, msg.text) == (message_id("http:webchat", "second"), "second", "two")


def test_nul_controls_and_line_breaks_never_reach_the_bus(intake: Served) -> None:
    update = json.loads(TG_BODY)
    update["message"]["text"] = "pay\u0000ment\u001b[2J\r\nBcc: x@evil.example"
    update["message"]["from"]["first_name"] = "Eve\r\nBcc: victim@evil.example\u0000"
    raw = json.dumps(update).encode()
    assert intake.http.post("/webhooks/telegram", content=raw, headers=tg()).status_code == 200
    [msg] = intake.published()
    assert "\x00" not in msg.text and "\x1b" not in msg.text and "\r" not in msg.text
    assert msg.sender.name is not None and not set(msg.sender.name) & set("\r\n\x00")


@pytest.mark.parametrize("char", ["\u0085", "\u2028", "\u2029", "\u009b"])
def test_api_ids_with_line_separators_or_c1_controls_are_422(intake: Served, char: str) -> None:
    # ids are logged and shown by `frontdesk cases show`: NEL/LS/PS start a new line there, CSI a terminal command
    for field in ("external_id", "conversation_id", "author.id"):
        body = api_body()
        parent, _, key = field.rpartition(".")
        (body[parent] if parent else body)[key] = f"id{char}2026-12-06 INFO forged"
        response = intake.http.post("/v1/messages", json=body, headers=bearer())
        assert response.status_code == 422, (field, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", *field.split(".")]
    assert intake.published() == []


def test_huge_text_is_refused_by_the_api_and_cut_by_the_webhooks(intake: Served) -> None:
    big = "x" * 2_000_000
    api = intake.http.post("/v1/messages", json=api_body(text=big), headers=bearer())
    assert api.status_code == 422
    update = json.loads(TG_BODY)
    update["message"]["text"] = big
    raw = json.dumps(update).encode()
    assert intake.http.post("/webhooks/telegram", content=raw, headers=tg()).status_code == 200
    [msg] = intake.published()
    assert len(msg.text) <= LARGE.max_text_chars


# --- Framing: lying lengths, conflicting headers, broken chunks (raw sockets) -------------------------


def raw_exchange(client_url: str, request: bytes, *, shut: bool = False) -> bytes:
    """Send ``request`` bytes as they are; the server's answer until it closes or goes quiet for 5 s."""
    host, port = client_url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


def head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: intake\r\nX-Telegram-Bot-Api-Secret-Token: {TELEGRAM_SECRET}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


FRAMING = {
    "content-length-shorter-than-body": head("/webhooks/telegram", "Content-Length: 10\r\n") + TG_BODY,
    "content-length-longer-than-body": head("/webhooks/telegram", "Content-Length: 4000\r\n") + TG_BODY[:100],
    "content-length-over-the-limit": head("/webhooks/telegram", "Content-Length: 99999999999\r\n") + TG_BODY,
    "content-length-negative": head("/webhooks/telegram", "Content-Length: -1\r\n") + TG_BODY,
    "content-length-not-a-number": head("/webhooks/telegram", "Content-Length: 1e3\r\n") + TG_BODY,
    "two-different-content-lengths": head("/webhooks/telegram", f"Content-Length: 10\r\nContent-Length: "
                                          f"{len(TG_BODY)}\r\n") + TG_BODY,
    "chunk-size-not-hex": head("/webhooks/telegram", "Transfer-Encoding: chunked\r\n") + b"zz\r\n" + TG_BODY,
    "chunked-over-the-limit": head("/webhooks/telegram", "Transfer-Encoding: chunked\r\n") + b"".join(
        b"10000\r\n" + b"[" * 0x10000 + b"\r\n" for _ in range(80)) + b"0\r\n\r\n",
    "chunked-never-ends": head("/webhooks/telegram", "Transfer-Encoding: chunked\r\n") + b"5\r\n{\"a\":\r\n",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", FRAMING)
def test_broken_framing_publishes_nothing(intake: Served, case: str) -> None:
    answer = raw_exchange(str(intake.http.base_url), FRAMING[case], shut=True)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    assert status is None or status in (400, 401, 413, 422), answer[:300]
    nothing_published(intake)


def test_content_length_with_chunked_follows_transfer_encoding_and_smuggles_nothing(intake: Served) -> None:
    """RFC 9112 6.1: with both, Transfer-Encoding alone frames the body; what follows is a request of its own
    (here one with a forged secret: 401, or dropped with the connection), never part of the first."""
    chunked = f"{len(TG_BODY):x}\r\n".encode() + TG_BODY + b"\r\n0\r\n\r\n"
    smuggled = (f"POST /webhooks/telegram HTTP/1.1\r\nHost: intake\r\nX-Telegram-Bot-Api-Secret-Token: forged\r\n"
                f"Content-Length: {len(TG_BODY)}\r\n\r\n").encode() + TG_BODY
    request = head("/webhooks/telegram", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + chunked + smuggled
    answer = raw_exchange(str(intake.http.base_url), request)
    statuses = [line.split(b" ")[1] for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses[0] == b"200" and set(statuses[1:]) <= {b"401"}, statuses  # uvicorn may just close instead
    assert len(intake.published()) == 1 and intake.publish_calls == 1
