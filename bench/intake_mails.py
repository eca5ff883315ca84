"""The mails of ``bench.intake``: the MIME corpus cycled to N distinct mails, and the Dovecot folders
holding them (filled by APPEND, read back by UID and \\Seen state).

Every copy gets its own Message-ID and, as real mail has, its own MIME boundaries: a parser that
caches anything per boundary (the stdlib compiles a regex for each) must not look faster here
than it is on real mail. A copy whose renamed boundaries would change what Frontdesk reads from it
(checked once per corpus mail) keeps the original ones."""

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
_BOUNDARY = re.compile(rb'(?i)(boundary\s*=\s*)(?:"([^"\r\n]{1,60})"|([0-9A-Za-z\'()+_,./:=?-]{1,60})(?=[;\s]|$))')


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


def renamed_boundaries(raw: bytes, tag: str) -> bytes:
    """``raw`` with ``tag`` appended to each MIME boundary, in its parameter and delimiter lines."""
    renamed = raw
    for boundary in sorted({quoted or bare for _, quoted, bare in _BOUNDARY.findall(raw)}, key=len, reverse=True):
        new = boundary + b"." + tag.encode()
        delimiter = re.compile(rb"(?m)^--" + re.escape(boundary) + rb"(?=(?:--)?[ \t]*\r?$)")
        renamed = delimiter.sub(lambda _: b"--" + new, renamed)
        param = re.compile(rb'(?i)(boundary\s*=\s*)("?)' + re.escape(boundary) + rb'(?=\2(?:[;\s"]|$))')
        renamed = param.sub(lambda m: m.group(1) + m.group(2) + new, renamed)
    return renamed


def _reads_the_same(raw: bytes, renamed: bytes) -> bool:
    from ingest.mail.parse import MailLimits, MailRejected, normalise_mail

    def read(data: bytes) -> object:
        try:
            msg = normalise_mail(data, connector="bench", channel="email", store=False, limits=MailLimits())[0]
        except MailRejected as exc:
            return exc.reason
        return (msg.subject, msg.text, msg.full_text, [(a.name, a.content_type, a.size) for a in msg.attachments],
                msg.flags)

    return read(raw) == read(renamed)


def bench_mails(n: int) -> list[bytes]:
    """``n`` distinct mails: the corpus cycled, each copy its own Message-ID and boundaries."""
    corpus = [m.raw for m in build_corpus()
              if not m.limits and not m.rejected and m.raw.strip() and len(m.raw) <= MAX_MAIL]
    keeps = [_reads_the_same(raw, renamed_boundaries(raw, "check")) for raw in corpus]
    mails = []
    for i in range(n):
        raw, tag = corpus[i % len(corpus)], f"b{i:07d}"
        mails.append(unique_copy(renamed_boundaries(raw, tag) if keeps[i % len(corpus)] else raw, tag))
    return mails


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
