"""When mail the IMAP server refuses to hand over, or drops the connection on, is given up: counts and
suspects kept across passes and restarts in a file beside the checkpoint (the FETCHes themselves:
tests/integration/ingest/test_imap_refused.py and test_imap_dropped.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest.imap_batch import batches
from ingest.imap_isolate import GiveUp, Refusals
from ingest.imap_state import Checkpoint, CheckpointStore, PendingMail
from ingest.mail.parse import MailLimits

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
NO = "NO [SERVERBUG] Internal error occurred."
BYE = "command: FETCH => FETCH failed: Internal error occurred."
POLICY = GiveUp(attempts=3, after_s=300.0)


def load(store: CheckpointStore, cp: Checkpoint = Checkpoint(7, 10)) -> Refusals:
    return Refusals.load(store, "support", "INBOX", cp)


def test_a_uid_is_given_up_after_enough_passes_over_enough_time_while_other_mail_is_served(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for attempt, at in enumerate((T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=301)), 1):
        refusals = load(store)  # each pass (a restart too) reads the count so far
        refusals.served = True
        refusals.count({12: f"{NO} #{attempt}"}, at)
        given_up, wait = refusals.verdict({12: NO}, "imap:support", POLICY, at)
        if attempt < 3:
            assert given_up == {} and wait is not None and f"(pass {attempt};" in wait and "UID 12 " in wait
    assert wait is None and list(given_up) == [12]
    assert given_up[12] == ("UID 12 of imap:support/INBOX: the server refused to hand it over in 3 passes since "
                            f"2026-12-06 12:00:00 UTC; its last answer: {NO} #3")


def test_not_given_up_early_nor_while_the_server_hands_over_nothing(tmp_path: Path) -> None:
    refusals = load(CheckpointStore(tmp_path))
    for _ in range(5):
        refusals.count({12: NO}, T0)
    assert refusals.verdict({12: NO}, "imap:support", POLICY, T0 + timedelta(seconds=299))[0] == {}, "too early"
    assert refusals.verdict({12: NO}, "imap:support", POLICY, T0 + timedelta(hours=1))[0] == {}, "a server down"
    refusals.served = True
    assert list(refusals.verdict({12: NO}, "imap:support", POLICY, T0 + timedelta(hours=1))[0]) == [12]


def test_counts_end_with_the_checkpoint_past_them_or_a_new_uidvalidity(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    load(store).count({12: NO, 15: NO}, T0)
    assert set(load(store).known) == {12, 15}
    assert set(load(store, Checkpoint(7, 12)).known) == {15}, "12 is handled"
    assert load(store, Checkpoint(8, 0)).known == {}, "UIDs of another UIDVALIDITY are other mail"


def test_an_unreadable_count_file_counts_as_none(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    load(store).count({12: NO}, T0)
    path = store.state_path("support", "INBOX", ".refused")
    path.write_text("{not json")
    assert load(store).known == {}
    assert store.load("support", "INBOX") == Checkpoint(), "the checkpoint is another file"


def test_a_uid_that_dropped_the_connection_is_given_up_once_its_counted_drops_span_the_bound(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for seconds in (0, 10, 20):
        load(store).count({12: BYE}, T0 + timedelta(seconds=seconds), dropped=True)
    refusals = load(store)
    assert refusals.alone == {12}, "fetched alone from now on"
    given_up, wait = refusals.verdict({12: BYE}, "imap:support", POLICY, T0 + timedelta(hours=1))
    assert given_up == {} and wait is not None, "3 drops within 20 s: an hour later is no 4th drop"
    load(store).count({12: BYE}, T0 + timedelta(seconds=300), dropped=True)
    given_up, wait = load(store).verdict({12: BYE}, "imap:support", POLICY, T0 + timedelta(seconds=400))
    assert wait is None, "no mail served in this pass is needed: each drop counted had some"
    assert given_up[12] == ("UID 12 of imap:support/INBOX: the server dropped the connection whenever it was fetched "
                            f"alone in 4 passes since 2026-12-06 12:00:00 UTC; its last answer: {BYE}")


def test_suspects_are_kept_until_the_checkpoint_passes_them(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    refusals = load(store)
    refusals.suspects.update({11, 14})
    refusals.count({15: NO}, T0)
    assert load(store).suspects == {11, 14} and load(store).alone == {11, 14}, "a NO is fetched in its batch"
    assert load(store, Checkpoint(7, 12)).suspects == {14}
    assert load(store, Checkpoint(8, 0)).suspects == set()


def test_a_count_file_without_drops_or_suspects_is_read(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.state_path("support", "INBOX", ".refused").write_text(json.dumps(
        {"uidvalidity": 7, "uids": {"12": {"attempts": 2, "since": T0.isoformat(), "answer": NO}}}))
    refusals = load(store)
    assert refusals.known[12].attempts == 2 and not refusals.known[12].dropped and refusals.alone == set()


def test_a_uid_fetched_alone_is_a_batch_of_its_own() -> None:
    mails = [PendingMail(uid, 10, None) for uid in range(1, 8)]
    cut = [(end, [m.uid for m in batch]) for end, batch in batches(mails, 3, MailLimits(), frozenset({4, 5}))]
    assert cut == [(3, [1, 2, 3]), (4, [4]), (5, [5]), (7, [6, 7])]
