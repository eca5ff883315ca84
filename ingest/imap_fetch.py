"""UID FETCH with a fast path for the two responses the connector reads most.

imapclient's response parser is generic: it tokenises every FETCH response byte by byte in Python,
which was half of the connector's CPU for ``RFC822.SIZE INTERNALDATE`` and ``BODY.PEEK[]`` over a
folder. :func:`fetch` sends the very command ``IMAPClient.fetch`` sends and checks it the same way,
then reads responses of the usual shape (``n (UID u RFC822.SIZE s INTERNALDATE "d")``,
``n (UID u BODY[] {s}`` + literal + ``)``) with one regex each. Anything else in the response (an
unsolicited FLAGS update, another item order, a server that puts UID last) sends the whole
response through imapclient's parser instead, so the result is always what ``IMAPClient.fetch``
would return (tests compare both on a real server and on crafted responses). It reaches into
imapclient for the connection (``IMAPClient._imap``) and its result check (``_checkok``): the
version is bounded in ``pyproject.toml`` and the tests fail if they change.

:func:`fetch_answer` is the same command for a caller that wants what came with a refusal: the
responses a server sent before it answered NO are returned with the answer, not raised;
:func:`sent_before` reads those a server sent before it dropped the connection.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import parse_to_datetime
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, ProtocolError
from imapclient.imapclient import join_message_ids, seq_to_parenstr_upper
from imapclient.response_parser import parse_fetch_response

SIZE_AND_DATE = ("RFC822.SIZE", "INTERNALDATE")
BODY = ("BODY.PEEK[]",)

_DESCRIBED = re.compile(rb'(\d+) \(UID (\d+) RFC822\.SIZE (\d+) INTERNALDATE "([^"\\]*)"\)')
_BODY_HEAD = re.compile(rb"(\d+) \(UID (\d+) BODY\[\] \{(\d+)\}")

Response = dict[int, dict[bytes, Any]]


def fetch(client: IMAPClient, uids: Sequence[int], items: Sequence[str]) -> Response:
    """``client.fetch(uids, items)`` for a UID-mode client: the same command, the same errors
    (IMAPClientError on NO/BAD, imaplib's abort on a broken connection) and the same result
    ({uid: {b"SEQ": n, item: value}}, UIDs not in ``uids`` dropped). Blocking."""
    if not uids:
        return {}
    imap = client._imap
    tag = imap._command("UID", "FETCH", join_message_ids(uids), seq_to_parenstr_upper(items))
    typ, data = imap._command_complete("FETCH", tag)
    client._checkok("fetch", typ, data)
    typ, data = imap._untagged_response(typ, data, "FETCH")
    parsed = read_response(data, tuple(items), client.normalise_times)
    return {uid: parsed[uid] for uid in uids if uid in parsed}


@dataclass(frozen=True)
class Answer:
    """What the server answered a UID FETCH: the responses it sent (``None``: they could not be
    read) and, if it refused the command (NO, BAD) or its responses could not be read, why."""

    response: Response | None
    refused: str | None = None


def fetch_answer(client: IMAPClient, uids: Sequence[int], items: Sequence[str]) -> Answer:
    """:func:`fetch` (called through this module, so a wrapper of it sees every FETCH), but a
    refusal (NO, BAD) or an unreadable response is returned, not raised, with the responses the
    server sent before its answer (servers send what they can, then answer NO). Raises only what
    ends the connection: imaplib's abort (a BYE too) or an OSError. Blocking."""
    try:
        return Answer(fetch(client, uids, items))
    except IMAPClientAbortError:
        raise
    except (ProtocolError, ValueError) as exc:  # imapclient's parser or its lexer
        return Answer(None, f"unreadable FETCH response: {exc}")
    except IMAPClientError as exc:
        refused = str(exc)
    return Answer(sent_before(client, uids, items), refused)


def sent_before(client: IMAPClient, uids: Sequence[int], items: Sequence[str]) -> Response | None:
    """The FETCH responses the server sent for the UID FETCH that just failed (answered NO, or
    ended by a dropped connection), taken from imaplib (it would hand them to the next FETCH);
    ``None`` if they cannot be read."""
    sent = client._imap.untagged_responses.pop("FETCH", [])
    try:
        parsed = read_response(sent, tuple(items), client.normalise_times) if sent else {}
    except (ProtocolError, ValueError):
        return None
    return {uid: parsed[uid] for uid in uids if uid in parsed}


def read_response(data: list[Any], items: tuple[str, ...], normalise_times: bool) -> Response:
    """The FETCH responses in ``data`` (as imaplib collects them) parsed as imapclient would."""
    fast = None
    if items == SIZE_AND_DATE:
        fast = _described(data, normalise_times)
    elif items == BODY:
        fast = _bodies(data)
    if fast is not None:
        return fast
    return dict(parse_fetch_response(data, normalise_times, True))


def _described(data: list[Any], normalise_times: bool) -> Response | None:
    out: Response = {}
    for line in data:
        match = _DESCRIBED.fullmatch(line) if isinstance(line, bytes) else None
        if match is None:
            return None
        seq, uid, size, date = match.groups()
        when = _date(date, normalise_times)
        if when is None or int(uid) in out:
            return None
        out[int(uid)] = {b"SEQ": int(seq), b"RFC822.SIZE": int(size), b"INTERNALDATE": when}
    return out


def _date(value: bytes, normalise_times: bool) -> datetime | None:
    try:
        return parse_to_datetime(value, normalise=normalise_times)
    except ValueError:
        return None  # imapclient's parser decides what an unreadable date becomes


def _bodies(data: list[Any]) -> Response | None:
    if len(data) % 2:
        return None
    out: Response = {}
    for i in range(0, len(data), 2):
        head, tail = data[i], data[i + 1]
        if not isinstance(head, tuple) or len(head) != 2 or tail != b")":
            return None
        match = _BODY_HEAD.fullmatch(head[0])
        if match is None or len(head[1]) != int(match[3]) or int(match[2]) in out:
            return None
        out[int(match[2])] = {b"SEQ": int(match[1]), b"BODY[]": head[1]}
    return out
