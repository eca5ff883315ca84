"""The hostile mail corpus through the real IMAP connector and the real Dovecot.

Every hostile mail appended to a folder becomes exactly one record: an inbound message that keeps
the corpus expectations, or a dead-letter record (stage ``ingest``) with the reason. All of them
are flagged, so a second pass imports nothing (no loop), and the pass ends in bounded time.
"""

from __future__ import annotations

import base64
import resource
import time
import uuid
from pathlib import Path

import pytest
from imapclient import IMAPClient

from frontdesk.bus.base import Topics
from frontdesk.bus.kafka import KafkaBus
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.deadletter import TRUNCATED_HEADER
from frontdesk.messages import DeadLetter, InboundMessage
from tests.conftest import DOVECOT_PASSWORD
from tests.fixtures.hostile.mail import HostileMail, build_hostile_mails, violations
from frontdesk.settings import KafkaSettings
from tests.integration.ingest.test_imap import USER, by_uid, connector, fill, records

pytestmark = pytest.mark.dovecot
MAILS = [m for m in build_hostile_mails() if m.imap]


def served_as_sent(mail: HostileMail) -> bool:
    """Dovecot stores NUL as 0x80 and normalises bare CR/LF line ends: such a mail arrives changed."""
    lines = mail.raw.replace(b"\r\n", b"")
    return b"\x00" not in mail.raw and b"\r" not in lines and b"\n" not in lines


@pytest.mark.timeout(600)
def test_hostile_mail_is_imported_once_dead_lettered_with_reasons_and_never_loops(dovecot_server,  # type: ignore[no-untyped-def]
                                                                                  tmp_path: Path) -> None:
    folder = f"hostile{uuid.uuid4().hex[:8]}"
    fill(dovecot_server, folder, [m.raw for m in MAILS])
    bus = SqliteBus(tmp_path / "bus.sqlite3")
    bus.ensure_topics()
    conn = connector(dovecot_server, bus, tmp_path, folder)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.monotonic()
    assert conn.run_once() == len(MAILS)
    seconds = time.monotonic() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    got = by_uid(bus)
    assert sorted(got) == list(range(1, len(MAILS) + 1)), "every UID exactly once"
    problems = {}
    for uid, mail in enumerate(MAILS, 1):
        kind, item = got[uid]
        if mail.rejected is not None:
            assert kind == "dead", (mail.name, item)
            letter: DeadLetter = item  # type: ignore[assignment]
            assert letter.stage == "ingest" and mail.rejected in letter.reason, (mail.name, letter.reason)
            continue
        assert kind == "inbound", (mail.name, item)
        msg: InboundMessage = item  # type: ignore[assignment]
        found = violations(mail, msg)
        if not served_as_sent(mail):  # only the invariants: the fragments may have been rewritten
            found = [f for f in found if "missing from the text" not in f and not f.startswith("subject")]
        if found:
            problems[mail.name] = found
    print(f"\nhostile IMAP: {len(MAILS)} mails, {sum(m.rejected is not None for m in MAILS)} dead-lettered, "
          f"{seconds:.1f} s, RSS +{grown / 2**20:.0f} MiB, rewritten by Dovecot: "
          f"{[m.name for m in MAILS if not served_as_sent(m)]}")
    assert problems == {}
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.select_folder(folder, readonly=True)
        assert imap.search(["UNSEEN"]) == [], "rejected mail is flagged too"
    assert conn.run_once() == 0, "a second pass imports nothing"
    assert seconds < 180, f"{len(MAILS)} hostile mails took {seconds:.0f} s"
    assert grown < 1024 * 1024 * 1024, f"the connector process grew by {grown / 2**20:.0f} MiB"
    bus.close()


@pytest.mark.kafka
def test_a_rejected_mail_near_a_megabyte_is_dead_lettered_cut_to_fit_kafka_and_the_mailbox_goes_on(  # type: ignore[no-untyped-def]
        dovecot_server, kafka_broker, tmp_path: Path) -> None:
    """Its dead letter (the raw mail, base64) would be over Kafka's ~1 MB record limit: it keeps what
    fits, says so, and the mail after it is imported in the same pass."""
    folded = b"\r\n ".join([b"x" * 990] * 900)  # a 0.9 MB Subject: over the 64 KiB header limit
    big = b"From: a@example.az\r\nSubject: " + folded + b"\r\nMessage-ID: <big@example.az>\r\n\r\nsalam\r\n"
    small = b"From: b@example.az\r\nSubject: kart\r\nMessage-ID: <small@example.az>\r\n\r\npul gelmedi\r\n"
    folder = f"big{uuid.uuid4().hex[:8]}"
    fill(dovecot_server, folder, [big, small])
    bus = KafkaBus(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap, linger_ms=2),
                   Topics(prefix=f"t{uuid.uuid4().hex[:8]}."))
    bus.ensure_topics()
    try:
        assert connector(dovecot_server, bus, tmp_path, folder, batch=1).run_once() == 2
        got = by_uid(bus)
        dead = [r for r in records(bus, bus.topics.deadletter)]
    finally:
        bus.close()
    assert got[2][0] == "inbound" and got[2][1].subject == "kart"  # type: ignore[union-attr]
    kind, letter = got[1]
    assert kind == "dead" and "header" in letter.reason and "original" in letter.reason  # type: ignore[union-attr]
    assert big.startswith(base64.b64decode(letter.value_b64)[:100_000])  # type: ignore[union-attr]
    assert int(dead[0].header(TRUNCATED_HEADER)) >= len(big) and len(dead[0].value) <= bus.max_record_bytes
