"""The real-server fixtures work as the other integration tests expect (and stay up across use)."""

from __future__ import annotations

import smtplib
import threading
import time
from email.message import EmailMessage

import pytest
from imapclient import IMAPClient
from sqlalchemy import create_engine, text

from tests.conftest import DOVECOT_PASSWORD, SMTP_USERS


@pytest.mark.postgres
def test_postgres_keeps_committed_data_across_restart(postgres_server) -> None:  # type: ignore[no-untyped-def]
    url = postgres_server.create_database("harness_check", replace=True)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id int primary key, note text)"))
        conn.execute(text("INSERT INTO t VALUES (1, 'çıxarış гарантирован')"))
    engine.dispose()
    postgres_server.restart()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT note FROM t WHERE id = 1")).scalar_one() == "çıxarış гарантирован"
    engine.dispose()


@pytest.mark.dovecot
def test_dovecot_append_fetch_and_idle(dovecot_server) -> None:  # type: ignore[no-untyped-def]
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False, timeout=10) as imap:
        imap.login("harness", DOVECOT_PASSWORD)
        assert b"IDLE" in imap.capabilities()
        imap.select_folder("INBOX")
        imap.idle()
        appended_at = time.monotonic()
        threading.Thread(target=dovecot_server.append, args=("harness", _mail("idle check"))).start()
        responses = imap.idle_check(timeout=5)
        waited = time.monotonic() - appended_at
        imap.idle_done()
        assert any(r[1] == b"EXISTS" for r in responses) and waited < 2.0
        [uid] = imap.search(["SUBJECT", "idle check"])
        body = imap.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
        assert b"Subject: idle check" in body


@pytest.mark.smtp
def test_smtp_records_authenticated_starttls_mail_and_can_refuse(smtp_server) -> None:  # type: ignore[no-untyped-def]
    smtp_server.clear()
    user, password = next(iter(SMTP_USERS.items()))
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as client:
        client.starttls(context=smtp_server.client_ssl_context())
        client.login(user, password)
        client.sendmail("customer@example.az", ["support@example.az"], _mail("recorded"))
    [got] = smtp_server.wait_for(1, timeout=5)
    assert got.message["Subject"] == "recorded" and got.tls
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as client:
        client.starttls(context=smtp_server.client_ssl_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(user, "wrong")
    smtp_server.refuse(True)
    try:
        with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as client:
            client.starttls(context=smtp_server.client_ssl_context())
            client.login(user, password)
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail("customer@example.az", ["support@example.az"], _mail("refused"))
        assert info.value.smtp_code == 451
    finally:
        smtp_server.refuse(False)


def _mail(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "customer@example.az", "support@example.az", subject
    msg.set_content("Salam, pulum gəlmədi.")
    return bytes(msg)
