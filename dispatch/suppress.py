"""When an automatic acknowledgement must NOT be sent.

An auto-reply to another robot starts a mail loop; an auto-reply to a mailing list spams its
members; an auto-reply with a spammer's content is backscatter. :func:`ack_decision` applies
RFC 3834 and common practice to the facts the ingest stage recorded in :class:`Flags`. It is
pure: the caller counts how many acknowledgements it recently sent to the sender.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Set

from frontdesk.messages import InboundMessage

_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]{0,62}")
# Robots' local parts, compared with '.', '-', '_' and a '+tag' removed: no-reply == no_reply == noreply.
_ROBOT_PREFIXES = ("noreply", "donotreply", "dontreply")
_ROBOT_NAMES = frozenset({"mailerdaemon", "postmaster", "bounce", "bounces", "listserv", "majordomo"})

REASONS = (
    "auto_submitted", "auto_reply", "bounce", "bulk", "list", "suppress_autoreply", "no_address",
    "noreply_sender", "own_address", "spam", "follow_up", "rate_limited",
)


def reply_address(inbound: InboundMessage) -> str | None:
    """The sender's email address if it is a plain, well-formed ``local@domain``, else None.

    Anything that could smuggle header syntax (CR, LF, NUL, spaces, angle brackets, commas)
    fails the check, so the result is safe to put in a ``To`` header. The domain is returned in
    ASCII (IDNA) form, the whole address lower-cased.
    """
    return valid_address(inbound.sender.address or "")


def valid_address(address: str) -> str | None:
    """``address`` lower-cased with an ASCII (IDNA) domain if it is a plain ``local@domain``."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or len(address) > 254 or not _LOCAL.fullmatch(local) or len(local) > 64:
        return None
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not _DOMAIN.fullmatch(domain):
        return None
    return f"{local}@{domain}".lower()


def is_robot_address(address: str) -> bool:
    """True for noreply / no-reply / donotreply / mailer-daemon / postmaster style local parts."""
    local = address.lower().rpartition("@")[0].split("+", 1)[0]
    squashed = re.sub(r"[._-]", "", local)
    return squashed in _ROBOT_NAMES or squashed.startswith(_ROBOT_PREFIXES)


def is_own_address(address: str, our_addresses: Set[str]) -> bool:
    """True if ``address`` is one of ours; an entry ``@domain`` covers that whole domain.

    Both sides are compared as :func:`valid_address` writes them (any letter case, an IDN domain in
    its ASCII form) and without a ``+tag``: ``support+x@bet.az`` is delivered to ``support@bet.az``.
    """
    mailbox = _mailbox(address)
    ours = _own_mailboxes(frozenset(our_addresses))
    return mailbox in ours or f"@{mailbox.rpartition('@')[2]}" in ours


@functools.lru_cache(maxsize=16)
def _own_mailboxes(our_addresses: frozenset[str]) -> frozenset[str]:
    return frozenset(_mailbox(entry) for entry in our_addresses)


def _mailbox(address: str) -> str:
    """``address`` (or an ``@domain`` entry) in the form :func:`is_own_address` compares."""
    text = address.strip()
    if text.startswith("@"):
        normal = valid_address(f"x{text}")
        return f"@{normal.rpartition('@')[2]}" if normal else text.lower()
    local, at, domain = (valid_address(text) or text.lower()).rpartition("@")
    return f"{local.split('+', 1)[0]}{at}{domain}"


def _flag_reason(inbound: InboundMessage) -> str | None:
    """The first loop-prevention flag set by the ingest stage, in order of certainty."""
    flags = inbound.flags
    for reason, is_set in (
        ("auto_submitted", flags.auto_submitted), ("auto_reply", flags.auto_reply), ("bounce", flags.bounce),
        ("bulk", flags.bulk), ("list", flags.list_id is not None), ("suppress_autoreply", flags.suppress_autoreply),
    ):
        if is_set:
            return reason
    return None


def ack_decision(
    inbound: InboundMessage,
    triage_category: str,
    *,
    our_addresses: Set[str],
    is_follow_up: bool,
    ack_follow_ups: bool,
    recent_acks_to_sender: int,
    max_per_window: int = 3,
) -> tuple[bool, str]:
    """Decide whether to send an email acknowledgement for ``inbound``: ``(send, reason)``.

    The reason is ``"ok"`` when sending, else the first that applies, in this order:
    ``auto_submitted``, ``auto_reply``, ``bounce``, ``bulk``, ``list``, ``suppress_autoreply``
    (robots and lists, from :class:`Flags`), ``no_address`` (no well-formed address to reply to),
    ``noreply_sender``, ``own_address`` (one of ``our_addresses``; ``@domain`` entries cover a
    domain), ``spam`` (``triage_category``), ``follow_up`` (``is_follow_up`` of an existing case
    and not ``ack_follow_ups``), ``rate_limited`` (``recent_acks_to_sender >= max_per_window``).
    """
    flag = _flag_reason(inbound)
    if flag is not None:
        return False, flag
    address = reply_address(inbound)
    if address is None:
        return False, "no_address"
    for reason, applies in (
        ("noreply_sender", lambda: is_robot_address(address)),
        ("own_address", lambda: is_own_address(address, our_addresses)),
        ("spam", lambda: triage_category == "spam"),
        ("follow_up", lambda: is_follow_up and not ack_follow_ups),
        ("rate_limited", lambda: recent_acks_to_sender >= max_per_window),
    ):
        if applies():
            return False, reason
    return True, "ok"
