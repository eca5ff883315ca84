"""The pipeline's lingua franca: frozen, typed, versioned message types.

Every record on a Frontdesk topic is one of these, serialised as JSON by :mod:`frontdesk.codec`.
Each carries ``kind`` and ``version`` so a consumer can refuse what it does not understand
instead of misreading it. Additive, optional fields keep the version; anything else bumps it.

Topic                      type               key
``<prefix>inbound``        InboundMessage     message id
``<prefix>triaged``        TriagedMessage     message id
``<prefix>cases``          CaseEvent          case id
``<prefix>deadletter``     DeadLetter         original key
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Channel = Literal["email", "social", "chat"]
Urgency = Literal["critical", "high", "normal", "low"]
URGENCY_ORDER: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}


class Frozen(BaseModel):
    """Base of all message parts: immutable, strict about unknown fields within a version."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Party(Frozen):
    """Who wrote or received a message, as far as the channel tells."""

    address: str | None = Field(None, description="Email address, lower-cased")
    handle: str | None = Field(None, description="Social/chat handle, without '@'")
    platform_id: str | None = Field(None, description="Stable user id on the platform")
    phone: str | None = Field(None, description="E.164 phone number (WhatsApp)")
    name: str | None = Field(None, description="Display name as sent; untrusted text")


class Attachment(Frozen):
    """Metadata of one attachment. Mail attachments are stored content-addressed in the blob store;
    chat and social media stay on the platform (``stored_at`` None) and ``ref`` says where to fetch them."""

    name: str
    content_type: str
    size: int = Field(ge=0, description="Bytes; 0 if the platform does not say")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of what sha256_of says")
    stored_at: str | None = Field(None, description="Blob reference; None if the bytes are not stored")
    inline: bool = False
    sha256_of: Literal["content", "reference"] = Field(
        "content", description="'content': sha256 is the hash of the bytes; 'reference': the bytes were not "
                               "downloaded and sha256 is a hash of the platform reference (identifies, never verifies)")
    ref: str | None = Field(None, description="The platform's file reference to fetch the media later: Telegram "
                                              "file_id (getFile), WhatsApp media id, Messenger/Instagram URL "
                                              "(expires), the URL given to /v1/messages")


class ThreadHints(Frozen):
    """What the channel says about which conversation a message belongs to."""

    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    conversation_id: str | None = None


class Flags(Frozen):
    """Facts the dispatcher needs to decide whether an automatic reply is allowed."""

    auto_submitted: bool = False
    auto_reply: bool = False
    bounce: bool = False
    bounced_message_id: str | None = None
    bulk: bool = False
    list_id: str | None = None
    suppress_autoreply: bool = False
    edited: bool = False


def message_id(connector: str, external_id: str, content_digest: str | None = None) -> str:
    """The stable pipeline id of a message: the same source message always gets the same id.

    This is what makes a re-published message (after a crash, a replayed webhook, a UIDVALIDITY
    re-scan) a no-op downstream. ``content_digest`` is for sources whose external id does not tell
    messages apart: the sender chooses a mail's Message-ID, and web forms and broken mailers give
    every mail the same one, so the IMAP connector adds the sha256 of the raw mail (a server stores a
    mail unchanged: fetched again, it has the same digest). Pure.
    """
    key = f"{connector}\x00{external_id}"
    if content_digest is not None:
        key += f"\x00{content_digest}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"msg_{digest[:32]}"


class InboundMessage(Frozen):
    """One customer message, normalised from any connector. Published on the inbound topic."""

    kind: Literal["inbound"] = "inbound"
    version: Literal[1] = 1
    id: str = Field(description="message_id(connector, external_id[, content digest]); mail adds the sha256 of "
                                "its raw bytes (senders reuse Message-IDs)")
    channel: Channel
    connector: str = Field(description="Configured connector name, e.g. 'imap:support'")
    platform: str | None = Field(None, description="email, telegram, whatsapp, facebook, ...")
    external_id: str = Field(description="Message-ID or the platform's message id")
    thread: ThreadHints = ThreadHints()
    sender: Party
    recipients: tuple[Party, ...] = ()
    subject: str = ""
    text: str = Field("", description="Clean text: quotes and signatures removed")
    full_text: str = Field("", description="Everything the customer's message contained")
    attachments: tuple[Attachment, ...] = ()
    received_at: AwareDatetime
    sent_at: AwareDatetime | None = None
    raw_ref: str | None = Field(None, description="Blob reference of the raw bytes")
    permalink: str | None = None
    flags: Flags = Flags()

    @classmethod
    def create(cls, *, connector: str, external_id: str, content_digest: str | None = None,
               **fields: object) -> InboundMessage:
        """Build a message whose id is derived from (connector, external_id[, content_digest]): :func:`message_id`."""
        return cls(
            id=message_id(connector, external_id, content_digest),
            connector=connector,
            external_id=external_id,
            **fields,  # type: ignore[arg-type]
        )


class Triage(Frozen):
    """The classifier's verdict on one message."""

    category: str
    urgency: Urgency
    language: str
    confidence: dict[str, float] = Field(
        default_factory=dict, description="Calibrated probability per task: category, urgency, language"
    )
    scores: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per task, probability of every label"
    )
    model_version: str
    needs_review: bool = False
    reasons: tuple[str, ...] = Field((), description="Rules that changed the model's verdict")


class TriagedMessage(Frozen):
    """An inbound message with its triage. Published on the triaged topic."""

    kind: Literal["triaged"] = "triaged"
    version: Literal[1] = 1
    message: InboundMessage
    triage: Triage
    triaged_at: AwareDatetime

    @property
    def id(self) -> str:
        return self.message.id


class CaseCustomer(Frozen):
    id: str
    name: str | None = None
    identities: tuple[str, ...] = Field((), description="e.g. 'email:a@b.az', 'telegram:123'")


class CaseSnapshot(Frozen):
    """The state of a case right after the event."""

    id: str
    reference: str = Field(description="Public reference, e.g. FD-2026-000123")
    status: Literal["open", "pending", "resolved", "closed"]
    queue: str
    priority: int = Field(ge=1, le=5, description="1 is most urgent")
    category: str
    urgency: Urgency
    language: str
    channel: Channel
    customer: CaseCustomer
    first_response_due: AwareDatetime | None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    message_count: int = Field(ge=1)
    acknowledged: bool = False
    possible_thread_match: str | None = Field(
        None, description="Reference of a case this one may belong to (sender not a participant)"
    )


class CaseEvent(Frozen):
    """A routed-case event for downstream systems. Published on the cases topic, key = case id.

    ``event_id`` is deterministic (case id + triggering message id + type): a redelivered event
    is recognisable as the same event.
    """

    kind: Literal["case"] = "case"
    version: Literal[1] = 1
    event_id: str
    type: Literal["created", "updated"]
    occurred_at: AwareDatetime
    message_id: str = Field(description="The inbound message that caused this event")
    changes: tuple[str, ...] = Field((), description="e.g. 'message_added', 'rerouted'")
    case: CaseSnapshot


class DeadLetter(Frozen):
    """A record a stage could not process, with why and the exact original bytes."""

    kind: Literal["deadletter"] = "deadletter"
    version: Literal[1] = 1
    stage: str
    reason: str
    error_type: str
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key_b64: str | None = None
    value_b64: str = Field(description="The original record value, base64")
    message_id: str | None = None
    failed_at: AwareDatetime


PIPELINE_TYPES: dict[str, type[Frozen]] = {
    "inbound": InboundMessage,
    "triaged": TriagedMessage,
    "cases": CaseEvent,
    "deadletter": DeadLetter,
}
