"""The dispatch stage: triaged topic → cases (one transaction per message) → outbox.

Nothing is published from here directly: case events and acknowledgements are outbox rows
written in the same transaction as the case, delivered by :mod:`dispatch.relay`. A redelivered
record finds its message id stored and is a no-op, so a crash between the database commit and
the bus commit loses nothing and doubles nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from dispatch.base import CaseStore
from frontdesk.bus.base import Record
from frontdesk.codec import decode
from frontdesk.faults import crashpoint
from frontdesk.messages import TriagedMessage
from frontdesk.stage import Outcome


class DispatchProcessor:
    def __init__(self, store: CaseStore) -> None:
        self.store = store

    def process(self, records: Sequence[Record]) -> list[Outcome]:
        outcomes = []
        for record in records:
            triaged = decode(record.value, TriagedMessage)
            self.store.apply(triaged)
            crashpoint("dispatch.after_db_commit")
            outcomes.append(Outcome(record))
        return outcomes
