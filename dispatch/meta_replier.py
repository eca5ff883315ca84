"""Acknowledgements on Facebook (Messenger, Page mentions) and Instagram (Direct, mentions) via the Graph API.

One :class:`MetaReplier` serves both platforms with a Page access token, sent as
``Authorization: Bearer`` (never in a URL, so never in a log line). What it sends depends on
``reply.extra["mode"]`` (set by :mod:`dispatch.reply_target`; ``extra["platform"]`` says which):

=================  ==========================================================================================
``chat``           Send API ``POST /{page}/messages`` ``{"recipient": {"id": <PSID/IGSID>}, "message":
                   {"text"}}`` (Messenger adds ``"messaging_type": "RESPONSE"``).
``dm``             A private reply to the mention's author: the same endpoint with ``"recipient":
                   {"comment_id"}`` (or ``{"post_id"}`` for a Facebook post). Meta allows one per comment,
                   within 7 days.
``public_reply``   Facebook: ``POST /{comment-or-post-id}/comments`` ``{"message"}``. Instagram:
                   ``POST /{ig-user-id}/mentions`` ``{"media_id", "comment_id"?, "message"}`` — the
                   endpoint for replying where our account was @mentioned (a comment or a caption on
                   someone else's media; ``/{comment-id}/replies`` only works on our own media).
=================  ==========================================================================================

``{page}`` is ``meta_page_id`` (default ``me``: the Page of the token). Error handling, retries and the
crash-window caveat are those of :mod:`dispatch.chat_repliers` (Graph has no idempotency key either, so
the relay's one crash window can repeat a reply). A reply missing an id its mode needs raises
:class:`ReplyError`: retrying cannot help.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from dispatch.base import OutboundReply
from dispatch.chat_repliers import GraphReplier
from frontdesk.errors import ReplyError


class MetaReplier(GraphReplier):
    """Messenger / Instagram replies; see the module docstring for the calls per mode."""

    platform = "meta"

    def __init__(self, api_base: str, access_token: SecretStr | str, api_version: str = "v21.0",
                 page_id: str = "me", **options: Any) -> None:
        super().__init__(**options)
        self._token = access_token if isinstance(access_token, SecretStr) else SecretStr(access_token)
        self._base = f"{api_base.rstrip('/')}/{api_version}"
        self._page = page_id

    def send(self, reply: OutboundReply) -> None:
        mode, platform = reply.extra.get("mode", "chat"), reply.extra.get("platform", "")
        if mode == "chat":
            path, body = self._message({"id": reply.recipient}, reply.body, platform)
        elif mode == "dm":
            path, body = self._private_reply(reply, platform)
        elif mode == "public_reply":
            path, body = self._public_reply(reply, platform)
        else:
            raise ReplyError(f"meta reply for {reply.case_reference}: unknown mode {mode!r}")
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        self._post(f"{self._base}/{path}", reply, headers=headers, json_body=body)

    def _message(self, recipient: dict[str, str], text: str, platform: str) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"recipient": recipient, "message": {"text": text}}
        if platform == "facebook":
            body["messaging_type"] = "RESPONSE"
        return f"{self._page}/messages", body

    def _private_reply(self, reply: OutboundReply, platform: str) -> tuple[str, dict[str, Any]]:
        comment, post = reply.extra.get("comment_id"), reply.extra.get("post_id")
        if comment:
            return self._message({"comment_id": comment}, reply.body, platform)
        if post and platform == "facebook":
            return self._message({"post_id": post}, reply.body, platform)
        raise ReplyError(f"meta private reply for {reply.case_reference}: no comment_id to reply to")

    def _public_reply(self, reply: OutboundReply, platform: str) -> tuple[str, dict[str, Any]]:
        ids = reply.extra
        if platform == "facebook" and (under := ids.get("comment_id") or ids.get("post_id")):
            return f"{under}/comments", {"message": reply.body}
        if platform == "instagram" and ids.get("account_id") and ids.get("media_id"):
            body = {"media_id": ids["media_id"], "message": reply.body}
            if ids.get("comment_id"):
                body["comment_id"] = ids["comment_id"]
            return f"{ids['account_id']}/mentions", body
        raise ReplyError(f"meta public reply for {reply.case_reference}: no {platform or 'platform'} ids to answer")
