"""The IMAP connector over TLS and with XOAUTH2, against a real Dovecot with ``ssl = required``.

The certificates come from a throw-away CA (trustme); XOAUTH2 tokens are checked by Dovecot's
``oauth2`` passdb at a small RFC 7662 introspection endpoint run by this module.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import trustme
from imapclient import IMAPClient

from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import decode
from frontdesk.errors import SourceAuthError, SourceError
from frontdesk.messages import InboundMessage
from ingest.blobs import BlobStore
from ingest.imap import CheckpointStore, MailboxConnector
from ingest.imap_settings import MailboxSettings
from ingest.mail.parse import MailLimits
from tests.conftest import unavailable

pytestmark = pytest.mark.dovecot
USER, PASSWORD, TOKEN = "support", "tls-secret", "a-valid-access-token"
# login lines also name the local port and say "TLS" for a TLS session (Dovecot counts a 127.0.0.1 -> 127.0.0.1
# connection as secure, so it would accept a plain-text login too: the log is how we know TLS was used)
LOG_PORTS = "login_log_format_elements = user=<%u> method=%m rip=%r lip=%l lport=%{lport} mpid=%e %c session=<%{session}>"


@dataclass(frozen=True)
class Pki:
    ca: Path
    chain: Path
    key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    (root / "chain.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    other.cert_pem.write_to_path(str(root / "other-ca.pem"))
    return Pki(root / "ca.pem", root / "chain.pem", root / "key.pem", root / "other-ca.pem")


class Introspection(BaseHTTPRequestHandler):
    """RFC 7662 token introspection: ``token=...`` in a form POST, JSON with ``active`` back."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        token = form.get("token", [""])[0]
        type(self).seen.append(token)
        answer = {"active": True, "username": USER, "scope": "imap"} if token == TOKEN else {"active": False}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def introspection() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Introspection)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/introspect"
    httpd.shutdown()


@pytest.fixture(scope="module")
def tls_dovecot(tmp_path_factory: pytest.TempPathFactory, pki: Pki, introspection: str) -> Iterator[object]:
    from tests.harness.dovecot import DovecotOAuth2, DovecotServer, DovecotTls, find_dovecot

    binary, reason = find_dovecot()
    if binary is None:
        unavailable("Dovecot IMAP", reason)
    server = DovecotServer(tmp_path_factory.mktemp("dovecot-tls"), tls=DovecotTls(pki.chain, pki.key, pki.ca),
                           oauth2=DovecotOAuth2(introspection), extra_config=LOG_PORTS)
    server.add_user(USER, PASSWORD)
    server.start()
    yield server
    server.stop()


def fill(server, pki: Pki, count: int) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    """A new folder with ``count`` mails (appended over implicit TLS); its name and the subjects."""
    folder, subjects = f"tls{uuid.uuid4().hex[:8]}", [f"TLS test {n} çağ" for n in range(count)]
    context = ssl.create_default_context(cafile=str(pki.ca))
    with IMAPClient(server.host, server.imaps_port, ssl=True, ssl_context=context, timeout=30) as imap:
        imap.login(USER, PASSWORD)
        imap.create_folder(folder)
        for n, subject in enumerate(subjects):
            imap.append(folder, f"From: a{n}@example.az\r\nSubject: {subject}\r\nMessage-ID: <{folder}.{n}@example.az>"
                                f"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSalam {n}\r\n".encode())
    return folder, subjects


def connector(server, bus: SqliteBus, tmp_path: Path, folder: str, **over: object) -> MailboxConnector:  # type: ignore[no-untyped-def]
    fields: dict[str, object] = dict(name="tls", host=server.host, port=server.imaps_port, security="ssl",
                                     username=USER, password=PASSWORD, folders=(folder,))
    fields.update(over)
    return MailboxConnector(MailboxSettings(**fields), bus, CheckpointStore(tmp_path / "imap"),  # type: ignore[arg-type]
                            BlobStore(tmp_path / "blobs"), MailLimits(), reconnect=(0.1, 0.4))


def subjects_on(bus: SqliteBus) -> list[str]:
    with bus.consumer(f"check-{uuid.uuid4().hex}", [bus.topics.inbound]) as consumer:
        return sorted(decode(r.value, InboundMessage).subject for r in consumer.poll(1000, timeout=0.5))


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_imports_over_tls_trusting_the_ca_in_ca_file(tls_dovecot, pki, bus, tmp_path, security) -> None:  # type: ignore[no-untyped-def]
    folder, subjects = fill(tls_dovecot, pki, 4)
    port = tls_dovecot.imaps_port if security == "ssl" else tls_dovecot.port
    conn = connector(tls_dovecot, bus, tmp_path, folder, security=security, port=port, ca_file=pki.ca)
    assert conn.run_once() == 4
    assert subjects_on(bus) == sorted(subjects)
    assert conn.health.auth_failures == 0 and conn.health.oldest_unprocessed_at is None
    logins = [line for line in tls_dovecot.log_text().splitlines() if f"user=<{USER}>, method=PLAIN" in line]
    assert any(f"lport={port}," in line and line.rstrip().endswith(">") and ", TLS," in line for line in logins), logins


@pytest.mark.parametrize(("security", "trust"), [("ssl", "other CA"), ("starttls", "other CA"), ("ssl", "system CAs")])
def test_an_untrusted_certificate_shows_in_health_and_is_retried_with_backoff(tls_dovecot, pki, bus, tmp_path,  # type: ignore[no-untyped-def]
                                                                               security, trust) -> None:
    folder, _ = fill(tls_dovecot, pki, 1)
    port = tls_dovecot.imaps_port if security == "ssl" else tls_dovecot.port
    conn = connector(tls_dovecot, bus, tmp_path, folder, security=security, port=port,
                     ca_file=pki.other_ca if trust == "other CA" else None)
    stop = threading.Event()
    worker = threading.Thread(target=conn.run, args=(stop,))
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive(), "the connector keeps running"
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    error = conn.health.last_error or ""
    assert "is not trusted" in error and "unable to get local issuer certificate" in error, error
    assert ("other-ca.pem" in error) == (trust == "other CA"), error
    # backoff 0.1, 0.2, 0.4, 0.4 ... s: a handful of attempts in 1.5 s, not a hot loop
    assert 3 <= conn.health.consecutive_failures <= 8, conn.health.consecutive_failures
    assert conn.health.auth_failures == 0 and conn.health.last_success is None and subjects_on(bus) == []


def test_starttls_never_falls_back_to_plain_text(dovecot_server, bus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The session Dovecot has no TLS: STARTTLS fails, and the password is never sent."""
    conn = connector(dovecot_server, bus, tmp_path, "INBOX", security="starttls", port=dovecot_server.port,
                     username="support", password="secret")
    with pytest.raises(SourceError, match="STARTTLS") as caught:
        conn.connect()
    assert not isinstance(caught.value, SourceAuthError) and conn.health.auth_failures == 0


@pytest.mark.parametrize("source", ["file", "command"])
def test_xoauth2_with_a_token_from_a_file_or_a_command(tls_dovecot, pki, bus, tmp_path, source) -> None:  # type: ignore[no-untyped-def]
    folder, subjects = fill(tls_dovecot, pki, 2)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    how = ({"oauth2_token_file": token_file} if source == "file"
           else {"oauth2_token_command": f"{sys.executable} -c \"print(open('{token_file}').read().strip())\""})
    Introspection.seen.clear()
    conn = connector(tls_dovecot, bus, tmp_path, folder, password=None, ca_file=pki.ca, **how)
    assert conn.run_once() == 2
    assert subjects_on(bus) == sorted(subjects)
    assert Introspection.seen == [TOKEN], "Dovecot checked our token at the introspection endpoint"
    assert f"user=<{USER}>, method=XOAUTH2" in tls_dovecot.log_text()


def test_a_rejected_xoauth2_token_is_an_auth_failure(tls_dovecot, pki, bus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    token_file = tmp_path / "token"
    token_file.write_text("an-expired-token")
    conn = connector(tls_dovecot, bus, tmp_path, "INBOX", password=None, ca_file=pki.ca, oauth2_token_file=token_file)
    with pytest.raises(SourceAuthError, match="XOAUTH2 token rejected"):
        conn.connect()
    assert conn.health.auth_failures == 1
    assert "an-expired-token" in Introspection.seen
