"""The mails of ``bench.intake``: the MIME corpus cycled to N distinct mails, and the Dovecot folders
holding them (filled by APPEND, read back by UID and \\Seen state)."""

from __future__ import annotations

import re

from imapclient import IMAPClient

from tests.fixtures.mail.corpus import build_corpus
from tests.harness.dovecot import DovecotServer

USER, PASSWORD = "bench", "bench-secret"
MAX_MAIL = 1024 * 1024
APPEND_BATCH = 200

_HEADER_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_MESSAGE_ID = re.compile(rb"(?i)(?:^|(?<=[\r\n]))message-id[ \t]*:[ \t]*(?:\r?\n[ \t]+)?")


def unique_copy(raw: bytes, tag: str) -> bytes:
    """``raw`` with ``tag`` prefixed to its top-level Message-ID (a Message-ID added if it has none)."""
    end = _HEADER_END.search(raw)
    header_end = end.start() if end else len(raw)
    match = _MESSAGE_ID.search(raw, 0, header_end)
    if match is not None:  # "<id>" -> "<tag.id>", a bare "id" -> "tag.id"
        at = match.end() + (raw[match.end() : match.end() + 1] == b"<")
        return raw[:at] + tag.encode() + b"." + raw[at:]
    head = raw[: header_end + 2]
    eol = b"\r\n" if b"\r\n" in head else b"\n" if b"\n" in head else b"\r"
    return b"Message-ID: <" + tag.encode() + b"@bench.frontdesk.invalid>" + eol + raw


def bench_mails(n: int) -> list[bytes]:
    corpus = [m.raw for m in build_corpus()
              if not m.limits and not m.rejected and m.raw.strip() and len(m.raw) <= MAX_MAIL]
    return [unique_copy(corpus[i % len(corpus)], f"b{i:07d}") for i in range(n)]


def fill(server: DovecotServer, folder: str, mails: list[bytes]) -> int:
    """Create ``folder`` with ``mails``; returns their total size as the server serves them."""
    with IMAPClient(server.host, server.port, ssl=False, timeout=120) as imap:
        imap.login(USER, PASSWORD)
        imap.create_folder(folder)
        for start in range(0, len(mails), APPEND_BATCH):
            imap.multiappend(folder, mails[start : start + APPEND_BATCH])
        exists = imap.select_folder(folder, readonly=True)[b"EXISTS"]
        if exists != len(mails):
            raise RuntimeError(f"{folder}: {exists} mails stored, {len(mails)} appended")
        sizes = imap.fetch(imap.search(["ALL"]), ["RFC822.SIZE"])
        return sum(item[b"RFC822.SIZE"] for item in sizes.values())


def folder_uids(server: DovecotServer, folder: str) -> set[int]:
    with IMAPClient(server.host, server.port, ssl=False, timeout=120) as imap:
        imap.login(USER, PASSWORD)
        imap.select_folder(folder, readonly=True)
        return set(imap.search(["ALL"]))


def unseen(server: DovecotServer, folder: str) -> int:
    with IMAPClient(server.host, server.port, ssl=False, timeout=120) as imap:
        imap.login(USER, PASSWORD)
        imap.select_folder(folder, readonly=True)
        return len(imap.search(["UNSEEN"]))
