"""Every hostile mail is parsed into an inert message or rejected with its reason, in bounded time and memory."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from pathlib import Path

import pytest

from ingest.blobs import BlobStore
from ingest.mail import MailRejected, parse_mail
from tests.fixtures.hostile.bombs import GiB, zip_bomb
from tests.fixtures.hostile.mail import HostileMail, build_hostile_mails, violations

MAILS = build_hostile_mails()
CPU_LIMIT_S = 5.0  # a hang guard, not a speed goal: the slowest mail takes ~2.5 s of CPU
MiB = 1 << 20


def memory_limit(raw: bytes) -> int:
    """Peak Python allocations one parse may cost: the stdlib parser keeps ~8 copies of a big mail."""
    return 64 * MiB + 10 * len(raw)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> BlobStore:
    return BlobStore(tmp_path_factory.mktemp("blobs"))


def parse(mail: HostileMail, blobs: BlobStore | None) -> tuple[object, float, int]:
    """(message or MailRejected, CPU seconds of this thread, peak traced bytes)."""
    tracemalloc.start()
    started = time.thread_time()
    try:
        outcome: object = parse_mail(mail.raw, connector="imap:support", channel="email", blobs=blobs,
                                     limits=mail.mail_limits)
    except MailRejected as exc:
        outcome = exc
    finally:
        cpu = time.thread_time() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, cpu, peak


def test_the_corpus_is_deterministic_and_covers_every_kind() -> None:
    again = build_hostile_mails()
    assert [(m.name, m.raw) for m in again] == [(m.name, m.raw) for m in MAILS]
    assert len(MAILS) >= 50
    assert sum(m.rejected is not None for m in MAILS) >= 10 and sum(m.rejected is None for m in MAILS) >= 35


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mail", MAILS, ids=lambda m: m.name)
def test_hostile_mail(mail: HostileMail, store: BlobStore) -> None:
    outcome, cpu, peak = parse(mail, store)
    assert cpu < CPU_LIMIT_S, f"{mail.name}: {cpu:.1f} s of CPU"
    assert peak < memory_limit(mail.raw), f"{mail.name}: {peak / MiB:.0f} MiB peak"
    if mail.rejected is not None:
        assert isinstance(outcome, MailRejected), f"{mail.name} was not rejected"
        assert mail.rejected in outcome.reason
        return
    assert not isinstance(outcome, MailRejected), f"{mail.name}: rejected: {outcome}"
    assert violations(mail, outcome) == []  # type: ignore[arg-type]


def test_a_rejected_mail_leaves_nothing_in_the_blob_store(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    for mail in (m for m in MAILS if m.rejected):
        with pytest.raises(MailRejected):
            parse_mail(mail.raw, connector="imap:support", channel="email", blobs=blobs, limits=mail.mail_limits)
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_a_zip_bomb_is_stored_as_the_bytes_it_is_and_never_inflated(store: BlobStore) -> None:
    mail = next(m for m in MAILS if m.name == "zip-bomb-2gib")
    bomb = zip_bomb(2 * GiB)
    outcome, cpu, peak = parse(mail, store)
    assert not isinstance(outcome, MailRejected)
    [attachment] = [a for a in outcome.attachments if a.content_type == "application/zip"]  # type: ignore[attr-defined]
    assert (attachment.size, attachment.sha256) == (len(bomb), hashlib.sha256(bomb).hexdigest())
    assert attachment.stored_at is not None and store.get(attachment.stored_at) == bomb
    assert peak < 16 * len(bomb) < GiB // 16, "the 2 GiB content was never materialised"


def test_an_attachment_over_the_limit_is_described_not_stored(store: BlobStore) -> None:
    for name in ("attachment-over-15mib", "attachment-over-small-limit", "zip-bomb-over-small-limit"):
        mail = next(m for m in MAILS if m.name == name)
        outcome, _, _ = parse(mail, store)
        assert not isinstance(outcome, MailRejected)
        [attachment] = outcome.attachments  # type: ignore[attr-defined]
        assert attachment.size > mail.mail_limits.max_attachment_bytes and attachment.stored_at is None
        assert len(attachment.sha256) == 64


def test_header_injection_is_flattened_to_one_line() -> None:
    by_name = {m.name: m for m in MAILS}
    for name in ("encoded-word-crlf-subject", "encoded-word-crlf-name", "encoded-word-crlf-q-name", "nul-in-headers"):
        msg = parse_mail(by_name[name].raw, connector="imap:support", channel="email", blobs=None,
                         limits=by_name[name].mail_limits)
        for value in (msg.subject, msg.sender.name or "", msg.sender.address or ""):
            assert not set(value) & set("\r\n\x00"), (name, value)
    subject = parse_mail(by_name["encoded-word-crlf-subject"].raw, connector="c", channel="email", blobs=None,
                         limits=by_name["encoded-word-crlf-subject"].mail_limits).subject
    assert subject == "Refund Bcc: victim@evil.example"
