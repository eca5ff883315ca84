"""Mail the IMAP server will not hand over, isolated from the rest of its batch.

A FETCH answered NO (a mail the server cannot read: a corrupt or unreadable file in its store), or
whose responses cannot be read, used to fail its whole batch on every retry: one bad mail stopped
its folder for good. :func:`fetch_each` finds the UIDs at fault and returns the others' items;
:class:`Refusals` counts how often each UID was refused, per folder and across passes and restarts
(``<checkpoint>.refused.json`` beside the folder's checkpoint), and says when to give one up.

Finding the UIDs at fault, on the same connection:

* a NO: the UIDs without the item asked for in the responses that came with it (servers send
  what they can, then answer NO; Dovecot does with ``imap_fetch_failure = no-after``);
* responses that cannot be read: each UID is fetched alone;
* an OK without a UID's body, or without any response for it: a partial response, the same as a
  NO for that UID (a description without a size is taken as it is: size 0, as before);

in each case only a UID that UID SEARCH still finds: another client may have expunged it (then
there is nothing to import). A UID refused on a connection is not asked for again on it: Dovecot
drops a connection that asks again for a mail it failed to read.

What ends the connection (imaplib's abort, a BYE, an OSError) is no refusal: it is raised, counts
nothing, and the pass is retried on a new connection. So a server that drops the connection on a
mail it cannot read (Dovecot's default ``imap_fetch_failure = disconnect-immediately``, or a
literal cut short) holds its folder until the mail is repaired.

Giving up (:class:`GiveUp`): a UID refused in ``attempts`` passes, the first ``after_s`` ago or
longer, while the server handed over other mail of the folder in the same pass (a server that
refuses everything is down, not the mail bad), becomes a dead-letter record; until then its batch
fails the pass (``SourceError``), which is retried with backoff.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from imapclient import IMAPClient
from imapclient.imapclient import join_message_ids

from ingest import imap_fetch
from ingest.imap_fetch import Response
from ingest.imap_state import Checkpoint, CheckpointStore, PendingMail, aware, write_json

log = logging.getLogger(__name__)
DESCRIBE_CHUNK = 2000  # UIDs per FETCH (RFC822.SIZE INTERNALDATE): the command stays well under 64 KiB


@dataclass(frozen=True)
class Answered:
    """The answers to a FETCH: ``items`` of the UIDs the server handed over, and the UIDs it
    refused with its answer (``refused``). A UID in neither is gone from the folder."""

    items: Response
    refused: dict[int, str]


def fetch_each(client: IMAPClient, uids: Sequence[int], items: Sequence[str], wanted: bytes,
               skip: Mapping[int, str], *, lenient: bool = False) -> Answered:
    """FETCH ``items`` of ``uids`` (but those in ``skip``, refused already: returned as refused),
    one command unless its responses cannot be read. A UID counts as handed over if its response
    has ``wanted`` (``lenient``: or if it has a response at all and the server answered OK).
    Raises what ends the connection, and IMAPClientError if the server refuses the UID SEARCH that
    tells a refused UID from an expunged one. Blocking."""
    refused = {uid: skip[uid] for uid in uids if uid in skip}
    todo = [uid for uid in uids if uid not in skip]
    answer = imap_fetch.fetch_answer(client, todo, items)
    if answer.response is None and len(todo) > 1:
        got: Response = {}
        for uid in todo:
            alone = fetch_each(client, [uid], items, wanted, {}, lenient=lenient)
            got.update(alone.items)
            refused.update(alone.refused)
        return Answered(got, refused)
    whole = lenient and answer.refused is None
    got = {uid: item for uid, item in (answer.response or {}).items() if whole or item.get(wanted) is not None}
    missing = [uid for uid in todo if uid not in got]
    if missing:
        why = answer.refused or f"OK without {wanted.decode()}"
        there = set(client.search(["UID", join_message_ids(missing)]))
        refused.update((uid, why) for uid in missing if uid in there)
    return Answered(got, refused)


def describe(client: IMAPClient, uids: list[int], refusals: Refusals) -> list[PendingMail]:
    """Sizes and INTERNALDATEs of ``uids`` (a UID expunged by another client meanwhile is left out;
    one the server refuses to describe is kept, size 0, and refused in this session; an OK without
    a size is size 0, as some servers answer). Blocking."""
    mails: list[PendingMail] = []
    for start in range(0, len(uids), DESCRIBE_CHUNK):
        chunk = uids[start : start + DESCRIBE_CHUNK]
        described = fetch_each(client, chunk, imap_fetch.SIZE_AND_DATE, b"RFC822.SIZE", refusals.session,
                               lenient=True)
        refusals.session.update(described.refused)
        for uid in chunk:
            item = described.items.get(uid)
            if item is not None:
                mails.append(PendingMail(uid, int(item.get(b"RFC822.SIZE", 0)), aware(item.get(b"INTERNALDATE"))))
            elif uid in described.refused:
                mails.append(PendingMail(uid, 0, None))
    return mails


@dataclass(frozen=True)
class GiveUp:
    """When a refused UID becomes a dead-letter record: refused in ``attempts`` passes, the first
    ``after_s`` seconds ago or longer (a per-mail NO can be transient)."""

    attempts: int = 3
    after_s: float = 300.0


@dataclass
class _Refusal:
    attempts: int
    since: datetime
    answer: str


@dataclass
class Refusals:
    """One folder's refused UIDs during one pass: ``session`` those refused on this connection
    (never asked for again on it), ``served`` whether the server handed over any of its mail."""

    store: CheckpointStore
    mailbox: str
    folder: str
    uidvalidity: int | None
    known: dict[int, _Refusal]
    session: dict[int, str] = field(default_factory=dict)
    served: bool = False

    @classmethod
    def load(cls, store: CheckpointStore, mailbox: str, folder: str, cp: Checkpoint) -> Refusals:
        """The refusals counted in earlier passes of UIDs after ``cp`` (under its UIDVALIDITY);
        an unreadable file counts as none (logged). Blocking."""
        path = store.state_path(mailbox, folder, ".refused")
        known: dict[int, _Refusal] = {}
        try:
            data = json.loads(path.read_text())
            if data["uidvalidity"] == cp.uidvalidity:
                known = {int(uid): _Refusal(int(r["attempts"]), datetime.fromisoformat(r["since"]), str(r["answer"]))
                         for uid, r in data["uids"].items() if int(uid) > cp.last_uid}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("%s is unreadable (%s): refused mail is counted from 0 again", path, exc)
        return cls(store, mailbox, folder, cp.uidvalidity, known)

    def count(self, refused: Mapping[int, str], now: datetime) -> None:
        """One more pass refused ``refused`` (uid → the server's answer); saved at once (blocking)."""
        if not refused:
            return
        for uid, answer in refused.items():
            known = self.known.get(uid)
            self.known[uid] = _Refusal(known.attempts + 1 if known else 1, known.since if known else now, answer)
        write_json(self.store.state_path(self.mailbox, self.folder, ".refused"), {
            "uidvalidity": self.uidvalidity,
            "uids": {str(u): {"attempts": r.attempts, "since": r.since.isoformat(), "answer": r.answer}
                     for u, r in self.known.items()}})

    def verdict(self, refused: Mapping[int, str], connector: str, policy: GiveUp,
                now: datetime) -> tuple[dict[int, str], str | None]:
        """For a batch's ``refused`` UIDs (counted): those given up, each with its dead-letter
        reason, and why the batch must wait instead (None: it need not)."""
        given_up: dict[int, str] = {}
        for uid in sorted(refused):
            r = self.known[uid]
            where = f"UID {uid} of {connector}/{self.folder}"
            due = r.attempts >= policy.attempts and (now - r.since).total_seconds() >= policy.after_s
            if not (due and self.served):
                return given_up, (f"{where} refused by the server (pass {r.attempts}; dead-lettered after "
                                  f"{policy.attempts} passes over {policy.after_s:.0f} s in which other mail "
                                  f"is served): {r.answer}")
            given_up[uid] = (f"{where}: the server refused to hand it over in {r.attempts} passes since "
                             f"{r.since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; its last answer: {r.answer}")
        return given_up, None
