"""When mail the IMAP server refuses to hand over is given up: counts kept across passes and restarts
in a file beside the checkpoint (the FETCHes themselves: tests/integration/ingest/test_imap_refused.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest.imap_isolate import GiveUp, Refusals
from ingest.imap_state import Checkpoint, CheckpointStore

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
NO = "NO [SERVERBUG] Internal error occurred."
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
