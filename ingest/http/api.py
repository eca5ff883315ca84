"""Version 1 of the messages API (``POST /v1/messages``): the request body and its message.

For social-media teams forwarding public mentions and for chat widgets. The body is validated
strictly (unknown fields are refused, ids must be printable, text at most 20,000 characters), so
a 422 names the offending field. Names and handles are untrusted text: they are kept, as one line.
The message id is derived from (``http:<platform>``, ``external_id``): posting the same message
again is accepted and yields the same id, which downstream stages treat as a no-op.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from frontdesk.messages import Attachment, InboundMessage, Party, ThreadHints
from ingest.http.normalise import MAX_ID, MAX_NAME, MAX_TEXT, as_handle, clean_text, single_line

# No C0/C1 controls or line separators: ids are logged and shown by `frontdesk cases show`.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
URL = r"^https?://\S+$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthorIn(_In):
    id: str = Field(min_length=1, max_length=MAX_ID, pattern=PRINTABLE, description="Stable user id on the platform")
    handle: str | None = Field(None, max_length=MAX_NAME, description="Handle, with or without '@'")
    name: str | None = Field(None, max_length=MAX_NAME, description="Display name (kept as one line of text)")


class AttachmentIn(_In):
    name: str = Field(min_length=1, max_length=255)
    content_type: str = Field(max_length=127, pattern=r"^[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*$")
    size: int = Field(ge=0, description="Bytes")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 of the content, hex")
    url: str | None = Field(None, max_length=2048, pattern=URL,
                            description="Where the content can be fetched; carried downstream as Attachment.ref")


class MessageIn(_In):
    """One customer message forwarded by a social-media team or a chat widget."""

    channel: Literal["social", "chat"]
    platform: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,39}$", description="e.g. 'twitter', 'webchat'")
    external_id: str = Field(min_length=1, max_length=MAX_ID, pattern=PRINTABLE,
                             description="The platform's message id: the same id is the same message")
    author: AuthorIn
    text: str = Field(max_length=MAX_TEXT, description="Plain text; control characters are removed")
    conversation_id: str | None = Field(None, max_length=MAX_ID, pattern=PRINTABLE,
                                        description="Thread or conversation on the platform; joins follow-ups")
    permalink: str | None = Field(None, max_length=2048, pattern=URL)
    sent_at: AwareDatetime | None = Field(None, description="RFC 3339, with a time zone")
    attachments: tuple[AttachmentIn, ...] = Field((), max_length=50)


class Accepted(BaseModel):
    """202: the message is durably on the bus under ``id``."""

    id: str = Field(description="Pipeline message id, stable for (platform, external_id)")
    status: Literal["accepted"] = "accepted"


class Problem(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    detail: list[FieldError]


class Published(BaseModel):
    """200 to a webhook: these messages are durably on the bus (none for non-message events), and so are the
    dead-letter records of the parts that could not be read."""

    published: int
    ids: list[str]
    dead_lettered: int = Field(0, description="Parts of the body (updates, entries, changes, events, messages) that "
                                              "could not be read; each is on the dead-letter topic with the reason")


def api_message(body: MessageIn, *, received_at: datetime) -> InboundMessage:
    """The inbound message of a validated body; connector ``http:<platform>``."""
    text = clean_text(body.text)
    return InboundMessage.create(
        connector=f"http:{body.platform}", external_id=body.external_id, channel=body.channel,
        platform=body.platform, thread=ThreadHints(conversation_id=body.conversation_id),
        sender=Party(platform_id=body.author.id, handle=as_handle(body.author.handle),
                     name=single_line(body.author.name) or None),
        text=text, full_text=text, received_at=received_at, sent_at=body.sent_at, permalink=body.permalink,
        attachments=tuple(Attachment(name=single_line(a.name, 255) or "attachment", content_type=a.content_type.lower(),
                                     size=a.size, sha256=a.sha256.lower(), ref=a.url) for a in body.attachments),
    )
