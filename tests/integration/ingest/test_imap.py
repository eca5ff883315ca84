"""The IMAP connector against the real Dovecot: corpus import, IDLE, crashes, dropped connections."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from imapclient import IMAPClient

from frontdesk.bus.base import Bus, Record
from frontdesk.bus.sqlite import SqliteBus
from frontdesk.codec import decode
from frontdesk.messages import DeadLetter, InboundMessage
from frontdesk.errors import BusUnavailable
from ingest.blobs import BlobStore, BlobWriteFailed
from ingest.imap import CheckpointStore, MailboxConnector
from ingest.imap_settings import MailboxSettings
from ingest.mail.parse import MailLimits
from tests.conftest import DOVECOT_PASSWORD
from tests.harness.topics import read_topic
from tests.fixtures.mail.corpus import CorpusMail, build_corpus

pytestmark = pytest.mark.dovecot
USER = "support"


def corpus() -> list[CorpusMail]:
    """The MIME corpus with default limits, less the zero-byte mail no IMAP server stores."""
    return [m for m in build_corpus() if not m.limits and m.raw.strip()]


def fill(server, folder: str, raws: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    with IMAPClient(server.host, server.port, ssl=False, timeout=30) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.create_folder(folder)
        for start in range(0, len(raws), 100):
            imap.multiappend(folder, raws[start : start + 100])
        assert imap.select_folder(folder)[b"EXISTS"] == len(raws)


def box(server, folder: str, **over: object) -> MailboxSettings:  # type: ignore[no-untyped-def]
    fields = dict(name="support", host=server.host, port=server.port, security="none", username=USER,
                  password=DOVECOT_PASSWORD, folders=(folder,), batch=100, poll_interval_s=1.0)
    fields.update(over)
    return MailboxSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture()
def folder() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def connector(server, bus: SqliteBus, tmp_path: Path, folder: str, **over: object) -> MailboxConnector:  # type: ignore[no-untyped-def]
    return MailboxConnector(box(server, folder, **over), bus, CheckpointStore(tmp_path / "imap"),
                            BlobStore(tmp_path / "blobs"), MailLimits(), reconnect=(0.2, 1.0))


def records(bus: Bus, topic: str) -> list[Record]:
    return read_topic(bus, topic)


def by_uid(bus: SqliteBus) -> dict[int, tuple[str, object]]:
    out: dict[int, tuple[str, object]] = {}
    for r in records(bus, bus.topics.inbound):
        out[int(r.header("frontdesk-imap-uid"))] = ("inbound", decode(r.value, InboundMessage))
    for r in records(bus, bus.topics.deadletter):
        out[int(r.header("frontdesk-imap-uid"))] = ("dead", decode(r.value, DeadLetter))
    return out


def test_corpus_is_imported_exactly_once_with_correct_text(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    mails = corpus()
    assert len(mails) >= 300
    fill(dovecot_server, folder, [m.raw for m in mails])
    conn = connector(dovecot_server, bus, tmp_path, folder)
    assert conn.run_once() == len(mails)
    got = by_uid(bus)
    assert sorted(got) == list(range(1, len(mails) + 1)), "every UID exactly once"
    for uid, mail in enumerate(mails, 1):
        kind, item = got[uid]
        if b"\x00" in mail.raw:
            continue  # Dovecot stores NUL bytes as 0x80: the mail it serves is not the corpus mail
        if mail.rejected:
            assert kind == "dead" and mail.rejected in item.reason, (mail.name, item)  # type: ignore[attr-defined]
            continue
        assert kind == "inbound", (mail.name, item)
        msg: InboundMessage = item  # type: ignore[assignment]
        if mail.subject is not None:
            assert msg.subject == mail.subject, mail.name
        if mail.sender is not None:
            assert msg.sender.address == mail.sender, mail.name
        for needle in mail.text_has:
            assert needle in msg.text, (mail.name, needle)
        for needle in mail.text_lacks:
            assert needle not in msg.text and needle in msg.full_text, (mail.name, needle)
        # IMAP stores lines with CRLF, which changes the bytes of 8-bit text attachments only.
        checked = [a for a in mail.attachments if a.sha256 and not a.content_type.startswith("text/")]
        assert {a.sha256 for a in checked} <= {a.sha256 for a in msg.attachments}, mail.name
        assert len(msg.attachments) == len(mail.attachments), mail.name
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.select_folder(folder, readonly=True)
        assert imap.search(["UNSEEN"]) == [], "imported mail (rejected too) is flagged"
    assert conn.run_once() == 0, "a second pass imports nothing"


def test_idle_puts_a_new_mail_on_the_bus_within_two_seconds(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    first, second = (m.raw for m in corpus()[:2])
    fill(dovecot_server, folder, [first])
    conn = connector(dovecot_server, bus, tmp_path, folder)
    stop = threading.Event()
    worker = threading.Thread(target=conn.run, args=(stop,))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while len(records(bus, bus.topics.inbound)) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
            imap.login(USER, DOVECOT_PASSWORD)
            imap.append(folder, second)
            appended = time.monotonic()  # the server has the mail: the 2 s start now
        while len(records(bus, bus.topics.inbound)) < 2 and time.monotonic() - appended < 5:
            time.sleep(0.05)
        latency = time.monotonic() - appended
    finally:
        stop.set()
        worker.join(timeout=10)
    assert len(records(bus, bus.topics.inbound)) == 2 and latency < 2.0, latency


def test_mail_announced_during_a_pass_is_imported_before_idle(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    """A server announces a new message once (untagged EXISTS). Mail that arrives while a pass
    fetches and flags is announced in those replies; IDLE, entered afterwards, never reports it —
    found in bench.pipeline, where 600 of 2,000 mails waited for the 25-minute IDLE renewal."""
    first, second = (m.raw for m in corpus()[:2])
    fill(dovecot_server, folder, [first])
    conn = connector(dovecot_server, bus, tmp_path, folder)
    after_import = conn._after_import
    appended: list[float] = []

    def flag_while_mail_arrives(client: IMAPClient, uids: list[int]) -> None:
        if not appended:
            with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
                imap.login(USER, DOVECOT_PASSWORD)
                imap.append(folder, second)
            appended.append(time.monotonic())
        after_import(client, uids)  # its reply carries "* 2 EXISTS"

    conn._after_import = flag_while_mail_arrives  # type: ignore[method-assign]
    stop = threading.Event()
    worker = threading.Thread(target=conn.run, args=(stop,))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while len(records(bus, bus.topics.inbound)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert appended and len(records(bus, bus.topics.inbound)) == 2
    assert time.monotonic() - appended[0] < 20


def test_health_shows_the_oldest_mail_not_yet_handled(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    base = datetime(2026, 11, 1, 12, tzinfo=UTC)
    dates = [base + timedelta(hours=h) for h in (5, 1, 4, 3, 6, 2)]  # INTERNALDATEs, not in UID order
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.create_folder(folder)
        for mail, date in zip([m for m in corpus() if not m.rejected], dates, strict=False):
            imap.append(folder, mail.raw, msg_time=date)
    conn = connector(dovecot_server, bus, tmp_path, folder, batch=2)
    seen = []
    flag = conn._after_import

    def look_and_flag(client: IMAPClient, uids: list[int]) -> None:
        seen.append(conn.health.oldest_unprocessed_at)  # what a metrics scrape reads while a batch is flagged
        flag(client, uids)

    conn._after_import = look_and_flag  # type: ignore[method-assign]
    assert conn.run_once() == 6
    assert seen == [min(dates), min(dates[2:]), min(dates[4:])] == [dates[1], dates[5], dates[5]]
    assert conn.health.oldest_unprocessed_at is None, "caught up"


def test_an_unwritable_blob_store_publishes_and_flags_nothing(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    fill(dovecot_server, folder, [m.raw for m in corpus() if not m.rejected][:5])
    (tmp_path / "not-a-dir").write_bytes(b"x")
    broken = MailboxConnector(box(dovecot_server, folder), bus, CheckpointStore(tmp_path / "imap"),
                              BlobStore(tmp_path / "not-a-dir"), MailLimits())
    with pytest.raises(BlobWriteFailed):  # transient: the run loop retries with backoff
        broken.run_once()
    assert records(bus, bus.topics.inbound) == [] and records(bus, bus.topics.deadletter) == []
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.select_folder(folder, readonly=True)
        assert len(imap.search(["UNSEEN"])) == 5
    assert connector(dovecot_server, bus, tmp_path, folder).run_once() == 5


def test_a_refused_publish_flags_nothing_after_it_and_the_next_pass_resumes(dovecot_server, bus, tmp_path,  # type: ignore[no-untyped-def]
                                                                           folder) -> None:
    """Batches are published on a thread while the next is fetched: the bus refusing the third batch
    fails the pass; the two acknowledged batches are flagged and checkpointed, nothing after them."""
    mails = [m.raw for m in corpus() if not m.rejected][:10]
    fill(dovecot_server, folder, mails)
    conn = connector(dovecot_server, bus, tmp_path, folder, batch=2)
    publish, calls = bus.publish, []

    def refuse_the_third(records: list) -> None:  # type: ignore[type-arg]
        calls.append(len(records))
        if len(calls) == 3:
            raise BusUnavailable("broker gone")
        publish(records)

    bus.publish = refuse_the_third  # type: ignore[method-assign]
    with pytest.raises(BusUnavailable):
        conn.run_once()
    assert len(calls) == 3 and len(records(bus, bus.topics.inbound)) == 4
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.select_folder(folder, readonly=True)
        uids = sorted(imap.search(["ALL"]))
        assert sorted(imap.search(["UNSEEN"])) == uids[4:]
    assert conn.checkpoints.load("support", folder).last_uid == uids[3]
    bus.publish = publish  # type: ignore[method-assign]
    assert conn.run_once() == 6
    assert sorted(by_uid(bus)) == uids and len(records(bus, bus.topics.inbound)) == 10


def test_kill_between_publish_and_flag_loses_nothing(dovecot_server, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    mails = [m for m in corpus() if not m.rejected][:250]
    fill(dovecot_server, folder, [m.raw for m in mails])
    config = tmp_path / "frontdesk.yaml"
    config.write_text(yaml.safe_dump({"imap": {"mailboxes": [
        {**box(dovecot_server, folder).model_dump(mode="json"), "password": DOVECOT_PASSWORD}]}}))
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path / "var"), "FRONTDESK_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "frontdesk", "--config", str(config), "ingest", "imap", "--once"]
    crashed = subprocess.run(cmd, env={**env, "FRONTDESK_CRASH_AT": "imap.after_publish:2"}, capture_output=True,
                             text=True, timeout=120)
    assert crashed.returncode == -9, crashed.stderr[-1500:]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "published" in done.stdout, done.stderr[-1500:]
    bus = SqliteBus(tmp_path / "var" / "bus.sqlite3")
    msgs = [decode(r.value, InboundMessage) for r in records(bus, bus.topics.inbound)]
    uids = [int(r.header("frontdesk-imap-uid")) for r in records(bus, bus.topics.inbound)]
    assert set(uids) == set(range(1, len(mails) + 1)), "nothing lost"
    assert len(msgs) == len(mails) + 100, "the second batch (published, not flagged) came again"
    first = {}
    for uid, m in zip(uids, msgs, strict=True):
        assert first.setdefault(uid, m.id) == m.id, "a duplicate carries the same id"


class DroppingProxy:
    """TCP proxy to Dovecot that cuts the first connection after ``cut_after`` server bytes."""

    def __init__(self, port: int, cut_after: int) -> None:
        self.target, self.cut_after, self.connections = port, cut_after, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.sock.accept()
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.target))
            limit = self.cut_after if self.connections == 1 else None
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                sent += len(data)
                if limit is not None and sent > limit:
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


def test_connection_dropped_mid_fetch_recovers(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    mails = [m for m in corpus() if not m.rejected and len(m.raw) < 200_000][:200]
    fill(dovecot_server, folder, [m.raw for m in mails])
    proxy = DroppingProxy(dovecot_server.port, cut_after=sum(len(m.raw) for m in mails[:60]))
    conn = connector(dovecot_server, bus, tmp_path, folder, port=proxy.port)
    stop = threading.Event()
    worker = threading.Thread(target=conn.run, args=(stop,))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while len({r.key for r in records(bus, bus.topics.inbound)}) < len(mails) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert proxy.connections >= 2 and conn.health.consecutive_failures == 0 and conn.health.last_error
    uids = {int(r.header("frontdesk-imap-uid")) for r in records(bus, bus.topics.inbound)}
    assert uids == set(range(1, len(mails) + 1))
    assert records(bus, bus.topics.deadletter) == [], "a dropped connection is no refused mail"


def test_uidvalidity_change_rescans_without_new_ids(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    mails = [m for m in corpus() if not m.rejected][:30]
    fill(dovecot_server, folder, [m.raw for m in mails])
    conn = connector(dovecot_server, bus, tmp_path, folder)
    conn.run_once()
    ids = {r.key for r in records(bus, bus.topics.inbound)}
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.delete_folder(folder)
    fill(dovecot_server, folder, [m.raw for m in mails])
    assert conn.run_once() == len(mails)
    again = [r.key for r in records(bus, bus.topics.inbound)]
    assert len(again) == 2 * len(mails) and set(again) == ids


def test_two_mails_with_one_message_id_get_two_ids_and_a_reimport_the_same(dovecot_server, bus, tmp_path,  # type: ignore[no-untyped-def]
                                                                         folder) -> None:
    """A web form sends every mail with the same Message-ID. Keyed on the Message-ID alone, the second
    mail had the first one's id, and dispatch dropped it as a redelivery."""
    form = ("From: Web form <form@site.example>\r\nTo: support@bet.az\r\nSubject: Contact form\r\n"
            "Message-ID: <contact-form@site.example>\r\n\r\n")
    fill(dovecot_server, folder, [f"{form}My deposit is missing.\r\n".encode(),
                                  f"{form}My account was hacked!\r\n".encode()])
    assert connector(dovecot_server, bus, tmp_path, folder).run_once() == 2
    first = {uid: msg for uid, (_, msg) in by_uid(bus).items()}
    assert [m.external_id for m in first.values()] == ["<contact-form@site.example>"] * 2  # type: ignore[attr-defined]
    assert first[1].id != first[2].id and "hacked" in first[2].text  # type: ignore[attr-defined]
    # The connector's state is lost and the mail unread again: the same mails are imported again.
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.select_folder(folder)
        imap.remove_flags(imap.search(["ALL"]), [b"\\Seen"], silent=True)
    again = MailboxConnector(box(dovecot_server, folder), bus, CheckpointStore(tmp_path / "imap-lost"),
                             BlobStore(tmp_path / "blobs"), MailLimits())
    assert again.run_once() == 2
    ids: dict[int, set[str]] = {}
    for r in records(bus, bus.topics.inbound):
        ids.setdefault(int(r.header("frontdesk-imap-uid")), set()).add(decode(r.value, InboundMessage).id)
    assert ids == {1: {first[1].id}, 2: {first[2].id}}, "each mail twice, under its own id both times"  # type: ignore[attr-defined]


def read_except(server, folder: str, unread: set[int]) -> list[int]:  # type: ignore[no-untyped-def]
    """Mark every mail in ``folder`` read but the ``unread`` UIDs (as a person reading mail would)."""
    with IMAPClient(server.host, server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.select_folder(folder)
        uids = sorted(imap.search(["ALL"]))
        imap.add_flags([u for u in uids if u not in unread], [b"\\Seen"], silent=True)
        return uids


def test_first_start_imports_the_unread_mail_and_what_comes_later_never_the_read_history(  # type: ignore[no-untyped-def]
        dovecot_server, bus, tmp_path, folder) -> None:
    mails = [m.raw for m in corpus() if not m.rejected][:32]
    fill(dovecot_server, folder, mails[:30])
    read_except(dovecot_server, folder, {5, 12})
    conn = connector(dovecot_server, bus, tmp_path, folder)
    assert conn.run_once() == 2 and sorted(by_uid(bus)) == [5, 12]
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.append(folder, mails[30], flags=[b"\\Seen"])  # new mail counts whatever its flags
        imap.append(folder, mails[31])
    assert conn.run_once() == 2 and sorted(by_uid(bus)) == [5, 12, 31, 32]
    assert conn.run_once() == 0 and len(records(bus, bus.topics.inbound)) == 4
    assert conn.checkpoints.load("support", folder).last_uid == 32


def test_nothing_unread_at_first_start_imports_nothing_then_or_later(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    fill(dovecot_server, folder, [m.raw for m in corpus() if not m.rejected][:20])
    read_except(dovecot_server, folder, set())
    conn = connector(dovecot_server, bus, tmp_path, folder)
    assert [conn.run_once() for _ in range(3)] == [0, 0, 0] and records(bus, bus.topics.inbound) == []
    cp = conn.checkpoints.load("support", folder)
    assert cp.last_uid == 20 and cp.scan_until is None


def test_a_scan_cut_short_resumes_with_the_unread_mail_only(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    fill(dovecot_server, folder, [m.raw for m in corpus() if not m.rejected][:30])
    read_except(dovecot_server, folder, {3, 10, 20, 27})
    conn = connector(dovecot_server, bus, tmp_path, folder, batch=1)
    publish, calls = bus.publish, []

    def refuse_the_second(records: list) -> None:  # type: ignore[type-arg]
        calls.append(len(records))
        if len(calls) == 2:
            raise BusUnavailable("broker gone")
        publish(records)

    bus.publish = refuse_the_second  # type: ignore[method-assign]
    with pytest.raises(BusUnavailable):
        conn.run_once()
    cp = conn.checkpoints.load("support", folder)
    assert (cp.last_uid, cp.scan_until) == (3, 30)
    bus.publish = publish  # type: ignore[method-assign]
    assert conn.run_once() == 3 and sorted(by_uid(bus)) == [3, 10, 20, 27]
    assert conn.run_once() == 0 and conn.checkpoints.load("support", folder).last_uid == 30


def test_backfill_imports_read_mail_since_the_date_too(dovecot_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    mails = [m.raw for m in corpus() if not m.rejected][:6]
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.create_folder(folder)
        for raw, days_ago, seen in zip(mails, (40, 35, 30, 5, 3, 1), (True, False, True, True, True, False)):
            imap.append(folder, raw, flags=[b"\\Seen"] if seen else [],
                        msg_time=datetime.now(UTC) - timedelta(days=days_ago))
    since = (datetime.now(UTC) - timedelta(days=10)).date()
    conn = connector(dovecot_server, bus, tmp_path, folder, backfill_since=since)
    assert conn.run_once() == 4 and sorted(by_uid(bus)) == [2, 4, 5, 6]  # unread, or read since the date
    assert conn.run_once() == 0


def test_parse_mail_cli(tmp_path: Path) -> None:
    mail = next(m for m in corpus() if m.attachments and not m.rejected)
    path = tmp_path / "m.eml"
    path.write_bytes(mail.raw)
    out = subprocess.run([sys.executable, "-m", "frontdesk", "parse-mail", str(path), "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    view = json.loads(out.stdout)
    assert {"subject", "sender", "text", "full_text", "attachments", "auto_submitted", "bounce", "bulk"} <= set(view)
    assert [a["sha256"] for a in view["attachments"]] == [a.sha256 for a in mail.attachments]
    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"x" * (26 * 1024 * 1024))
    out = subprocess.run([sys.executable, "-m", "frontdesk", "parse-mail", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "limit" in out.stderr
