"""Acknowledgements: the localised text of an auto-reply and the email that carries it.

Both functions are pure (the templates directory is the only thing read). Untrusted text — the
customer's name, the original subject, message ids — reaches a template only as a variable
(never as template source) and a header only after control characters are removed, so it can
neither inject template syntax nor extra header lines.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2

from dispatch.suppress import reply_address, valid_address
from frontdesk.errors import ConfigError, ReplyError
from frontdesk.messages import InboundMessage

MAX_SUBJECT = 150
MAX_NAME = 60
MAX_REFERENCES = 900
NO_SUBJECT = "(no subject)"
# C0/C1 controls, line/paragraph separators and bidi overrides (which can disguise text) → space.
_INVISIBLE = dict.fromkeys(
    [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A),
     0xFEFF],
    " ",
)
_LANGUAGE = re.compile(r"[a-z]{2,3}")
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_MSG_ID = re.compile(r"<[!-;=?A-~]{1,120}@[!-;=?A-~]{1,120}>")
_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|ynt|cvp|ответ|отв)\s*(?:\[\d+\]|\(\d+\))?\s*:\s*", re.IGNORECASE)
_LINKISH = re.compile(r"://|www\.|@|\bhttps?\b", re.IGNORECASE)
# A bare host name that mail clients and chat apps turn into a link: "bet-free.com", "t.me/x", "бет.рф".
# Two-letter endings are country domains; longer ones only where common, so "Dr.Aysel" stays a name.
_DOMAINISH = re.compile(
    r"[^\W_](?:[\w-]*[^\W_])?\.(?:[a-z]{2}|com|net|org|info|biz|xyz|top|online|site|club|live|link|click|shop|app"
    r"|bet|casino|poker|win|vip|pro|games?|space|store|icu|one|fun|рф|рус|бел|укр|қаз|xn--[a-z0-9-]+)(?![\w.-]*[^\W_])",
    re.IGNORECASE)
# Raw header values are written as they are: re-folding re-parses them, and the email package
# decodes "=?...?=" (an RFC 2047 encoded-word, which can carry CR/LF) even inside addresses.
# 7bit: a UTF-8 body is always quoted-printable or base64; as 8bit it would need BODY=8BITMIME.
_POLICY = SMTP.clone(refold_source="none", cte_type="7bit")


@dataclass(frozen=True, slots=True)
class _Words:
    """How one language says a duration: unit forms, plural rule, phrase around it."""

    plural: Callable[[int], int]
    counted: dict[str, tuple[str, ...]]  # the form after a number: "2 hours", "2 часа"
    governed: dict[str, tuple[str, ...]]  # the form inside the phrase (Russian: genitive)
    phrase: str
    joiner: str


def _slavic(n: int) -> int:
    """Index of the Russian plural form (CLDR one / few / many) for ``n``."""
    if n % 10 == 1 and n % 100 != 11:
        return 0
    return 1 if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14 else 2


_EN = {"d": ("day", "days"), "h": ("hour", "hours"), "m": ("minute", "minutes")}
_RU = {"d": ("день", "дня", "дней"), "h": ("час", "часа", "часов"), "m": ("минута", "минуты", "минут")}
_RU_GENITIVE = {"d": ("дня", "дней", "дней"), "h": ("часа", "часов", "часов"), "m": ("минуты", "минут", "минут")}
_AZ = {"d": ("gün",), "h": ("saat",), "m": ("dəqiqə",)}
_TR = {"d": ("gün",), "h": ("saat",), "m": ("dakika",)}
WORDS: dict[str, _Words] = {
    "en": _Words(lambda n: 0 if n == 1 else 1, _EN, _EN, "within {}", " and "),
    "ru": _Words(_slavic, _RU, _RU_GENITIVE, "в течение {}", " и "),
    "az": _Words(lambda n: 0, _AZ, _AZ, "{} ərzində", " "),
    "tr": _Words(lambda n: 0, _TR, _TR, "{} içinde", " "),
}


def _parts(sla: timedelta) -> list[tuple[int, str]]:
    """``sla`` as (count, unit) for days, hours and minutes, rounded up to a whole minute."""
    if sla <= timedelta():
        raise ValueError(f"an SLA must be positive, got {sla}")
    days, minutes = divmod(math.ceil(sla.total_seconds() / 60), 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return [(n, unit) for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]


def duration_text(sla: timedelta, language: str) -> str:
    """``sla`` as a counted duration: "2 hours", "2 часа", "2 saat" (English if unknown)."""
    words = WORDS.get(language, WORDS["en"])
    return " ".join(f"{n} {words.counted[unit][words.plural(n)]}" for n, unit in _parts(sla))


def sla_phrase(sla: timedelta, language: str) -> str:
    """The expected-response phrase: "within 15 minutes", "в течение 2 часов", "1 gün ərzində"."""
    words = WORDS.get(language, WORDS["en"])
    units = [f"{n} {words.governed[unit][words.plural(n)]}" for n, unit in _parts(sla)]
    return words.phrase.format(words.joiner.join(units))


def clean_line(value: str | None, limit: int) -> str:
    """``value`` on one line: controls → space, whitespace collapsed, cut to ``limit`` chars with "…"."""
    text = " ".join((value or "").translate(_INVISIBLE).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _carries_link(text: str) -> bool:
    """A URL, address or bare host name, also written with full-width or other compatibility letters."""
    plain = unicodedata.normalize("NFKC", text)
    return bool(_LINKISH.search(plain) or _DOMAINISH.search(plain))


def safe_customer_name(name: str | None) -> str | None:
    """A display name fit to greet with, or None.

    Names carrying links, host names or addresses are dropped (also written with full-width or
    other compatibility letters): spammers put URLs in display names so that auto-replies carry
    them to whoever they forged as the sender.
    """
    text = clean_line(name, MAX_NAME)
    return text if text and not _carries_link(text) else None


def _due_text(due: datetime) -> str:
    if due.tzinfo is None or due.utcoffset() is None:
        raise ValueError("due must be timezone-aware")
    offset = due.strftime("%z")
    zone = "UTC" if offset in ("+0000", "-0000") else f"UTC{offset[:3]}:{offset[3:]}"
    return f"{due:%Y-%m-%d %H:%M} {zone}"


@functools.lru_cache(maxsize=8)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises ValueError if this machine's time zone data lacks it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Baku or UTC)") from exc


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir), autoescape=False, undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    )


def _template(
    env: jinja2.Environment, name: str, language: str, fallback: str, templates_dir: Path
) -> tuple[jinja2.Template, str]:
    """Template ``<name>.<lang>.txt.j2`` for ``language`` (normalised, "ru-RU" → "ru"), else ``fallback``'s."""
    lang = language.strip().lower().replace("_", "-").split("-")[0]
    candidates = [lang] if _LANGUAGE.fullmatch(lang) else []
    for candidate in [*candidates, fallback]:
        try:
            return env.get_template(f"{name}.{candidate}.txt.j2"), candidate
        except jinja2.TemplateNotFound:
            continue
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"{exc.filename or templates_dir}:{exc.lineno}: template error: {exc.message}") from exc
    raise ConfigError(f"{templates_dir}: no template {name}.{fallback}.txt.j2 (the fallback)")


def _render(name: str, language: str, fallback: str, templates_dir: Path,
            context: Callable[[str], dict[str, object]]) -> str:
    """Render ``name`` in ``language`` with ``context(language used)``; ConfigError for any template problem."""
    env = _environment(str(Path(templates_dir).resolve()))
    template, used = _template(env, name, language, fallback, templates_dir)
    try:
        text = template.render(context(used))
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{template.filename}: template error: {exc}") from exc
    return text.strip() + "\n"


def render_ack(
    case_reference: str,
    language: str,
    sla: timedelta,
    due: datetime,
    customer_name: str | None,
    templates_dir: Path,
    fallback_language: str = "en",
    timezone: str | None = None,
) -> str:
    """Render the plain-text acknowledgement in ``language`` (``fallback_language`` if no template).

    Templates ``ack.<lang>.txt.j2`` get ``reference``, ``customer_name`` (cleaned, or None),
    ``sla_text`` ("within 4 hours", localised), ``sla_duration`` ("4 hours"), ``due_text``
    ("2026-11-22 14:30 UTC+04:00": ``due``, which must be timezone-aware, in the IANA zone
    ``timezone``, or as given) and ``language``.
    Raises ConfigError for a missing fallback template or a broken template.
    """
    due_text = _due_text(due.astimezone(zone(timezone)) if timezone and due.tzinfo is not None else due)
    return _render("ack", language, fallback_language, templates_dir, lambda used: {
        "reference": case_reference, "customer_name": safe_customer_name(customer_name),
        "sla_text": sla_phrase(sla, used), "sla_duration": duration_text(sla, used), "due_text": due_text,
        "language": used})


def render_public_ack(language: str, sla: timedelta, templates_dir: Path, fallback_language: str = "en") -> str:
    """The short public reply under a social mention, in ``language``.

    Templates ``public_ack.<lang>.txt.j2`` get only ``sla_text``, ``sla_duration`` and ``language``:
    no case reference, no name, no due time, so nothing about the customer can reach a public thread
    (a template using anything else fails with ConfigError instead of rendering it).
    """
    return _render("public_ack", language, fallback_language, templates_dir, lambda used: {
        "sla_text": sla_phrase(sla, used), "sla_duration": duration_text(sla, used), "language": used})


def ack_subject(case_reference: str, original: str) -> str:
    """``[REF] Re: <original>``, without stacked reply prefixes or a repeated ``[REF]``; ``(no subject)``
    instead of a subject carrying a link, address or host name: anyone can forge the sender, and an
    acknowledgement must not carry a spammer's link to whoever was forged (as display names)."""
    tag = re.compile(re.escape(f"[{case_reference}]"), re.IGNORECASE)
    text = clean_line(original, 10 * MAX_SUBJECT)
    while True:
        stripped = _REPLY_PREFIX.sub("", " ".join(tag.sub(" ", text).split())).strip()
        if stripped == text:
            break
        text = stripped
    shown = clean_line(text, MAX_SUBJECT)
    return f"[{case_reference}] Re: {shown if shown and not _carries_link(shown) else NO_SUBJECT}"


def ack_message_id(case_reference: str, inbound_id: str, domain: str) -> str:
    """The deterministic Message-ID of the acknowledgement of ``inbound_id`` for a case."""
    digest = hashlib.sha256(f"{case_reference}\x00{inbound_id}".encode()).hexdigest()[:24]
    return f"<ack.{digest}@{domain}>"


def _msg_id(value: str | None) -> str | None:
    """``value`` as ``<id@host>`` if it is a well-formed message id, else None."""
    text = (value or "").strip()
    text = text if text.startswith("<") else f"<{text}>"
    return text if _MSG_ID.fullmatch(text) and "=?" not in text else None  # "=?": see _POLICY


def _references(earlier: Iterable[str], original: str, limit: int = MAX_REFERENCES) -> str:
    """``References`` for a reply: the first and the latest ids within ``limit`` chars, original last."""
    ids = [i for i in dict.fromkeys(earlier) if i != original] + [original]
    kept = [ids[-1]]
    used = len(ids[-1]) + (len(ids[0]) + 1 if len(ids) > 1 else 0)
    for ref in reversed(ids[1:-1]):
        if used + len(ref) + 1 > limit:
            break
        kept.insert(0, ref)
        used += len(ref) + 1
    return " ".join(([ids[0]] if len(ids) > 1 else []) + kept)


def _set_text_header(msg: EmailMessage, name: str, value: str) -> None:
    """Set an unstructured header; non-ASCII text is RFC 2047-encoded by :class:`Header`.

    The policy's own folder drops the space between two encoded words on older Pythons
    (CPython gh-144156): "средств — x" would arrive as "средств— x".
    """
    if value.isascii() and "=?" not in value:  # "=?": a customer's literal encoded-word, see _POLICY
        msg[name] = value
    else:
        msg.set_raw(name, Header(value, "utf-8", header_name=name).encode())


def _check_config(case_reference: str, from_address: str, message_id_domain: str) -> None:
    if not _REFERENCE.fullmatch(case_reference):
        raise ValueError(f"bad case reference {case_reference!r}")
    if valid_address(from_address) is None:
        raise ConfigError(f"acknowledgement from_address {from_address!r} is not a valid email address")
    if not _HOST.fullmatch(message_id_domain):
        raise ConfigError(f"acknowledgement message_id_domain {message_id_domain!r} is not a host name")


def build_ack_email(
    *,
    inbound: InboundMessage,
    case_reference: str,
    body: str,
    from_address: str,
    from_name: str,
    message_id_domain: str,
    date: datetime | None = None,
) -> EmailMessage:
    """The acknowledgement email replying to ``inbound`` (RFC 3834 auto-reply, threaded).

    ``date`` defaults to now. Raises ReplyError if the sender has no well-formed address,
    ConfigError for a bad ``from_address`` / ``message_id_domain``, ValueError for a bad reference.
    """
    _check_config(case_reference, from_address, message_id_domain)
    to = reply_address(inbound)
    if to is None:
        raise ReplyError(f"message {inbound.id}: no well-formed sender address to acknowledge")
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = Address(display_name=clean_line(from_name, MAX_NAME), addr_spec=valid_address(from_address))
    msg.set_raw("To", to)  # a checked local@domain, written verbatim (see _POLICY)
    _set_text_header(msg, "Subject", ack_subject(case_reference, inbound.subject))
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = ack_message_id(case_reference, inbound.id, message_id_domain)
    original = _msg_id(inbound.external_id)
    if original is not None:
        earlier = [r for r in map(_msg_id, inbound.thread.references) if r]
        parent = _msg_id(inbound.thread.in_reply_to)
        msg["In-Reply-To"] = original
        msg["References"] = _references(earlier or ([parent] if parent else []), original)
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(body, charset="utf-8")
    return msg
