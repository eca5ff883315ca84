"""Mail the IMAP server will not hand over, isolated from the rest of its batch.

A FETCH answered NO (a mail the server cannot read: a corrupt or unreadable file in its store), or
whose responses cannot be read, used to fail its whole batch on every retry; a server that drops
the connection on such a mail (Dovecot's default ``imap_fetch_failure = disconnect-immediately``)
did the same on every new connection: one bad mail stopped its folder for good. :func:`fetch_each`
finds the UIDs at fault and returns the others' items; :class:`Refusals` finds the UID a dropped
connection is due to, counts how often each UID was refused, per folder and across passes and
restarts (``<checkpoint>.refused.json`` beside the folder's checkpoint), and says when to give one up.

Finding the UIDs at fault, on the same connection:

* a NO: the UIDs without the item asked for in the responses that came with it (servers send
  what they can, then answer NO; Dovecot does with ``imap_fetch_failure = no-after``);
* responses that cannot be read: each UID is fetched alone;
* an OK without a UID's body, or without any response for it: a partial response, the same as a
  NO for that UID (a description without a size is taken as it is: size 0, as before);

in each case only a UID that UID SEARCH still finds: another client may have expunged it (then
there is nothing to import). A UID refused on a connection is not asked for again on it: Dovecot
drops a connection that asks again for a mail it failed to read.

What ends the connection (imaplib's abort, a BYE, an OSError) is raised: the pass fails and is
retried on a new connection, with the connector's backoff. By itself it counts nothing: the UIDs
the server had not handed over when it dropped become *suspects* (saved with the counts). From
then on a suspect is neither described nor fetched with other mail: it is fetched alone, once all
mail before it is on the bus and flagged, so the mail before it flows; one handed over is cleared.
If the server has handed over no mail in the pass yet, it is first asked for the first byte of
another mail of the folder (a *witness*: the next one not suspected, else the last one before). A
drop counts against a UID only when that UID alone was asked for after the server had handed over
other mail in the same pass: a server that is down, or a network that drops every FETCH, counts
nothing (each attempt is one pass on one new connection: a reconnect with backoff, in ``Health``).
A bad mail left alone in its folder (nothing to witness) is counted once another mail arrives.

Giving up (:class:`GiveUp`): a UID refused in ``attempts`` passes, the first ``after_s`` ago or
longer, while the server handed over other mail of the folder in the same pass (a server that
refuses everything is down, not the mail bad), becomes a dead-letter record; until then its batch
fails the pass (``SourceError``), which is retried with backoff. A UID that dropped the connection
in ``attempts`` such passes spanning ``after_s`` or more is not asked for again: in the next pass
it becomes a dead-letter record the same way (``MailUnfetchable``, the reason says the server
dropped the connection on it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError
from imapclient.imapclient import join_message_ids

from frontdesk.errors import SourceError
from ingest import imap_fetch
from ingest.imap_fetch import Response
from ingest.imap_state import Checkpoint, CheckpointStore, PendingMail, aware, write_json

log = logging.getLogger(__name__)
DESCRIBE_CHUNK = 2000  # UIDs per FETCH (RFC822.SIZE INTERNALDATE): the command stays well under 64 KiB
DROPS = (IMAPClientAbortError, OSError)  # what ends a connection (a BYE is imaplib's abort)
WITNESS = ("BODY.PEEK[]<0.1>",)  # a mail's first byte: the server must read the mail to send it


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
    a size is size 0, as some servers answer). A UID in ``refusals.alone`` is not asked for (it may
    drop the connection before any mail is imported): size 0, its body fetched alone (the parser
    still rejects it over the size limit). Blocking; a dropped connection is raised
    (:meth:`Refusals.asked`)."""
    alone = refusals.alone
    mails: list[PendingMail] = []
    for start in range(0, len(uids), DESCRIBE_CHUNK):
        chunk = uids[start : start + DESCRIBE_CHUNK]
        described = refusals.asked(client, [uid for uid in chunk if uid not in alone], imap_fetch.SIZE_AND_DATE,
                                   b"RFC822.SIZE", lenient=True)
        refusals.session.update(described.refused)
        for uid in chunk:
            item = described.items.get(uid)
            if item is not None:
                mails.append(PendingMail(uid, int(item.get(b"RFC822.SIZE", 0)), aware(item.get(b"INTERNALDATE"))))
            elif uid in described.refused or uid in alone:
                mails.append(PendingMail(uid, 0, None))
    return mails


@dataclass(frozen=True)
class GiveUp:
    """When a refused UID becomes a dead-letter record: refused in ``attempts`` passes, the first
    ``after_s`` seconds ago or longer (a per-mail NO can be transient); a UID that dropped the
    connection: in ``attempts`` passes spanning ``after_s`` seconds or more."""

    attempts: int = 3
    after_s: float = 300.0


@dataclass
class _Refusal:
    attempts: int
    since: datetime
    answer: str
    last: datetime
    dropped: bool = False  # counted for connections dropped on it alone (else for NO answers)


@dataclass
class Refusals:
    """One folder's refused UIDs during one pass: ``session`` those refused on this connection
    (never asked for again on it), ``served`` whether the server handed over any of its mail;
    ``suspects``: UIDs that were not handed over when a connection dropped."""

    store: CheckpointStore
    mailbox: str
    folder: str
    uidvalidity: int | None
    known: dict[int, _Refusal]
    suspects: set[int] = field(default_factory=set)
    session: dict[int, str] = field(default_factory=dict)
    served: bool = False

    @classmethod
    def load(cls, store: CheckpointStore, mailbox: str, folder: str, cp: Checkpoint) -> Refusals:
        """The refusals counted, and the suspects found, in earlier passes of UIDs after ``cp``
        (under its UIDVALIDITY); an unreadable file counts as none (logged). Blocking."""
        path = store.state_path(mailbox, folder, ".refused")
        known: dict[int, _Refusal] = {}
        suspects: set[int] = set()
        try:
            data = json.loads(path.read_text())
            if data["uidvalidity"] == cp.uidvalidity:
                known = {int(uid): _read(r) for uid, r in data["uids"].items() if int(uid) > cp.last_uid}
                suspects = {int(uid) for uid in data.get("suspects", ()) if int(uid) > cp.last_uid}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("%s is unreadable (%s): refused mail is counted from 0 again", path, exc)
        return cls(store, mailbox, folder, cp.uidvalidity, known, suspects)

    @property
    def alone(self) -> frozenset[int]:
        """The UIDs fetched alone, each once all mail before it is imported: the suspects and the
        UIDs counted for dropping the connection."""
        return frozenset(self.suspects.union(uid for uid, r in self.known.items() if r.dropped))

    def fetch(self, client: IMAPClient, uids: Sequence[int], connector: str, policy: GiveUp,
              now: datetime) -> Answered:
        """The bodies of one batch's ``uids`` (:func:`fetch_each`): the refused ones are counted
        (:meth:`count`), ``served`` notes whether the server handed any over. A UID in
        :attr:`alone` comes in a batch of its own (:meth:`_fetch_alone`). Raises what ends the
        connection (:meth:`asked`). Blocking."""
        if len(uids) == 1 and uids[0] in self.alone:
            return self._fetch_alone(client, uids[0], connector, policy, now)
        return self._took(self.asked(client, uids, imap_fetch.BODY, b"BODY[]"), now)

    def asked(self, client: IMAPClient, uids: Sequence[int], items: Sequence[str], wanted: bytes, *,
              lenient: bool = False) -> Answered:
        """:func:`fetch_each` (skipping ``session``); if the connection drops, the UIDs the server
        had not handed over by then become suspects (saved), and the drop is raised."""
        try:
            return fetch_each(client, uids, items, wanted, self.session, lenient=lenient)
        except DROPS:
            sent = imap_fetch.sent_before(client, uids, items) or {}
            lost = [uid for uid in uids if sent.get(uid, {}).get(wanted) is None]
            if lost:
                log.warning("imap:%s/%s: the connection dropped on a FETCH of %d mail(s); the %d not handed over "
                            "(UIDs %d-%d) are fetched alone from now on", self.mailbox, self.folder, len(uids),
                            len(lost), lost[0], lost[-1])
                self.suspects.update(lost)
                self._save()
            raise

    def _fetch_alone(self, client: IMAPClient, uid: int, connector: str, policy: GiveUp,
                     now: datetime) -> Answered:
        """The body of ``uid`` alone (contract: module docstring). One counted for dropping the
        connection and due is not asked for again: refused with its last answer (to be given up),
        unless it is gone. A drop counted is raised as SourceError, any other as it is."""
        known = self.known.get(uid)
        if known is not None and known.dropped and self._due(known, policy, now):
            there = uid in client.search(["UID", str(uid)])
            return Answered({}, {uid: known.answer} if there else {})
        if not self.served:
            self._witness(client, uid)
        try:
            bodies = fetch_each(client, [uid], imap_fetch.BODY, b"BODY[]", self.session)
        except DROPS as exc:
            if not self.served:
                raise
            self.suspects.clear()  # the drop is explained: the mail after it comes in batches again
            self.count({uid: str(exc) or type(exc).__name__}, now, dropped=True)
            r = self.known[uid]
            raise SourceError(f"UID {uid} of {connector}/{self.folder}: the server dropped the connection when it "
                              f"was fetched alone (pass {r.attempts}; dead-lettered after {policy.attempts} passes "
                              f"over {policy.after_s:.0f} s in which other mail is served): {exc}") from exc
        self.suspects.discard(uid)
        return self._took(bodies, now)

    def _witness(self, client: IMAPClient, uid: int) -> None:
        """Ask for the first byte of another mail of the folder (the next one not suspected, else
        the last one before ``uid``); ``served`` if the server hands it over. If the connection
        drops, that mail becomes a suspect too (the next pass asks another), and the drop is raised."""
        avoid = self.alone | self.session.keys()
        after = [u for u in client.search(["UID", f"{uid + 1}:*"]) if u > uid and u not in avoid]
        before = [] if after or uid == 1 else [u for u in client.search(["UID", f"1:{uid - 1}"]) if u not in avoid]
        if not after and not before:
            return
        other = min(after) if after else max(before)
        try:
            answer = imap_fetch.fetch_answer(client, [other], WITNESS)
        except DROPS:
            self.suspects.add(other)
            self._save()
            raise
        self.served = (answer.response or {}).get(other, {}).get(b"BODY[]<0>") is not None

    def _took(self, answered: Answered, now: datetime) -> Answered:
        self.served = self.served or bool(answered.items)
        self.session.update(answered.refused)
        self.count(answered.refused, now)
        return answered

    def count(self, refused: Mapping[int, str], now: datetime, *, dropped: bool = False) -> None:
        """One more pass refused ``refused`` (uid → the server's answer; ``dropped``: each dropped
        the connection when asked for alone); saved at once (blocking)."""
        if not refused:
            return
        for uid, answer in refused.items():
            known = self.known.get(uid)
            self.known[uid] = _Refusal(known.attempts + 1 if known else 1, known.since if known else now, answer,
                                       now, dropped)
        self._save()

    def _save(self) -> None:
        write_json(self.store.state_path(self.mailbox, self.folder, ".refused"), {
            "uidvalidity": self.uidvalidity,
            "uids": {str(u): {"attempts": r.attempts, "since": r.since.isoformat(), "answer": r.answer,
                              "last": r.last.isoformat(), "dropped": r.dropped} for u, r in self.known.items()},
            "suspects": sorted(self.suspects)})

    @staticmethod
    def _due(r: _Refusal, policy: GiveUp, now: datetime) -> bool:
        """A refusal counted ``policy.attempts`` times over ``policy.after_s``: a NO up to ``now``
        (the pass that refuses it again), drops up to the last one counted."""
        until = r.last if r.dropped else now
        return r.attempts >= policy.attempts and (until - r.since).total_seconds() >= policy.after_s

    def verdict(self, refused: Mapping[int, str], connector: str, policy: GiveUp,
                now: datetime) -> tuple[dict[int, str], str | None]:
        """For a batch's ``refused`` UIDs (counted): those given up, each with its dead-letter
        reason, and why the batch must wait instead (None: it need not). A UID that dropped the
        connection needs no mail served in this pass: each drop counted had some."""
        given_up: dict[int, str] = {}
        for uid in sorted(refused):
            r = self.known[uid]
            where = f"UID {uid} of {connector}/{self.folder}"
            if not (self._due(r, policy, now) and (self.served or r.dropped)):
                return given_up, (f"{where} refused by the server (pass {r.attempts}; dead-lettered after "
                                  f"{policy.attempts} passes over {policy.after_s:.0f} s in which other mail "
                                  f"is served): {r.answer}")
            how = ("the server dropped the connection whenever it was fetched alone" if r.dropped
                   else "the server refused to hand it over")
            given_up[uid] = (f"{where}: {how} in {r.attempts} passes since "
                             f"{r.since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; its last answer: {r.answer}")
        return given_up, None


def _read(r: Mapping[str, Any]) -> _Refusal:
    """A count as saved (files written before ``last`` and ``dropped`` existed read as NO answers)."""
    since = datetime.fromisoformat(str(r["since"]))
    last = datetime.fromisoformat(str(r["last"])) if "last" in r else since
    return _Refusal(int(r["attempts"]), since, str(r["answer"]), last, bool(r.get("dropped", False)))
