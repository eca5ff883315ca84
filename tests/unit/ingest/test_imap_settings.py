"""Mailbox settings: where the XOAUTH2 token comes from, TLS trust, and how a pass is cut into batches."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from frontdesk.errors import SourceAuthError
from ingest.imap import CheckpointStore
from ingest.imap_batch import BATCH_BYTES, batches
from ingest.imap_state import Checkpoint, CheckpointSaver, PendingMail, oldest_from
from ingest.imap_settings import MailboxSettings
from ingest.mail.parse import MailLimits

BASE = dict(name="support", host="imap.example.az", username="support@example.az")


def box(**over: object) -> MailboxSettings:
    return MailboxSettings(**{**BASE, **over})  # type: ignore[arg-type]


def test_a_password_mailbox_has_no_token() -> None:
    assert box(password="secret").oauth2_token() is None


def test_the_token_file_is_read_fresh_on_every_login(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("ya29.first\n")
    settings = box(oauth2_token_file=token)
    assert settings.oauth2_token() == "ya29.first"
    token.write_text("ya29.refreshed")
    assert settings.oauth2_token() == "ya29.refreshed"


def test_the_token_command_prints_the_token(tmp_path: Path) -> None:
    command = f"{sys.executable} -c \"print('  ya29.from-command  ')\""
    assert box(oauth2_token_command=command).oauth2_token() == "ya29.from-command"


@pytest.mark.parametrize(("how", "reason"), [
    ({"oauth2_token_file": Path("/nonexistent/token")}, "cannot get the OAuth2 token from the file"),
    ({"oauth2_token_command": f"{sys.executable} -c \"import sys; sys.exit('vault is sealed')\""},
     "exited with 1: vault is sealed"),
    ({"oauth2_token_command": "true"}, "empty token"),
])
def test_an_unusable_token_source_is_an_auth_error_naming_the_cause(how: dict[str, object], reason: str) -> None:
    with pytest.raises(SourceAuthError, match=reason):
        box(**how).oauth2_token()


def test_a_token_command_that_hangs_is_reported_without_its_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command may carry a secret (``vault read -token=…``): the error reaches logs and /readyz."""
    import ingest.imap_settings as imap_settings
    monkeypatch.setattr(imap_settings, "TOKEN_COMMAND_TIMEOUT_S", 0.2)
    command = f"{sys.executable} -c \"import time; time.sleep(5)\" --vault-token=s.SECRET123"
    with pytest.raises(SourceAuthError, match="did not finish within 0.2 s") as caught:
        box(oauth2_token_command=command).oauth2_token()
    assert "SECRET123" not in str(caught.value) and caught.value.__cause__ is None


def test_empty_token_file_is_an_auth_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(SourceAuthError, match="empty token"):
        box(oauth2_token_file=tmp_path / "token").oauth2_token()


def test_a_mailbox_needs_a_credential_and_tls_by_default(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="password, oauth2_token_command or oauth2_token_file"):
        box()
    settings = box(password="x", ca_file=tmp_path / "ca.pem")
    assert settings.security == "ssl" and settings.port == 993 and settings.ca_file == tmp_path / "ca.pem"


def test_batches_end_at_the_count_or_the_byte_budget() -> None:
    limits = MailLimits(max_message_bytes=20 * 1024 * 1024)
    big, huge = 20 * 1024 * 1024, 30 * 1024 * 1024  # huge: over the limit, never fetched, costs nothing
    mails = [PendingMail(uid, size, None) for uid, size in
             enumerate([1000, 1000, 1000, 1000, big, big, big, huge, huge, 10], 1)]
    cut = list(batches(mails, 3, limits))
    assert [[m.uid for m in batch] for _, batch in cut] == [[1, 2, 3], [4, 5], [6], [7, 8, 9], [10]]
    assert [end for end, _ in cut] == [3, 5, 6, 9, 10]
    for _, batch in cut:
        assert sum(m.size for m in batch if m.size <= limits.max_message_bytes) <= BATCH_BYTES


def test_the_oldest_unhandled_date_after_each_position() -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    dates = [t + timedelta(days=3), t + timedelta(days=1), None, t + timedelta(days=2), None]
    oldest = oldest_from([PendingMail(n, 1, d) for n, d in enumerate(dates, 1)])
    assert oldest == [t + timedelta(days=1), t + timedelta(days=1), t + timedelta(days=2), t + timedelta(days=2),
                      None, None]



def test_checkpoints_are_saved_in_order_off_the_calling_thread_and_durable_on_close(tmp_path: Path) -> None:
    import threading

    store = CheckpointStore(tmp_path / "state")
    saved: list[tuple[int, str]] = []
    save = store.save
    release = threading.Event()

    def slow_save(mailbox: str, folder: str, cp: Checkpoint) -> None:
        release.wait(5)
        saved.append((cp.last_uid, threading.current_thread().name))
        save(mailbox, folder, cp)

    store.save = slow_save  # type: ignore[method-assign]
    saver = CheckpointSaver(store, "support", "INBOX")
    for uid in (200, 400, 600):
        saver.save(Checkpoint(7, uid))  # returns at once although the first save is held up
    assert saved == [] and store.load("support", "INBOX") == Checkpoint()
    release.set()
    saver.close()
    assert [uid for uid, _ in saved] == [200, 400, 600]
    assert all(name.startswith("checkpoint-support") for _, name in saved)
    assert store.load("support", "INBOX") == Checkpoint(7, 600)


def test_a_failed_checkpoint_save_is_raised_by_the_next_save_or_by_close(tmp_path: Path) -> None:
    (tmp_path / "state").write_bytes(b"a file where the checkpoint directory should be")
    saver = CheckpointSaver(CheckpointStore(tmp_path / "state"), "support", "INBOX")
    saver.save(Checkpoint(7, 200))
    with pytest.raises(OSError):
        saver.close()
    again = CheckpointSaver(CheckpointStore(tmp_path / "state"), "support", "INBOX")
    again.save(Checkpoint(7, 200))
    again._last.exception()  # type: ignore[union-attr]  # let it fail first
    with pytest.raises(OSError):
        again.save(Checkpoint(7, 400))
    again.close(check=False)


def test_a_scan_ends_when_its_last_uid_is_handled_or_the_pass_is_done() -> None:
    scanning = Checkpoint(7, 0, scan_until=30)
    assert scanning.newer_than == 30
    assert scanning.handled(12) == Checkpoint(7, 12, 30)  # a crash here resumes the scan after UID 12
    assert scanning.handled(30) == Checkpoint(7, 30) and scanning.handled(41) == Checkpoint(7, 41)
    assert scanning.handled(12).scanned() == Checkpoint(7, 30)  # nothing more selected up to 30
    assert Checkpoint(7, 50).handled(60).scanned() == Checkpoint(7, 60)


def test_checkpoints_round_trip_with_the_scan_and_read_files_of_before_it(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state")
    store.save("support", "INBOX", Checkpoint(7, 12, 30))
    assert store.load("support", "INBOX") == Checkpoint(7, 12, 30)
    next((tmp_path / "state").glob("*.json")).write_text('{"uidvalidity": 7, "last_uid": 40}')
    assert store.load("support", "INBOX") == Checkpoint(7, 40)


@pytest.mark.parametrize("content", ['{"uidvalidity": 7, "last_', "[1, 2]", '{"last_uid": 4}',
                                     '{"uidvalidity": "x", "last_uid": 4}', '{"uidvalidity": 7, "last_uid": null}'])
def test_an_unreadable_checkpoint_is_set_aside_and_the_folder_scanned_again(tmp_path: Path, content: str,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path / "state")
    store.save("support", "INBOX", Checkpoint(7, 12))
    path = next((tmp_path / "state").glob("*.json"))
    path.write_text(content)
    assert store.load("support", "INBOX") == Checkpoint()
    assert not path.exists() and path.with_suffix(".corrupt").read_text() == content
    assert "unreadable" in caplog.text


def test_a_mailbox_whose_pass_fails_unexpectedly_keeps_trying_and_says_why(tmp_path: Path) -> None:
    import threading

    from frontdesk.bus.memory import MemoryBus
    from ingest.imap import MailboxConnector

    class Pool:
        def warm(self) -> None:
            pass

    stop, tries = threading.Event(), []

    class Failing(MailboxConnector):
        def _session(self, stop_: threading.Event) -> None:
            tries.append(1)
            if len(tries) == 3:
                stop.set()
            raise KeyError("a bug, not a connection error")

    conn = Failing(box(password="x"), MemoryBus(), CheckpointStore(tmp_path), None, MailLimits(),
                   reconnect=(0.01, 0.02), pool=Pool())  # type: ignore[arg-type]
    worker = threading.Thread(target=conn.run, args=(stop,))
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and len(tries) == 3
    assert conn.health.consecutive_failures == 3 and conn.health.last_error.startswith("KeyError")


def test_the_reconnect_delay_starts_over_after_a_session_that_served_mail(tmp_path: Path) -> None:
    """A session only ends by failing; one that had imported mail must not inherit the long delay
    of an outage hours before (the delay had stayed at its maximum for good)."""
    import threading

    from frontdesk.bus.memory import MemoryBus
    from ingest.imap import MailboxConnector

    class Pool:
        def warm(self) -> None:
            pass

    waits: list[float | None] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            if len(waits) == 6:
                self.set()
            return self.is_set()

    stop = Stop()

    class Flaky(MailboxConnector):
        def _session(self, stop_: threading.Event) -> None:
            if len(waits) == 3:  # after three failed connects, a session that serves a pass, then drops
                self.health.consecutive_failures = 0
            raise OSError("connection reset")

    conn = Flaky(box(password="x"), MemoryBus(), CheckpointStore(tmp_path), None, MailLimits(),
                 reconnect=(1.0, 300.0), pool=Pool())  # type: ignore[arg-type]
    conn.run(stop)
    assert waits == [1.0, 2.0, 4.0, 1.0, 2.0, 4.0]
