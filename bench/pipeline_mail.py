"""The mails of ``bench.pipeline`` and how they go in and come out: customer mails from the dev split,
APPENDed to Dovecot in a burst or paced (open loop), and their acknowledgements matched at the SMTP
recorder by In-Reply-To, or found suppressed in the case history."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import compat32
from email.utils import format_datetime
from typing import Any

from imapclient import IMAPClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from bench.pipeline_report import Outcome
from classify.data import DEV_FILE, read_examples

USER, PASSWORD = "bench", "bench-secret"
APPEND_BATCH = 100


@dataclass(frozen=True)
class Mail:
    message_id: str
    address: str
    subject: str
    text: str

    def raw(self) -> bytes:
        msg = EmailMessage()
        msg["From"] = f"Customer <{self.address}>"
        msg["To"] = "support@frontdesk.example"
        msg["Subject"] = self.subject
        msg["Message-ID"] = self.message_id
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg.set_content(self.text)
        return msg.as_bytes()


def mails(n: int, run: str, phase: str) -> list[Mail]:
    """``n`` customer mails: the dev split's non-spam texts cycled, one sender and Message-ID each."""
    examples = [e for e in read_examples(DEV_FILE) if e.category != "spam"]
    return [Mail(f"<{phase}-{i}-{run}@customers.example>", f"{phase}{i}.{run}@customers.example",
                 examples[i % len(examples)].subject or "Question", examples[i % len(examples)].text)
            for i in range(n)]


def append_burst(srv: Any, batch: Sequence[Mail]) -> float:
    """APPEND every mail (MULTIAPPEND of 100) on one connection; returns when the first was issued."""
    raws = [m.raw() for m in batch]
    with IMAPClient(srv.dovecot.host, srv.dovecot.port, ssl=False, timeout=120) as imap:
        imap.login(USER, PASSWORD)
        started = time.time()
        for i in range(0, len(raws), APPEND_BATCH):
            imap.multiappend("INBOX", raws[i:i + APPEND_BATCH])
    return started


def append_paced(srv: Any, batch: Sequence[Mail], rate: float) -> dict[str, float]:
    """APPEND one mail every 1/rate s (open loop: a slow APPEND does not shift the schedule);
    returns Message-ID -> when its APPEND was issued (time.time())."""
    raws = [m.raw() for m in batch]
    issued: dict[str, float] = {}
    with IMAPClient(srv.dovecot.host, srv.dovecot.port, ssl=False, timeout=120) as imap:
        imap.login(USER, PASSWORD)
        t0 = time.monotonic()
        for i, (mail, raw) in enumerate(zip(batch, raws, strict=True)):
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            issued[mail.message_id] = time.time()
            imap.append("INBOX", raw)
    return issued


_HEADERS = BytesParser(policy=compat32)  # the header block only, no header objects: cheap


class Acks:
    """The acknowledgements the SMTP recorder received, by the Message-ID they answer (In-Reply-To).
    Incremental: each refresh reads only what arrived since the last, so that watching costs the
    pipeline (same cores) next to nothing."""

    def __init__(self, smtp: Any) -> None:
        self.smtp, self.seen = smtp, 0
        self.first: dict[str, float] = {}  # In-Reply-To -> when the first answer arrived (time.time())
        self.count: Counter[str] = Counter()

    def refresh(self) -> None:
        for rec in self.smtp.messages[self.seen:]:
            key = str(_HEADERS.parsebytes(rec.raw, headersonly=True)["In-Reply-To"] or "").strip()
            self.count[key] += 1
            self.first.setdefault(key, rec.received_at)
            self.seen += 1


def suppressed(engine: Engine) -> dict[str, str]:
    """Message-ID -> reason, for every mail whose acknowledgement dispatch decided not to send."""
    with engine.connect() as conn:
        rows = conn.execute(text("select m.external_id, h.detail from case_history h join messages m "
                                 "on m.id = h.message_id where h.event = 'ack_suppressed'")).all()
    return {ext: (json.loads(d) if isinstance(d, str) else d or {}).get("reason", "?") for ext, d in rows}


def wait_for(batch: Sequence[Mail], acks: Acks, engine: Engine, topo: Any, timeout: float) -> Outcome:
    """Block until every mail of ``batch`` is acknowledged or suppressed, or ``timeout`` passes."""
    wanted = {m.message_id for m in batch}
    deadline, checked, out = time.monotonic() + timeout, 0.0, Outcome()
    while time.monotonic() < deadline:
        acks.refresh()
        out.acked = {k: acks.first[k] for k in wanted if k in acks.first}
        out.duplicates = sum(acks.count[k] - 1 for k in out.acked)
        pending = wanted - set(out.acked)
        if pending and time.monotonic() - checked > 5.0:
            checked = time.monotonic()
            out.suppressed = {k: r for k, r in suppressed(engine).items() if k in wanted}
        if pending <= set(out.suppressed):
            out.complete = True
            return out
        failed = [p for ps in topo.processes.values() for p in ps if p.failed]
        if failed:
            raise SystemExit("the topology gave up on " + ", ".join(f"{p.name}:\n{p.log_tail(30)}" for p in failed))
        time.sleep(0.25)  # latency comes from the recorder's arrival times, not from this loop
    return out
