"""Frontdesk kernel: what every stage shares (message types, bus, settings, errors, CLI).

The stages themselves live in the top-level packages ``ingest``, ``classify`` and ``dispatch``.
"""

from frontdesk.errors import FrontdeskError
from frontdesk.messages import (
    Attachment,
    CaseEvent,
    DeadLetter,
    Flags,
    InboundMessage,
    Party,
    ThreadHints,
    Triage,
    TriagedMessage,
)

__version__ = "0.1.0"

__all__ = [
    "Attachment",
    "CaseEvent",
    "DeadLetter",
    "Flags",
    "FrontdeskError",
    "InboundMessage",
    "Party",
    "ThreadHints",
    "Triage",
    "TriagedMessage",
    "__version__",
]
