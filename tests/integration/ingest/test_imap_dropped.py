"""Mail the IMAP server drops the connection on, against the real Dovecot with its default
``imap_fetch_failure = disconnect-immediately``: a mail file it cannot read (made unreadable under
the user's Maildir) ends the session whenever it is fetched. Over a few passes, each on a new
connection, the mail is isolated while the mail before it flows, counted only when it alone dropped
the connection while other mail was handed over, and dead-lettered after the bound (the real
``GiveUp()``, timed by an injected clock); a stopped server, or a connection that drops on every
body FETCH, counts nothing."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from frontdesk.bus.sqlite import SqliteBus
from frontdesk.errors import SourceError
from ingest.blobs import BlobStore
from ingest.imap import CheckpointStore, MailboxConnector
from ingest.mail.parse import MailLimits
from tests.conftest import DOVECOT_PASSWORD, unavailable
from tests.integration.ingest.test_imap import USER, box, by_uid, fill, records
from tests.integration.ingest.test_imap_refused import mail_file, mails, unseen

pytestmark = pytest.mark.dovecot
T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture()
def folder() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


def connector(server: Any, bus: SqliteBus, tmp_path: Path, folder: str, at: float, **over: object) -> MailboxConnector:
    """A connector as a new ``--once`` run would make it, its clock ``at`` seconds after T0."""
    return MailboxConnector(box(server, folder, **over), bus, CheckpointStore(tmp_path / "imap"),
                            BlobStore(tmp_path / "blobs"), MailLimits(), reconnect=(0.05, 0.2),
                            clock=lambda: T0 + timedelta(seconds=at))


def counted(tmp_path: Path, folder: str) -> dict[str, Any]:
    """The saved counts and suspects of ``folder`` (empty if nothing was saved)."""
    path = CheckpointStore(tmp_path / "imap").state_path("support", folder, ".refused")
    return json.loads(path.read_text()) if path.exists() else {"uids": {}, "suspects": []}


def test_a_mail_that_drops_the_connection_is_isolated_then_dead_lettered_while_the_rest_flows(  # type: ignore[no-untyped-def]
        dovecot_server, bus, tmp_path, folder) -> None:
    fill(dovecot_server, folder, mails(folder, 7))
    os.chmod(mail_file(dovecot_server, folder, 5), 0)
    with pytest.raises(SourceError):  # the batch [4, 5, 6] drops the connection: nothing is counted
        connector(dovecot_server, bus, tmp_path, folder, 0, batch=3).run_once()
    state = counted(tmp_path, folder)
    assert state["uids"] == {} and 5 in state["suspects"] and 4 not in state["suspects"], "4 was handed over"

    with pytest.raises(SourceError, match=r"UID 5 of imap:support/.*dropped the connection when it was fetched "
                                          r"alone \(pass 1;.*Internal error occurred"):
        connector(dovecot_server, bus, tmp_path, folder, 0, batch=3).run_once()
    assert sorted(by_uid(bus)) == [1, 2, 3, 4] and records(bus, bus.topics.deadletter) == [], "the mail before it"
    assert unseen(dovecot_server, folder) == [5, 6, 7]
    assert CheckpointStore(tmp_path / "imap").load("support", folder).last_uid == 4

    for attempt, at in ((2, 10), (3, 301)):  # nothing is handed over before 5 now: another mail witnesses
        with pytest.raises(SourceError, match=fr"UID 5 .*\(pass {attempt};"):
            connector(dovecot_server, bus, tmp_path, folder, at, batch=3).run_once()
        assert sorted(by_uid(bus)) == [1, 2, 3, 4], "not dead-lettered before the bound"

    last = connector(dovecot_server, bus, tmp_path, folder, 302, batch=3)
    assert last.run_once() == 3  # the dead letter of 5, then 6 and 7
    got = by_uid(bus)
    assert sorted(got) == [1, 2, 3, 4, 5, 6, 7] and [u for u, (kind, _) in got.items() if kind == "dead"] == [5]
    letter: Any = got[5][1]
    assert (letter.stage, letter.error_type, letter.value_b64) == ("ingest", "MailUnfetchable", "")
    assert letter.reason.startswith(f"UID 5 of imap:support/{folder}: the server dropped the connection whenever "
                                    "it was fetched alone in 3 passes since 2026-12-06 12:00:00 UTC")
    assert "Internal error occurred" in letter.reason, "the server's last word"
    assert last.checkpoints.load("support", folder).last_uid == 7 and last.health.dead_lettered == 1
    assert unseen(dovecot_server, folder) == [], "flagged Seen, left where it is"
    assert last.run_once() == 0


def test_a_mail_the_server_drops_the_connection_on_describing_is_isolated_too(  # type: ignore[no-untyped-def]
        dovecot_server, bus, tmp_path, folder) -> None:
    """Delivered by an MDA (no size in the file name), unreadable: Dovecot drops the connection on
    the FETCH of sizes already, before any body is asked for."""
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.create_folder(folder)
    new = dovecot_server.maildir(USER) / f".{folder}" / "new"
    for i, raw in enumerate(mails(folder, 4), 1):
        path = new / f"1796000000.M{i}P1.mda"
        path.write_bytes(raw)
        if os.geteuid() == 0:
            os.chown(path, dovecot_server.mail_uid, dovecot_server.mail_gid)
    os.chmod(new / "1796000000.M3P1.mda", 0)
    with pytest.raises(SourceError):
        connector(dovecot_server, bus, tmp_path, folder, 0).run_once()
    assert counted(tmp_path, folder)["uids"] == {} and records(bus, bus.topics.inbound) == []
    for attempt, at in ((1, 0), (2, 10), (3, 301)):
        with pytest.raises(SourceError, match=fr"UID 3 .*dropped the connection.*\(pass {attempt};"):
            connector(dovecot_server, bus, tmp_path, folder, at).run_once()
        assert sorted(by_uid(bus)) == [1, 2]
    assert connector(dovecot_server, bus, tmp_path, folder, 302).run_once() == 2
    got = by_uid(bus)
    assert sorted(u for u, (kind, _) in got.items() if kind == "inbound") == [1, 2, 4]
    assert "dropped the connection whenever it was fetched alone" in got[3][1].reason  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Dovecot of this module's own (default ``imap_fetch_failure``), to stop and start."""
    from tests.harness.dovecot import DovecotServer, find_dovecot

    binary, reason = find_dovecot()
    if binary is None:
        unavailable("Dovecot IMAP", reason)
    server = DovecotServer(tmp_path_factory.mktemp("dovecot-stopped"))
    server.add_user(USER, DOVECOT_PASSWORD)
    with server:
        yield server


def test_a_stopped_server_counts_nothing_against_any_mail(own_server, bus, tmp_path, folder) -> None:  # type: ignore[no-untyped-def]
    fill(own_server, folder, mails(folder, 3))
    os.chmod(mail_file(own_server, folder, 2), 0)
    with pytest.raises(SourceError):
        connector(own_server, bus, tmp_path, folder, 0).run_once()
    assert counted(tmp_path, folder)["uids"] == {} and 2 in counted(tmp_path, folder)["suspects"]
    own_server.stop()
    try:
        conn = connector(own_server, bus, tmp_path, folder, 3600)
        stop = threading.Event()
        worker = threading.Thread(target=conn.run, args=(stop,))
        worker.start()
        deadline = time.monotonic() + 10
        while conn.health.consecutive_failures < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        worker.join(timeout=10)
        assert conn.health.consecutive_failures >= 4 and "cannot connect" in (conn.health.last_error or "")
        assert counted(tmp_path, folder)["uids"] == {}, "an outage is no mail's fault"
    finally:
        own_server.start()
    with pytest.raises(SourceError, match=r"UID 2 .*\(pass 1;"):  # back: counting starts from 0
        connector(own_server, bus, tmp_path, folder, 3600).run_once()
    assert sorted(by_uid(bus)) == [1] and records(bus, bus.topics.deadletter) == []


class BodyCuttingProxy:
    """TCP proxy to Dovecot that drops the connection whenever the client asks for a body."""

    def __init__(self, port: int) -> None:
        self.target, self.cuts = port, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.sock.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and b"BODY.PEEK[" in data:
                    self.cuts += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


def test_a_connection_that_drops_on_every_fetch_counts_nothing(dovecot_server, bus, tmp_path,  # type: ignore[no-untyped-def]
                                                                folder) -> None:
    """Every mail is fine; the way to the server drops every body FETCH, the witnesses' too. Nothing
    is counted or dead-lettered, however long it lasts; once the way is clear, everything flows."""
    fill(dovecot_server, folder, mails(folder, 2))
    assert connector(dovecot_server, bus, tmp_path, folder, 0).run_once() == 2
    with IMAPClient(dovecot_server.host, dovecot_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.append(folder, mails(folder, 4)[2])
        imap.append(folder, mails(folder, 4)[3])
    proxy = BodyCuttingProxy(dovecot_server.port)
    for at in (0, 200, 400, 600, 800):
        with pytest.raises(SourceError):
            connector(dovecot_server, bus, tmp_path, folder, at, port=proxy.port).run_once()
    assert proxy.cuts >= 5 and counted(tmp_path, folder)["uids"] == {}
    assert records(bus, bus.topics.deadletter) == [] and sorted(by_uid(bus)) == [1, 2]
    assert connector(dovecot_server, bus, tmp_path, folder, 1000).run_once() == 2
    assert sorted(by_uid(bus)) == [1, 2, 3, 4] and records(bus, bus.topics.deadletter) == []
    assert unseen(dovecot_server, folder) == []
