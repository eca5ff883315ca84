"""The maildrop Replier of one-machine trials: one durable file per acknowledgement, never two."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatch.base import OutboundReply
from dispatch.maildrop import MaildropReplier
from frontdesk.errors import ReplyError, ReplyUnavailable


def reply(**over: object) -> OutboundReply:
    fields: dict[str, object] = dict(channel="chat", connector="telegram", recipient="42", body="Salam!",
                                     message_id="<ack.FD-2026-000001@bet.az>", case_reference="FD-2026-000001")
    return OutboundReply(**{**fields, **over})  # type: ignore[arg-type]


def test_chat_and_email_replies_become_files_and_a_repeat_overwrites(tmp_path: Path) -> None:
    drop = MaildropReplier(tmp_path / "outgoing")
    drop.send(reply())
    drop.send(reply())
    drop.send(reply(channel="email", raw=b"Subject: x\r\n\r\nhi\r\n", message_id="<ack.2@bet.az>"))
    files = sorted(p.name for p in (tmp_path / "outgoing").iterdir())
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["eml", "txt"]
    text = next((tmp_path / "outgoing").glob("*.txt")).read_text()
    assert text == "To: telegram 42\n\nSalam!\n"


def test_a_reply_is_on_disk_before_send_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    MaildropReplier(tmp_path).send(reply())
    assert len(synced) == 2  # the file, then the directory holding its new name


def test_an_email_without_mime_fails_for_good_and_an_unwritable_directory_is_retried(tmp_path: Path) -> None:
    with pytest.raises(ReplyError):
        MaildropReplier(tmp_path).send(reply(channel="email"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ReplyUnavailable):
        MaildropReplier(blocker / "outgoing").send(reply())
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no temporary file left behind
