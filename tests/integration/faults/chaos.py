"""Load and faults for the fault suite: mail and chat feeders, and the chaos schedule.

Everything here acts from outside, like an operator or the network would: APPEND over IMAP,
POST over HTTP (retrying until 202, as a real sender must), SIGKILL of stage processes, a broker
restart, PostgreSQL stopped, an SMTP server answering 451. Every action is logged with its time so
a failing count can be read against what happened when.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime
from datetime import UTC, datetime
from typing import Any

import httpx
from imapclient import IMAPClient

log = logging.getLogger("faults")


@dataclass
class Journal:
    """What the chaos did, when (seconds since start)."""

    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        with self.lock:
            self.events.append((time.monotonic() - self.started, text))
        log.warning("chaos: %s", text)

    def killed(self, service: str) -> None:
        with self.lock:
            self.kills[service] = self.kills.get(service, 0) + 1

    def text(self) -> str:
        return "\n".join(f"{t:7.1f}s {e}" for t, e in self.events)


def email(n: int, text: str, subject: str, size: int = 0) -> bytes:
    """One customer mail with a unique sender and Message-ID; ``size`` pads it (over-limit mails)."""
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <c{n}@customers.example>"
    msg["To"] = "support@frontdesk.example"
    msg["Subject"] = f"{subject} [{n}]"
    msg["Message-ID"] = f"<fault-{n}@customers.example>"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg.set_content(text + ("\n" + "x" * 76) * (size // 77))
    return msg.as_bytes()


def append_mails(host: str, port: int, user: str, password: str, mails: Sequence[bytes], per_second: float,
                 stop: threading.Event, journal: Journal) -> None:
    """APPEND ``mails`` at about ``per_second`` (batches of 20), reconnecting if the server drops us."""
    pos = 0
    while pos < len(mails) and not stop.is_set():
        try:
            with IMAPClient(host, port, ssl=False, timeout=30) as imap:
                imap.login(user, password)
                while pos < len(mails) and not stop.is_set():
                    started = time.monotonic()
                    imap.multiappend("INBOX", list(mails[pos : pos + 20]))
                    pos += len(mails[pos : pos + 20])
                    stop.wait(max(0.0, 20 / per_second - (time.monotonic() - started)))
        except Exception as exc:  # noqa: BLE001 - a feeder retries like a mail server would
            journal.note(f"imap feeder: {exc!r}; retrying")
            time.sleep(1)
    journal.note(f"imap feeder: {pos} mails appended")


def post_chats(url: Callable[[], str], token: str, bodies: Sequence[dict[str, Any]], per_second: float,
               stop: threading.Event, journal: Journal, accepted: list[str]) -> None:
    """POST each body until it is answered 202 (connection errors and 5xx are retried: ids are stable)."""
    headers = {"Authorization": f"Bearer {token}"}
    retries = 0
    with httpx.Client(timeout=15) as client:
        for body in bodies:
            started = time.monotonic()
            while not stop.is_set():
                try:
                    response = client.post(f"{url()}/v1/messages", json=body, headers=headers)
                    if response.status_code == 202:
                        accepted.append(response.json()["id"])
                        break
                    if response.status_code < 500:
                        raise AssertionError(f"intake refused a valid message: {response.status_code} {response.text}")
                except httpx.TransportError:
                    pass
                retries += 1
                time.sleep(0.5)
            stop.wait(max(0.0, 1 / per_second - (time.monotonic() - started)))
    journal.note(f"http feeder: {len(accepted)} messages accepted after {retries} retries")


@dataclass
class Faults:
    """The one-off outages, each a callable taking the journal."""

    kafka_restart: Callable[[], None]
    postgres_stop: Callable[[], None]
    postgres_start: Callable[[], None]
    smtp_refuse: Callable[[float], None]


class Chaos(threading.Thread):
    """SIGKILLs a random stage process every ``every`` seconds (each service at least twice) and
    runs each one-off outage once, spread over the run. Deterministic for a given ``seed``."""

    def __init__(self, topo: Any, services: Sequence[str], faults: Faults, journal: Journal, *,
                 seed: int, every: tuple[float, float] = (8.0, 16.0), outage_s: float = 20.0) -> None:
        super().__init__(name="chaos", daemon=True)
        self.topo, self.faults, self.journal, self.outage_s = topo, faults, journal, outage_s
        self.random, self.every = random.Random(seed), every
        self.victims = [s for s in services for _ in range(2)]
        self.random.shuffle(self.victims)
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        plan: list[Callable[[], None]] = [self._kafka, self._postgres, self._smtp]
        try:
            step = 0
            while not self.halt.is_set() and (self.victims or plan):
                if self.halt.wait(self.random.uniform(*self.every)):
                    break
                step += 1
                if plan and step % 3 == 0:
                    plan.pop(0)()
                elif self.victims:
                    self._kill(self.victims.pop())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.journal.note(f"chaos failed: {exc!r}")

    def _kill(self, service: str) -> None:
        procs = self.topo.processes[service]
        index = self.random.randrange(len(procs))
        pid = self.topo.kill(service, index, signal.SIGKILL)
        self.journal.killed(service)
        self.journal.note(f"SIGKILL {service}-{index} (pid {pid})")

    def _kafka(self) -> None:
        self.journal.note("restarting the Kafka broker")
        self.faults.kafka_restart()
        self.journal.note("Kafka broker back")

    def _postgres(self) -> None:
        self.journal.note(f"stopping PostgreSQL for {self.outage_s:.0f}s")
        self.faults.postgres_stop()
        time.sleep(self.outage_s)
        self.faults.postgres_start()
        self.journal.note("PostgreSQL back")

    def _smtp(self) -> None:
        self.journal.note(f"SMTP answers 451 for {self.outage_s:.0f}s")
        self.faults.smtp_refuse(self.outage_s)
