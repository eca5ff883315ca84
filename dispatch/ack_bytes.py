"""The acknowledgement as bytes: :func:`ack_email_bytes` == ``build_ack_email(...).as_bytes()``.

Building the reply with the email package costs ~1 ms of CPU, most of it parsing each header
value into a header object only to fold it back out (and the dispatcher builds one per new
case). The values are ours or already checked and cleaned by :mod:`dispatch.ack`, so a header
whose line is short, plain ASCII is written as it is (what folding it would give); anything
else — long lines, encoded words, unusual spacing — is folded by the email package's own policy.
The body is 7bit, quoted-printable or base64 (never 8bit: see ``dispatch.ack._POLICY``). The output
is byte-for-byte that of ``build_ack_email`` (``tests/unit/dispatch/test_ack_bytes.py``).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from email.contentmanager import _encode_text  # type: ignore[attr-defined]
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime

from dispatch.ack import _POLICY, MAX_NAME, _check_config, _msg_id, _references, ack_message_id, ack_subject, \
    clean_line
from dispatch.suppress import reply_address, valid_address
from frontdesk.errors import ReplyError
from frontdesk.messages import InboundMessage

_CRLF = "\r\n"
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, single spaces, nothing at the ends
_MAX_LINE = 78


def ack_email_bytes(*, inbound: InboundMessage, case_reference: str, body: str, from_address: str, from_name: str,
                    message_id_domain: str, date: datetime | None = None) -> bytes:
    """The bytes of :func:`dispatch.ack.build_ack_email` for the same arguments (same errors)."""
    _check_config(case_reference, from_address, message_id_domain)
    to = reply_address(inbound)
    if to is None:
        raise ReplyError(f"message {inbound.id}: no well-formed sender address to acknowledge")
    cte, payload = _encode_text(body, "utf-8", None, _POLICY)
    date = date or datetime.now(UTC)
    lines = [_from_line(from_name, from_address), f"To: {to}{_CRLF}", _subject_line(ack_subject(case_reference,
                                                                                                  inbound.subject)),
             _line("Date", format_datetime(date)),
             _line("Message-ID", ack_message_id(case_reference, inbound.id, message_id_domain))]
    original = _msg_id(inbound.external_id)
    if original is not None:
        earlier = [r for r in map(_msg_id, inbound.thread.references) if r]
        parent = _msg_id(inbound.thread.in_reply_to)
        lines += [_line("In-Reply-To", original),
                  _line("References", _references(earlier or ([parent] if parent else []), original))]
    lines += [_TRAILER[cte], _CRLF, _CRLF.join(_LINE_BREAKS.split(payload))]
    return "".join(lines).encode("ascii")


def _line(name: str, value: str) -> str:
    """``name: value`` folded as the package folds it: an unstructured header, a Date, or a
    Message-ID holding one id."""
    if len(name) + 2 + len(value) <= _MAX_LINE and _PLAIN.fullmatch(value) and "=?" not in value:
        return f"{name}: {value}{_CRLF}"
    return _POLICY.fold(name, _POLICY.header_store_parse(name, value)[1])


def _subject_line(subject: str) -> str:
    if subject.isascii() and "=?" not in subject:  # as dispatch.ack._set_text_header decides
        return _line("Subject", subject)
    return _POLICY.fold("Subject", Header(subject, "utf-8", header_name="Subject").encode())


@functools.lru_cache(maxsize=16)
def _from_line(from_name: str, from_address: str) -> str:
    """Configuration, so folded by the package once per process."""
    address = Address(display_name=clean_line(from_name, MAX_NAME), addr_spec=valid_address(from_address))
    return _POLICY.fold("From", _POLICY.header_store_parse("From", address)[1])


def _trailer(cte: str) -> str:
    return (f"Auto-Submitted: auto-replied{_CRLF}X-Auto-Response-Suppress: All{_CRLF}"
            f'Content-Type: text/plain; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {cte}{_CRLF}'
            f"MIME-Version: 1.0{_CRLF}")


_TRAILER = {cte: _trailer(cte) for cte in ("7bit", "quoted-printable", "base64")}
