"""Every corpus mail parses to the expected facts, or is rejected with the expected reason."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from frontdesk.messages import Flags, InboundMessage, message_id
from ingest.blobs import BlobStore, blob_ref
from ingest.mail import MailLimits, MailRejected, parse_mail
from tests.fixtures.mail.corpus import CorpusMail, build_corpus

CONNECTOR = "imap:support"
RECEIVED = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
CORPUS = build_corpus()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> BlobStore:
    return BlobStore(tmp_path_factory.mktemp("blobs"))


def parse(mail: CorpusMail, blobs: BlobStore | None) -> InboundMessage:
    return parse_mail(mail.raw, connector=CONNECTOR, channel="email", blobs=blobs,
                      limits=MailLimits(**mail.limits), received_at=RECEIVED)


def test_corpus_is_large_varied_and_deterministic() -> None:
    names = [mail.name for mail in CORPUS]
    assert len(names) >= 300
    assert len(set(names)) == len(names)
    assert [mail.raw for mail in build_corpus()] == [mail.raw for mail in CORPUS]


@pytest.mark.parametrize("mail", CORPUS, ids=lambda mail: mail.name)
def test_corpus_mail(mail: CorpusMail, store: BlobStore) -> None:
    if mail.rejected is not None:
        with pytest.raises(MailRejected) as caught:
            parse(mail, store)
        assert mail.rejected in caught.value.reason
        return
    msg = parse(mail, store)
    assert_headers(mail, msg)
    assert_text(mail, msg)
    assert_attachments(mail, msg, store)
    assert msg.flags == Flags(**mail.flags)
    assert msg.raw_ref == blob_ref(mail.raw) and store.get(msg.raw_ref) == mail.raw


def assert_headers(mail: CorpusMail, msg: InboundMessage) -> None:
    assert msg.subject == mail.subject
    assert msg.sender.address == mail.sender
    assert msg.sender.name == mail.sender_name
    expected_id = mail.external_id or f"<{hashlib.sha256(mail.raw).hexdigest()}@frontdesk.invalid>"
    assert msg.external_id == expected_id
    assert msg.id == message_id(CONNECTOR, expected_id, hashlib.sha256(mail.raw).hexdigest())
    assert msg.thread.in_reply_to == mail.in_reply_to
    assert msg.thread.references == mail.references
    assert msg.thread.conversation_id is None
    assert msg.sent_at == mail.sent_at
    assert msg.received_at == RECEIVED
    if mail.recipients is not None:
        assert tuple(party.address for party in msg.recipients) == mail.recipients
    for value in (msg.subject, msg.sender.name or "", *(p.name or "" for p in msg.recipients)):
        assert not set(value) & {"\r", "\n", "\x00"}


def assert_text(mail: CorpusMail, msg: InboundMessage) -> None:
    limit = MailLimits(**mail.limits).max_text_chars
    assert len(msg.text) <= limit and len(msg.full_text) <= limit
    assert "\x00" not in msg.text and "\x00" not in msg.full_text
    for fragment in mail.text_has:
        assert fragment in msg.text, f"{fragment!r} missing from clean text {msg.text[:500]!r}"
    for fragment in mail.text_lacks:
        assert fragment in msg.full_text, f"{fragment!r} missing from full text {msg.full_text[:800]!r}"
        assert fragment not in msg.text, f"{fragment!r} left in clean text {msg.text[:800]!r}"
    for fragment in mail.absent:
        assert fragment not in msg.full_text, f"{fragment!r} in full text {msg.full_text[:800]!r}"


def assert_attachments(mail: CorpusMail, msg: InboundMessage, store: BlobStore) -> None:
    assert len(msg.attachments) == len(mail.attachments), [a.name for a in msg.attachments]
    for got, expected in zip(msg.attachments, mail.attachments, strict=True):
        assert (got.name, got.content_type, got.inline) == (expected.name, expected.content_type, expected.inline)
        if expected.sha256 is not None:
            assert got.sha256 == expected.sha256
        if expected.size is not None:
            assert got.size == expected.size
        if expected.stored:
            assert got.stored_at == f"sha256:{got.sha256}"
            assert hashlib.sha256(store.get(got.stored_at)).hexdigest() == got.sha256
        else:
            assert got.stored_at is None


def test_every_mail_is_imported_exactly_once() -> None:
    """Distinct mails get distinct ids; the same bytes again give the same message."""
    ids: dict[str, str] = {}
    for mail in CORPUS:
        if mail.rejected is not None:
            continue
        first, again = parse(mail, None), parse(mail, None)
        assert again == first
        assert first.raw_ref is None and all(a.stored_at is None for a in first.attachments)
        assert ids.setdefault(first.id, mail.name) == mail.name, f"{mail.name} collides with {ids[first.id]}"
    assert len(ids) == sum(1 for mail in CORPUS if mail.rejected is None)
