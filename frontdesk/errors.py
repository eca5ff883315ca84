"""The one error tree of Frontdesk.

Library exceptions (kafka-python, SQLAlchemy, imapclient, smtplib, ...) never leave a component:
each boundary translates them into one of these with ``raise ... from exc``.

Two families decide what a stage loop does with a failing record:

* :class:`TransientError` — the world is temporarily unavailable (broker, database, SMTP server).
  The loop backs off and retries the *same* records; nothing is committed, nothing is dropped.
* everything else raised while handling one record (including :class:`RecordError`) makes that
  record *poison*: it goes to the dead-letter topic with the stage and reason, and the loop goes on.
"""

from __future__ import annotations


class FrontdeskError(Exception):
    """Base class of every error Frontdesk raises on purpose."""


class ConfigError(FrontdeskError):
    """Configuration is invalid; raised at start-up, names the file/field at fault."""


class TransientError(FrontdeskError):
    """A dependency is unavailable for now; retrying the same operation later may succeed."""


class RecordError(FrontdeskError):
    """One input record cannot be processed, ever; it belongs on the dead-letter topic."""


class DecodeError(RecordError):
    """Bytes could not be decoded into a pipeline message.

    ``raw`` holds the exact bytes so the dead-letter record can carry them.
    """

    def __init__(self, reason: str, raw: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class BusError(FrontdeskError):
    """The bus failed in a way that is not known to be transient."""


class RecordTooLarge(BusError, RecordError):
    """A record over the bus's ``max_record_bytes``; raised before any record of the call is sent."""


class BusUnavailable(BusError, TransientError):
    """The broker (or the embedded log) cannot be reached or did not acknowledge in time."""


class CommitFailed(BusError, TransientError):
    """An offset commit was rejected (e.g. after a rebalance); the records will be redelivered."""


class StoreError(FrontdeskError):
    """The case store failed permanently for this operation."""


class StoreUnavailable(StoreError, TransientError):
    """The database cannot be reached; retry later."""


class ReplyError(FrontdeskError):
    """An acknowledgement could not be delivered and retrying will not help."""


class ReplyUnavailable(ReplyError, TransientError):
    """The reply channel (SMTP server, platform API) is temporarily unavailable."""


class SourceError(FrontdeskError):
    """A source connector failed (connection, authentication, protocol)."""


class SourceAuthError(SourceError):
    """A source rejected our credentials; retrying without a config change will not help."""


class ClassifierError(FrontdeskError):
    """The classifier could not be loaded or failed on a batch."""


class TopologyError(FrontdeskError):
    """A process of the local multi-process topology (``frontdesk.topology``) failed for good or never got ready."""
