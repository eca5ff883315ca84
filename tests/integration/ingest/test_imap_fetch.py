"""The FETCH fast path against the real Dovecot: the same result as ``IMAPClient.fetch`` on the whole
MIME corpus, with unsolicited updates from another client in the responses, and the same errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from ingest import imap_fetch
from ingest.imap_fetch import BODY, SIZE_AND_DATE
from tests.conftest import DOVECOT_PASSWORD
from tests.integration.ingest.test_imap import USER, corpus, fill

pytestmark = pytest.mark.dovecot


def client(server: Any, folder: str, *, normalise: bool) -> IMAPClient:
    imap = IMAPClient(server.host, server.port, ssl=False, timeout=30)
    imap.login(USER, DOVECOT_PASSWORD)
    imap.normalise_times = normalise
    imap.select_folder(folder)
    return imap


@pytest.fixture(scope="module")
def corpus_folder(dovecot_server: Any) -> str:
    folder = f"f{uuid.uuid4().hex[:10]}"
    fill(dovecot_server, folder, [m.raw for m in corpus()])
    return folder


@pytest.mark.parametrize("normalise", [False, True])
def test_the_corpus_reads_as_imapclient_reads_it(dovecot_server: Any, corpus_folder: str, normalise: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    slow: list[object] = []
    parse = imap_fetch.parse_fetch_response
    monkeypatch.setattr(imap_fetch, "parse_fetch_response", lambda *a: slow.append(a) or parse(*a))
    with client(dovecot_server, corpus_folder, normalise=normalise) as imap:
        uids = imap.search(["ALL"])
        assert len(uids) >= 300
        for items in (SIZE_AND_DATE, BODY):
            for start in range(0, len(uids), 100):
                chunk = uids[start : start + 100]
                assert imap_fetch.fetch(imap, chunk, items) == imap.fetch(chunk, list(items))
    assert slow == []  # Dovecot's responses all took the fast path


def test_unsolicited_updates_from_another_client_change_nothing(dovecot_server: Any, corpus_folder: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    slow: list[object] = []
    parse = imap_fetch.parse_fetch_response
    monkeypatch.setattr(imap_fetch, "parse_fetch_response", lambda *a: slow.append(a) or parse(*a))
    with client(dovecot_server, corpus_folder, normalise=False) as reader, \
            client(dovecot_server, corpus_folder, normalise=False) as writer:
        uids = reader.search(["ALL"])[:20]
        expected = {items: reader.fetch(uids, list(items)) for items in (SIZE_AND_DATE, BODY)}
        for items in (SIZE_AND_DATE, BODY):
            writer.add_flags(uids[::3], [b"\\Flagged"])
            got = imap_fetch.fetch(reader, uids, items)
            assert got.keys() == expected[items].keys()
            for uid in uids:
                for key, value in expected[items][uid].items():
                    assert got[uid][key] == value
            writer.remove_flags(uids[::3], [b"\\Flagged"])
    assert len(slow) == 2  # each response carried the other client's FLAGS updates


def test_uids_not_asked_for_are_dropped_and_unknown_uids_are_absent(dovecot_server: Any, corpus_folder: str) -> None:
    with client(dovecot_server, corpus_folder, normalise=False) as imap:
        uids = imap.search(["ALL"])
        assert imap_fetch.fetch(imap, [], BODY) == {}
        got = imap_fetch.fetch(imap, [uids[0], max(uids) + 1000], BODY)
        assert list(got) == [uids[0]]


def test_a_refused_fetch_is_imapclients_error(dovecot_server: Any, corpus_folder: str) -> None:
    with client(dovecot_server, corpus_folder, normalise=False) as imap:
        with pytest.raises(IMAPClientError) as theirs:
            imap.fetch([1], ["NO-SUCH-ITEM"])
        with pytest.raises(IMAPClientError) as ours:
            imap_fetch.fetch(imap, [1], ("NO-SUCH-ITEM",))
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
        assert "Unknown parameter" in str(ours.value)
