"""The keys a message is threaded by, and the recipient key an acknowledgement is counted under.

Thread keys (table ``thread_keys``, key → case): ``mid:<Message-ID>`` of every stored mail (a reply
names it in In-Reply-To / References); ``copy:<digest>`` of a mail's Message-ID, subject and text
(a copy delivered to a second watched mailbox joins the first copy's case; another mail reusing the
Message-ID does not); ``conv:<connector>:<conversation>`` of a chat or social conversation, and
``pconv:…:<identity>`` of each participant's own case in a shared one. A subject's case reference
(``FD-2026-000042``) is the last resort for email. Pure functions, apart from the two lookups.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection

from dispatch.reply_target import ack_mode, reply_target
from dispatch.settings import DispatchSettings
from dispatch.store import rows
from dispatch.store.rows import Writes
from dispatch.suppress import reply_address
from frontdesk.messages import InboundMessage


@lru_cache(maxsize=8)
def reference_pattern(prefix: str) -> re.Pattern[str]:
    """Case references with ``prefix`` in a subject, any case: ``FD-2026-000042``, and past case
    999,999 seven digits or more (references are ``{id:06d}``)."""
    return re.compile(rf"\b({re.escape(prefix)}-\d{{4}}-\d{{6,}})\b", re.IGNORECASE)


def identity_of(msg: InboundMessage) -> tuple[str, str] | None:
    """The identity a message proves: email address, platform user id, phone, or handle."""
    if msg.channel == "email" and msg.sender.address:
        return ("email", msg.sender.address.lower())
    platform = msg.platform or msg.connector
    if msg.sender.platform_id:
        return (platform, msg.sender.platform_id)
    if msg.sender.phone:
        return ("phone", msg.sender.phone)
    if msg.sender.handle:
        return (f"{platform}-handle", msg.sender.handle.lower())
    return None


def stored_identity(msg: InboundMessage) -> tuple[str, str] | None:
    """:func:`identity_of` as the identities table holds it (values cut to the column's size)."""
    ident = identity_of(msg)
    return None if ident is None else (ident[0], ident[1][:320])


def rate_key(msg: InboundMessage, s: DispatchSettings) -> str | None:
    """The recipient an acknowledgement of ``msg`` would be counted under for the rate limit,
    None if it would get none (channel not acknowledged, no valid address)."""
    if msg.channel not in s.ack_channels:
        return None
    if msg.channel == "email":
        return reply_address(msg)
    mode = ack_mode(msg, s.public_mentions)
    recipient = reply_target(msg, mode)[0] if mode else None
    return fitted(f"{msg.platform}:{recipient if mode == 'chat' else msg.sender.platform_id or recipient}")


def fitted(key: str, size: int = rows.RECIPIENT_MAX) -> str:
    """``key``, or (longer than the outbox's recipient column) its head and a digest of it: the same
    key always, distinct for distinct keys, never over ``size``."""
    if len(key) <= size:
        return key
    return f"{key[: size - 17]}#{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def case_of_same_mail(conn: Connection, msg: InboundMessage, writes: Writes) -> dict[str, Any] | None:
    """The case already holding this very mail (the ids of the pipeline differ per connector, so a
    mail sent to two watched mailboxes arrives twice under two ids)."""
    keys = same_mail_keys(msg)
    return rows.case_by_thread_key(conn, keys, writes) if keys else None


def same_mail_keys(msg: InboundMessage) -> list[str]:
    """The key of a mail by its Message-ID *and* what it says: a copy in another mailbox has both;
    another mail reusing the Message-ID (web forms and broken mailers do) is a message of its own."""
    if msg.channel != "email" or not msg.external_id:
        return []
    said = "\x00".join((msg.external_id, msg.subject or "", msg.full_text or msg.text or ""))
    return [f"copy:{hashlib.sha256(said.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"]


def participant_key(msg: InboundMessage) -> str | None:
    """The thread key of this sender's own case in a shared conversation, None without either."""
    ident = stored_identity(msg)
    if not msg.thread.conversation_id or ident is None:
        return None
    return f"pconv:{msg.connector}:{msg.thread.conversation_id}:{ident[0]}:{ident[1]}"


def follow_up_keys(msg: InboundMessage) -> list[str]:
    """The thread keys of the case ``msg`` may follow up, best first: the sender's own case in a
    shared conversation, the conversation's, then the mails it answers (the latest first)."""
    keys = [k for k in (participant_key(msg),) if k]
    if msg.thread.conversation_id:
        keys.append(f"conv:{msg.connector}:{msg.thread.conversation_id}")
    return keys + [f"mid:{m}" for m in (msg.thread.in_reply_to, *reversed(msg.thread.references)) if m]


def thread_candidate(conn: Connection, msg: InboundMessage, prefix: str, writes: Writes) -> dict[str, Any] | None:
    """The case ``msg`` seems to follow up, whoever its customer: the caller checks that."""
    found = rows.case_by_thread_key(conn, follow_up_keys(msg), writes)
    if found is not None:
        return found
    match = reference_pattern(prefix).search(msg.subject or "")
    if msg.channel == "email" and match:
        return rows.case_by_reference(conn, match.group(1).upper(), writes)
    return None
