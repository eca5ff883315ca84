"""Mail the IMAP server will not hand over, against the real Dovecot: a mail file it cannot read
(made unreadable under the user's Maildir) is answered NO when Dovecot runs with
``imap_fetch_failure = no-after``, and drops the connection with its default (isolated and counted
as tests/integration/ingest/test_imap_dropped.py shows); responses that cannot be read or lack the
mail come from a proxy that rewrites one line of Dovecot's answer."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from frontdesk.bus.sqlite import SqliteBus
from frontdesk.errors import SourceError
from ingest.blobs import BlobStore
from ingest.imap import CheckpointStore, MailboxConnector
from ingest.imap_isolate import GiveUp
from ingest.mail.parse import MailLimits
from tests.conftest import DOVECOT_PASSWORD, unavailable
from tests.integration.ingest.test_imap import USER, box, by_uid, fill, records

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Dovecot that answers NO for a mail it cannot read (its default drops the connection)."""
    from tests.harness.dovecot import DovecotServer, find_dovecot

    binary, reason = find_dovecot()
    if binary is None:
        unavailable("Dovecot IMAP", reason)
    server = DovecotServer(tmp_path_factory.mktemp("dovecot-no-after"), extra_config="imap_fetch_failure = no-after")
    server.add_user(USER, DOVECOT_PASSWORD)
    with server:
        yield server


@pytest.fixture()
def folder() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


def mails(folder: str, n: int) -> list[bytes]:
    return [(f"From: customer{i}@mail.az\r\nTo: support@bet.az\r\nSubject: Mail {i}\r\n"
             f"Message-ID: <m{i}.{folder}@mail.az>\r\n\r\nMy withdrawal {i} has not arrived.\r\n").encode()
            for i in range(1, n + 1)]


def mail_file(server: Any, folder: str, n: int) -> Path:
    """The Maildir file of the mail with ``Subject: Mail n``."""
    home = server.maildir(USER) / f".{folder}"
    return next(p for sub in ("new", "cur") for p in (home / sub).iterdir()
                if f"Subject: Mail {n}\n".encode() in p.read_bytes().replace(b"\r\n", b"\n"))


def connector(server: Any, bus: SqliteBus, tmp_path: Path, folder: str, give_up: GiveUp, **over: object) -> MailboxConnector:
    return MailboxConnector(box(server, folder, **over), bus, CheckpointStore(tmp_path / "imap"),
                            BlobStore(tmp_path / "blobs"), MailLimits(), give_up=give_up)


def unseen(server: Any, folder: str) -> list[int]:
    with IMAPClient(server.host, server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.select_folder(folder, readonly=True)
        return sorted(imap.search(["UNSEEN"]))


def test_a_mail_the_server_refuses_waits_out_the_bound_then_is_dead_lettered_and_the_rest_flows(  # type: ignore[no-untyped-def]
        refusing_server, bus, tmp_path, folder) -> None:
    fill(refusing_server, folder, mails(folder, 6))
    os.chmod(mail_file(refusing_server, folder, 4), 0)
    with pytest.raises(SourceError, match=r"UID 4 of imap:support/.* refused by the server \(pass 1.*Internal error"):
        connector(refusing_server, bus, tmp_path, folder, GiveUp(2, 0.0), batch=2).run_once()
    assert sorted(by_uid(bus)) == [1, 2] and records(bus, bus.topics.deadletter) == [], "the batch before it flows"
    assert unseen(refusing_server, folder) == [3, 4, 5, 6]
    assert CheckpointStore(tmp_path / "imap").load("support", folder).last_uid == 2
    restarted = connector(refusing_server, bus, tmp_path, folder, GiveUp(2, 0.0), batch=2)  # the count survives
    assert restarted.run_once() == 4  # UIDs 3, 5 and 6, and the dead letter of 4
    got = by_uid(bus)
    assert sorted(got) == [1, 2, 3, 4, 5, 6] and [u for u, (kind, _) in got.items() if kind == "dead"] == [4]
    letter: Any = got[4][1]
    assert (letter.stage, letter.error_type, letter.value_b64) == ("ingest", "MailUnfetchable", "")
    assert f"UID 4 of imap:support/{folder}" in letter.reason and "refused to hand it over in 2 passes" in letter.reason
    assert "fetch failed: [SERVERBUG] Internal error occurred" in letter.reason, "the server's answer"
    assert unseen(refusing_server, folder) == [] and restarted.health.dead_lettered == 1
    assert restarted.checkpoints.load("support", folder).last_uid == 6
    assert restarted.run_once() == 0


@pytest.mark.parametrize("after_import", ["move", "delete"])
def test_a_mail_given_up_is_neither_moved_nor_deleted(refusing_server, bus, tmp_path, folder,  # type: ignore[no-untyped-def]
                                                       after_import: str) -> None:
    fill(refusing_server, folder, mails(folder, 4))
    os.chmod(mail_file(refusing_server, folder, 2), 0)
    conn = connector(refusing_server, bus, tmp_path, folder, GiveUp(1, 0.0), after_import=after_import,
                     move_to=f"{folder}-done" if after_import == "move" else None)
    if after_import == "move":
        with IMAPClient(refusing_server.host, refusing_server.port, ssl=False) as imap:
            imap.login(USER, DOVECOT_PASSWORD)
            imap.create_folder(f"{folder}-done")
    assert conn.run_once() == 4
    assert [u for u, (kind, _) in by_uid(bus).items() if kind == "dead"] == [2]
    with IMAPClient(refusing_server.host, refusing_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.select_folder(folder, readonly=True)
        assert imap.search(["ALL"]) == imap.search(["UNSEEN"]) == [2], "left where it was, as it was"
        if after_import == "move":
            assert imap.select_folder(f"{folder}-done", readonly=True)[b"EXISTS"] == 3


def test_a_mail_the_server_cannot_even_describe_is_dead_lettered(refusing_server, bus, tmp_path,  # type: ignore[no-untyped-def]
                                                                 folder) -> None:
    """Delivered by an MDA (no size in the file name), unreadable: Dovecot cannot answer RFC822.SIZE
    either, and drops a session that asks again for the mail it failed on, so the body is not asked for."""
    with IMAPClient(refusing_server.host, refusing_server.port, ssl=False) as imap:
        imap.login(USER, DOVECOT_PASSWORD)
        imap.create_folder(folder)
    new = refusing_server.maildir(USER) / f".{folder}" / "new"
    for i, raw in enumerate(mails(folder, 4), 1):
        path = new / f"1796000000.M{i}P1.mda"
        path.write_bytes(raw)
        if os.geteuid() == 0:
            os.chown(path, refusing_server.mail_uid, refusing_server.mail_gid)
    os.chmod(new / "1796000000.M3P1.mda", 0)
    conn = connector(refusing_server, bus, tmp_path, folder, GiveUp(1, 0.0))
    assert conn.run_once() == 4
    got = by_uid(bus)
    assert sorted(u for u, (kind, _) in got.items() if kind == "inbound") == [1, 2, 4]
    assert "Internal error occurred" in got[3][1].reason  # type: ignore[attr-defined]
    assert conn.health.consecutive_failures == 0


def test_a_mail_that_drops_the_connection_and_is_repaired_in_time_is_imported(dovecot_server, bus, tmp_path,  # type: ignore[no-untyped-def]
                                                                                folder) -> None:
    """Dovecot's default for a mail it cannot read is to drop the connection: the mail before it
    flows, and a mail readable again before the bound is imported like any other, never dead-lettered."""
    fill(dovecot_server, folder, mails(folder, 3))
    bad = mail_file(dovecot_server, folder, 2)
    os.chmod(bad, 0)
    conn = connector(dovecot_server, bus, tmp_path, folder, GiveUp())
    for _ in range(2):
        with pytest.raises(SourceError):
            conn.run_once()
    assert sorted(by_uid(bus)) == [1] and records(bus, bus.topics.deadletter) == []
    os.chmod(bad, 0o600)
    assert conn.run_once() == 2 and sorted(by_uid(bus)) == [1, 2, 3]
    assert records(bus, bus.topics.deadletter) == [] and unseen(dovecot_server, folder) == []


class RewritingProxy:
    """TCP proxy to Dovecot that replaces ``old`` by ``new`` in the server's response lines."""

    def __init__(self, port: int, old: bytes, new: bytes) -> None:
        self.target, self.old, self.new = port, old, new
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.sock.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rewrite: bool) -> None:
        pending = b""
        try:
            while data := src.recv(65536):
                if not rewrite:
                    dst.sendall(data)
                    continue
                lines, end, pending = (pending + data).rpartition(b"\r\n")  # only whole lines are rewritten
                if end:
                    dst.sendall((lines + end).replace(self.old, self.new))
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


@pytest.mark.parametrize(("new", "why"), [
    (b"(UID 3 BODY[] ((( {", "unreadable FETCH response: Tuple incomplete"),
    (b"(UID 3 BODY[] NIL X-FRONTDESK {", "OK without BODY[]"),
], ids=["malformed", "partial"])
def test_a_response_that_cannot_be_read_or_lacks_the_mail_is_a_refusal(dovecot_server, bus, tmp_path, folder,  # type: ignore[no-untyped-def]
                                                                       new: bytes, why: str) -> None:
    fill(dovecot_server, folder, mails(folder, 5))
    proxy = RewritingProxy(dovecot_server.port, b"(UID 3 BODY[] {", new)
    conn = connector(dovecot_server, bus, tmp_path, folder, GiveUp(2, 0.0), port=proxy.port)
    with pytest.raises(SourceError, match="UID 3"):
        conn.run_once()
    assert conn.run_once() == 5
    got = by_uid(bus)
    assert sorted(u for u, (kind, _) in got.items() if kind == "inbound") == [1, 2, 4, 5]
    assert why in got[3][1].reason  # type: ignore[attr-defined]
    assert unseen(dovecot_server, folder) == []
