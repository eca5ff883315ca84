"""``frontdesk run``: every stage in one process on one bus (the embedded default).

Stages run in threads with exactly the code they run as separate processes; they talk only
through the bus and the case store, so stopping (Ctrl-C) and restarting loses nothing: each stage
resumes from its committed offsets and the outbox.

The status line's ``lag`` is the classify stage's consumer lag on the inbound topic (end offset −
the classify group's committed offset, ``frontdesk_consumer_lag``, from the StageRunner's
``lag_snapshot``: on the partitions this process owns, refreshed every 5 s), ``?`` until the stage
has its first snapshot; the last line, after the stages stopped, repeats the last value. Counting topic records instead would hide unprocessed messages behind the
triaged records a redelivered batch publishes again.

The embedded bus trims itself (``bus.embedded_retention_h``), in this process as in any other that
uses it: :mod:`frontdesk.bus.sqlite_retention`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from frontdesk.bus.base import Bus, Outgoing
from frontdesk.codec import encode
from frontdesk.errors import ConfigError
from frontdesk.health import Probes
from frontdesk.messages import InboundMessage, Party

log = logging.getLogger(__name__)


class StageThread(threading.Thread):
    """Runs ``target(stop)``; if it dies, records why and stops the whole pipeline."""

    def __init__(self, name: str, target: Callable[[threading.Event], None], stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn, self._stop_event = target, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn(self._stop_event)
        except BaseException as exc:  # noqa: BLE001 - any death must stop the pipeline visibly
            self.error = exc
            log.error("stage %s stopped: %s", self.name, exc)
            self._stop_event.set()


def publish_demo(bus: Bus, examples: list[Any]) -> int:
    """Publish sample customer messages (from the dev split) once; returns how many were new."""
    if sum(bus.end_offsets(bus.topics.inbound).values()):
        return 0
    now = datetime.now(UTC)
    msgs = [InboundMessage.create(connector="demo", external_id=f"demo-{i}", channel=e.channel, platform="demo",
                                  sender=Party(address=f"customer{i}@example.az") if e.channel == "email"
                                  else Party(handle=f"customer{i}", platform_id=str(1000 + i)),
                                  subject=e.subject, text=e.text, full_text=e.text, received_at=now)
            for i, e in enumerate(examples)]
    bus.publish([Outgoing(bus.topics.inbound, encode(m), m.id.encode()) for m in msgs])
    return len(msgs)


def consumer_lag(registry: CollectorRegistry, stage: str, topic: str) -> int | None:
    """``frontdesk_consumer_lag`` of ``stage`` on logical ``topic``, summed over partitions; None
    while ``registry`` has none (the stage has not taken its first lag snapshot, or has stopped)."""
    values = [sample.value for family in registry.collect() if family.name == "frontdesk_consumer_lag"
              for sample in family.samples
              if sample.labels.get("stage") == stage and sample.labels.get("topic") == topic]
    return int(sum(values)) if values else None


def classify_lag() -> int | None:
    """The classify stage's consumer lag on the inbound topic in this process (see the module docstring)."""
    from frontdesk.metrics import default_metrics

    return consumer_lag(default_metrics().registry, "classify", "inbound")


def status_line(bus: Bus, counts: Callable[[], tuple[int, int]],
                lag: Callable[[], int | None] = classify_lag) -> str:
    """One line: records per topic, cases, acknowledgements, dead letters and the classify lag.

    Never raises: a number whose source does not answer (the bus or the case store down) is shown
    as ``?``; the stages wait such an outage out, and the line must not end the run."""
    def ends(topic: str) -> Callable[[], int]:
        return lambda: sum(bus.end_offsets(topic).values())

    t = bus.topics
    inbound, triaged, dead = (_or_unknown(topic, ends(topic), "?") for topic in (t.inbound, t.triaged, t.deadletter))
    cases, acked = _or_unknown("case counts", counts, ("?", "?"))
    behind = _or_unknown("lag", lag, None)
    return (f"in {inbound} | triaged {triaged} | cases {cases} | acknowledged {acked} | dead-letter {dead} | "
            f"lag {'?' if behind is None else f'~{behind}'}")


def _or_unknown(what: str, read: Callable[[], Any], unknown: Any) -> Any:
    """``read()``, or ``unknown`` when it fails (logged at debug level: the stages log the outage)."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - a status line is telemetry: whatever failed, the run goes on
        log.debug("status line: %s unavailable (%s: %s)", what, type(exc).__name__, exc)
        return unknown


def _last_known(lag: Callable[[], int | None]) -> Callable[[], int | None]:
    """``lag`` that repeats its last value once it has none (a stopped stage drops its snapshot)."""
    last: int | None = None

    def read() -> int | None:
        nonlocal last
        value = lag()
        if value is not None:
            last = value
        return last

    return read


def run_pipeline(stages: dict[str, Callable[[threading.Event], None]], stop: threading.Event, bus: Bus,
                 counts: Callable[[], tuple[int, int]], echo: Callable[[str], None], every: float = 2.0,
                 probes: Probes | None = None, lag: Callable[[], int | None] = classify_lag) -> int:
    """Start the stages, print a status line every ``every`` seconds until ``stop``; exit code:
    0, 2 when a stage died of a ConfigError (invalid settings, as the CLI's exit codes), else 1.

    ``probes`` (if given) watches every stage thread, so ``/healthz`` fails when one dies."""
    threads = [StageThread(name, fn, stop) for name, fn in stages.items()]
    lag = _last_known(lag)
    for t in threads:
        if probes is not None:
            probes.watch_thread(t)
        t.start()
    last = ""
    while not stop.wait(every):
        line = status_line(bus, counts, lag)
        if line != last:
            echo(f"{datetime.now():%H:%M:%S} {line}")
            last = line
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    failed = [t for t in threads if t.error is not None]
    for t in failed:
        echo(f"stage {t.name} failed: {t.error}")
    echo(status_line(bus, counts, lag))
    if any(isinstance(t.error, ConfigError) for t in failed):
        return 2
    return 1 if failed else 0
